"""The end-to-end demo: synthetic cohort -> features -> bundle -> evaluation -> one patient's prediction.

Everything here is SYNTHETIC: it shows the software working, it says nothing about real patients.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from NPCPrognosisLib.contract import SEQUENCES
from NPCPrognosisLib.resources import DEMO_BUNDLE, sample_case_files


def run_demo(out: str | Path, *, n: int = 120, seed: int = 7, workers: int = 2, progress: bool = True,
             endpoint: str = "dmfs") -> dict[str, Any]:
    from NPCPrognosisLib.datasets.synth import synthesize_cohort
    from NPCPrognosisLib.io.images import load_patient
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort
    from NPCPrognosisLib.pipeline.extract import extract_cohort
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.pipeline.predict import predict_patient
    from NPCPrognosisLib.pipeline.prediction_record import write_prediction
    from NPCPrognosisLib.pipeline.train import train
    from NPCPrognosisLib.reporting.labels import risk_group_text
    from NPCPrognosisLib.reporting.patient_sheet import SheetImages, write_patient_sheet
    from NPCPrognosisLib.survival.metrics import harrell_c

    out = Path(out)
    started = time.time()
    print("NPCPrognosis demo - all data are SYNTHETIC; the model is not for clinical use.")
    cohort = synthesize_cohort(n, seed, out / "cohort", progress=progress, workers=workers)
    manifest = read_manifest(cohort.manifest_path, require_mask=True)
    print(f"[1/6] synthetic cohort of {n} patients: {cohort.manifest_path}")
    extraction = extract_cohort(manifest, out / "features.csv", workers=workers, progress=progress)
    print(f"[2/6] radiomics: {extraction.table.shape[1] - 1} features per patient, "
          f"{len(extraction.failures)} failure(s)  ({time.time() - started:.0f} s)")
    bundle_dir = out / "bundle"
    document = train(manifest, out / "features.csv", endpoint, bundle_dir, test_fraction=0.3, seed=seed,
                     synthetic=True, binary_endpoints=("ic_response",))
    nomogram = document["training"]["optimism_corrected_c"]["nomogram"]
    print(f"[3/6] trained on {document['training']['n']} patients; Rad-score uses "
          f"{len(document['signature']['features'])} feature(s); nomogram training C {nomogram['apparent']:.3f}, "
          f"optimism-corrected {nomogram['corrected']:.3f}")
    metrics = evaluate_cohort(bundle_dir, manifest, out / "features.csv", endpoint, out / "evaluation", n_boot=300,
                              seed=seed)
    import pandas as pd

    truth = pd.read_csv(cohort.truth_path, dtype={"patient_id": str})
    predictions = pd.read_csv(out / "evaluation" / "predictions.csv", dtype={"patient_id": str})
    joined = predictions.merge(truth, on="patient_id")
    oracle = harrell_c(joined[f"{endpoint}_time"], joined[f"{endpoint}_event"] > 0, joined[f"lp_{endpoint}"])
    print(f"[4/6] held-out {metrics['n']} patients ({metrics['events']} events): oracle C-index {oracle:.3f}")
    for name, block in metrics["models"].items():
        lo, hi = block["c_index_95ci"]
        print(f"      {name:10s} C-index {block['c_index']:.3f} (95% CI {lo:.3f}-{hi:.3f})")

    case = sample_case_files()
    patient = load_patient("NPC-SAMPLE-001", {k: case[k] for k in SEQUENCES}, case["mask"])
    clinical = json.loads(case["clinical"].read_bytes())
    prediction = predict_patient(load_bundle(bundle_dir), patient, clinical)
    path = write_prediction(prediction, out / "prediction")
    sheet = write_patient_sheet(prediction.to_dict(), out / "prediction",
                                SheetImages(t1c=patient.images["t1c"], mask=patient.mask))
    survival = ", ".join(f"{m} mo {s:.0%}" for m, s in prediction.survival.items())
    print(f"[5/6] sample patient NPC-SAMPLE-001: {risk_group_text(prediction.to_dict())} (score "
          f"{prediction.risk_score:.2f}); "
          f"{endpoint.upper()} {survival} -> {path}")
    print(f"      patient sheet: {sheet.get('pdf', sheet['html'])}; cohort study page: "
          f"{out / 'evaluation' / 'cohort_study.html'}")
    automatic = automatic_sample_prediction(patient, clinical, out / "automatic")
    print(f"[6/6] fully automatic (shipped demo network + demo bundle, no contours given): Dice vs the sample's "
          f"contours GTVp {automatic['dice_gtvp']:.2f}, GTVn {automatic['dice_gtvn']:.2f}; deep score "
          f"{automatic['deep_score']:.2f}; {automatic['risk_group_text']} -> {automatic['path']}; sheet "
          f"{automatic['sheet']}")
    print(f"demo finished in {time.time() - started:.0f} s; outputs in {out}")
    return {"metrics": metrics, "oracle_c_index": oracle, "prediction": prediction.to_dict(), "automatic": automatic}


def automatic_sample_prediction(patient: Any, clinical: dict[str, Any], out: Path) -> dict[str, Any]:
    """The sample patient without contours: the shipped network segments, the shipped bundle predicts."""
    from NPCPrognosisLib.imaging.overlap import segmentation_metrics
    from NPCPrognosisLib.io.images import PatientImages
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.pipeline.predict import predict_patient
    from NPCPrognosisLib.pipeline.prediction_record import write_prediction
    from NPCPrognosisLib.reporting.labels import risk_group_text
    from NPCPrognosisLib.reporting.patient_sheet import SheetImages, write_patient_sheet

    unmasked = PatientImages(patient.patient_id, patient.images, None, patient.warnings)
    prediction = predict_patient(load_bundle(DEMO_BUNDLE), unmasked, clinical, saliency=True)
    metrics = segmentation_metrics(prediction.automatic_mask, patient.mask)
    path = write_prediction(prediction, out)
    sheet = write_patient_sheet(prediction.to_dict(), out, SheetImages(
        t1c=patient.images["t1c"], mask=prediction.automatic_mask, uncertainty=prediction.uncertainty_map,
        saliency=prediction.saliency_map))
    return {"dice_gtvp": metrics["dice_gtvp"], "dice_gtvn": metrics["dice_gtvn"],
            "deep_score": prediction.segmentation["deep_score"], "risk_group": prediction.risk_group,
            "risk_group_text": risk_group_text(prediction.to_dict()),
            "path": str(path), "sheet": str(sheet.get("pdf", sheet["html"]))}
