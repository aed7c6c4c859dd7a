"""``npc-prognosis``: the command line over the core, for whole cohorts and single patients.

The CLI only adapts paths and flags to the core's functions; an ``InputError`` becomes one readable line and
exit code 2 instead of a traceback, because the reader is a researcher with a spreadsheet, not a developer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from NPCPrognosisLib.contract import ENDPOINTS
from NPCPrognosisLib.errors import BundleError, InputError

log = logging.getLogger("npc_prognosis")


def _add_manifest_args(parser: argparse.ArgumentParser, *, required: bool = True,
                       help: str = "cohort CSV (one row per patient)") -> None:
    parser.add_argument("--manifest", required=required, help=help)
    parser.add_argument("--column-map", default=None,
                        help="your column names: canonical=yours,... or a JSON file, e.g. patient_id=MRN,t1c=T1C")


def _cmd_synth(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.datasets import phantom_family

    naming = {"id_prefix": args.id_prefix} if args.id_prefix else {}
    cohort = phantom_family(args.family).synthesize_cohort(args.n, args.seed, args.out, progress=not args.quiet,
                                                           workers=args.workers, **naming)
    print(f"SYNTHETIC cohort of {args.n} patients (not clinical data): {cohort.manifest_path}")
    print(f"true linear predictors: {cohort.truth_path}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.io.manifest import load_column_map, read_manifest
    from NPCPrognosisLib.io.patient_ids import listed_ids
    from NPCPrognosisLib.pipeline.extract import dask_runner, extract_cohort

    auto = args.mask == "auto"
    manifest = read_manifest(args.manifest, load_column_map(args.column_map), require_mask=not auto)
    runner = None
    if args.engine == "dask":
        if args.dask_scheduler and args.workers:
            log.warning("--workers %d is not used with --dask-scheduler: the cluster's own workers run the patients",
                        args.workers)
        runner = dask_runner(args.dask_scheduler or None, progress=not args.quiet, workers=args.workers or 2)
    result = extract_cohort(manifest, args.out, workers=args.workers or 1, params_path=args.params,
                            progress=not args.quiet, runner=runner, network=args.network, auto_mask=auto,
                            resample_mask=args.resample_mask, roi_map=args.roi_map)
    print(f"features for {len(result.table)} patient(s) x {result.table.shape[1] - 1} features: {result.features_path}")
    own = json.loads(result.meta_path.read_text(encoding="utf-8")).get("deep_score_out_of_fold") or []
    if own:
        print(f"{len(own)} patient(s) trained the network: their deep scores come from its risk head refitted "
              "without them (out of fold)")
    warned = list(dict.fromkeys(row["patient_id"] for row in result.warnings if row["status"] == "extracted"))
    if warned:
        print(f"{len(warned)} patient(s) have image warnings, listed in {result.warnings_path}: {listed_ids(warned)}")
    if result.failures:
        print(f"{len(result.failures)} patient(s) failed, listed in {result.failures_path}:")
        for failure in result.failures:
            print(f"  {failure['patient_id']}: {failure['error']}")
        failed_warned = list(dict.fromkeys(row["patient_id"] for row in result.warnings if row["status"] == "failed"))
        if failed_warned:
            print(f"  {len(failed_warned)} of them had image warnings before failing (often the reason), listed in "
                  f"{result.warnings_path} with status 'failed': {listed_ids(failed_warned)}")
    return 0


def print_designs(designs: list[dict]) -> None:
    """The selection's cross-validated C of each nomogram design, and a note when the Rad-score does not beat the
    tumour-volume reference (a row with ``reference``)."""
    for row in designs:
        print(f"    cross-validated C {row['name']:45s} {_number(row['cv_c_index'], '.3f')}")
    reference = next((r for r in designs if r.get("reference")), None)
    rad = next((r for r in designs if r["name"] == "radiomics"), None)
    if reference and rad and not rad["cv_c_index"] > reference["cv_c_index"]:
        print(f"  note: the Rad-score ({_number(rad['cv_c_index'], '.3f')}) does not beat the tumour volumes alone "
              f"({_number(reference['cv_c_index'], '.3f')}) in cross-validation: its features may stand in for the "
              "tumour's size (the bundle's 'volume' model is that reference; evaluate reports it held out)")


def _cmd_train(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.io.manifest import load_column_map, read_manifest
    from NPCPrognosisLib.pipeline.binary import no_better_than_chance
    from NPCPrognosisLib.pipeline.train import train

    if args.split_col and args.test_fraction is not None:  # the column decides: a fraction would be ignored
        raise InputError(f"--split-col {args.split_col} and --test-fraction {args.test_fraction:g} both given: the "
                         "split column says which patients train, so the fraction would be ignored",
                         column="--test-fraction", fix="give one of the two")
    manifest = read_manifest(args.manifest, load_column_map(args.column_map), require_images=False)
    document = train(manifest, args.features, args.endpoint, args.out, split_col=args.split_col, seed=args.seed,
                     **({} if args.test_fraction is None else {"test_fraction": args.test_fraction}),
                     synthetic=args.synthetic, network=args.network, workers=args.workers, select=not args.no_select,
                     binary_endpoints=args.binary_endpoint, store_patient_ids=not args.no_patient_ids,
                     fusion=args.fusion, extra_features=args.extra_features,
                     **({} if args.optimism_bootstraps is None else {"optimism_bootstraps": args.optimism_bootstraps}),
                     **({} if args.robustness_patients is None else {"robustness_patients": args.robustness_patients}),
                     **({} if args.permutations is None else {"permutations": args.permutations}))
    training = document["training"]
    for name, block in (document.get("binary_endpoints") or {}).items():
        print(f"{name}: {block['n']} training patients ({block['positives']} positive); cross-validated AUC "
              f"(selection inside the folds, {block['cv']['repeats']} x {block['cv']['folds']}-fold):")
        for model in dict.fromkeys([*block["models"], block["best"]]):
            used = "  <- used" + (" (learned nothing confirmed: see the warning below)"
                                  if block.get("warnings") and model == "ridge" else "")
            print(f"    {model:30s} {_number(block['cv'][model]['auc'], '.3f')}"
                  + (used if model == block["best"] else ""))
        choice = block.get("choice") or {}
        if choice.get("nested"):
            beat = choice["compared"][block["best"]]
            print(f"  model used: {block['best']}, not the {choice['default']}: it beat it by "
                  f"{beat['paired_difference']:.3f} AUC per fold (paired SE {beat['paired_se']:.3f}); nested "
                  f"cross-validated AUC of this choice {choice['nested']['auc']:.3f} (the {block['best']}'s own "
                  "above is the best of several on the folds it was chosen on)")
        for warning in block.get("warnings") or []:
            print(f"  warning: {warning}")
        ridge = block["models"].get("ridge", {})
        if ridge.get("blocks"):
            main_inputs = len(ridge["columns"]) - sum(b["inputs"] for b in ridge["blocks"].values())
            print(f"  ridge inputs: {main_inputs} clinical and image; "
                  + "; ".join(f"{name} {b['inputs']} (weight {b['weight']:.1f}, a block of its own)"
                              for name, b in ridge["blocks"].items()))
        stacking = block.get("stacking")
        if stacking:
            weights = sorted(((w, n) for n, w in zip(stacking["models"], stacking["weights"]) if w > 0), reverse=True)
            print("  stacked weights (standardised out-of-fold log-odds): "
                  + (", ".join(f"{n} {w:.2f}" for w, n in weights) or "none: no model's out-of-fold predictions "
                     "explain the endpoint, every patient gets the training prevalence"))
        volume, signature = block["cv"].get("volume"), block["cv"]["radiomics"]
        if volume is not None and signature["auc"] <= volume["auc"]:
            print(f"  note: {name}: the radiomics signature ({signature['auc']:.3f}) does not beat the tumour volume "
                  f"alone ({volume['auc']:.3f}) in cross-validation: its features may stand in for the tumour's size")
        if no_better_than_chance(block):
            test = block["permutation"]
            print(f"  warning: {name}: the {block['best']} model's cross-validated AUC of its ranking "
                  f"({test['observed_auc']:.3f}) was reached with randomly permuted labels (permutation p = "
                  f"{test['p_value']:.2f}): the training "
                  "patients cannot show that it learned anything that will hold on new patients; treat its "
                  "probabilities as unproven (more patients of each outcome, or fewer candidate features, may help)")
    fusion = document.get("fusion")
    if fusion:
        cv = fusion["cv"]
        print(f"fusion (MMoE): blocks {', '.join(fusion['blocks'])}; {cv['chosen']} chosen by "
              f"{cv['folds']}-fold cross-validation; epochs per task {cv['task_epochs']}")
        nested = (cv.get("nested") or {}).get("per_task") or {}
        for task, score in cv["per_task"].items():
            metric = "C-index" if task == "survival" else "AUC"
            text = f"    cross-validated {metric} {task:20s} {_number(score, '.3f')}"
            if task in nested:  # bundles before the nested estimate have none
                text += f", nested {_number(nested[task], '.3f')} (the choice repeated without each fold)"
            print(text)
        from NPCPrognosisLib.reporting.labels import shares_text

        for task, shares in (fusion.get("contributions") or {}).items():
            print(f"    what moves the fused {task} output (variance share over training patients): "
                  f"{shares_text(shares)}")
        for task, calibration in fusion["binary_calibration"].items():
            if not calibration["validated"]:
                print(f"  warning: {task}: {calibration['note']}")
        from NPCPrognosisLib.pipeline.fusion import MMOE, gate_warnings
        from NPCPrognosisLib.pipeline.predict import unproven_nomogram, unproven_warnings

        unproven = unproven_nomogram(document, MMOE)  # no weight: the models' no_weight lines below say it
        for warning in [*gate_warnings(fusion.get("gates") or {}),
                        *unproven_warnings({k: v for k, v in unproven.items() if k != "no_weight"}, MMOE)]:
            print(f"  warning: {warning}")
    if document.get("endpoint_type") == "binary":
        print(f"bundle written: {args.out} (binary endpoint {document['endpoint']}, {training['n']} training "
              f"patients, {training['n_test']} held out)")
        return 0
    print(f"bundle written: {args.out} (endpoint {document['endpoint']}, {training['n']} training patients, "
          f"{training['events']} events, {training['n_test']} held out)")
    signature = document["signature"]
    n_in = signature["diagnostics"]["n_features_in"]
    print(f"Rad-score: {len(signature['features'])} feature(s) selected from {n_in}")
    robustness = document["robustness"]
    if robustness.get("measured"):
        threshold = robustness.get("threshold")
        print(f"  robustness: ICC(3,1) over {robustness['patients']} perturbed training patients, median "
              f"{_number(robustness['median_icc'], '.2f')}; threshold "
              f"{'none' if threshold is None else threshold} ({robustness.get('features_passing', 'all')} passing)")
    else:
        print(f"  robustness: not measured ({robustness.get('reason', 'see the warning above')})")
    selection = document["selection"]
    # without candidates the selection did not run (--no-select, too few events): its note says why
    chosen = (f"chosen by {selection['folds']}-fold cross-validation on the training patients"
              if selection.get("radiomics_candidates") else "the defaults, not chosen by cross-validation")
    print(f"  {chosen}: radiomics {selection['radiomics']}"
          f"{', ComBat across centres' if selection.get('harmonise') else ''}; "
          f"clinical T/N {selection['clinical_coding']}; {selection['note']}")
    print_designs(selection["designs"])
    optimism = training.get("optimism_corrected_c") or {}
    nested = training.get("nested_cv_c") or {}
    for name, block in training["metrics"].items():
        corrected = optimism.get(name)
        kind = "nested out-of-fold" if name == "mmoe" else "apparent"
        text = f"  training C-index {name:20s} {kind} {block['c_index']:.3f}"
        if corrected:
            text += (f", optimism-corrected {_number(corrected['corrected'], '.3f')} "
                     f"({corrected['replicates']} bootstrap refits)")
        if name in nested:
            text += f", nested cross-validated {_number(nested[name]['c_index'], '.3f')} (selection included)"
        print(text)
        if corrected and corrected["no_better_than_chance"]:
            print(f"  warning: the {name} model is no better than chance once corrected for optimism: it learned "
                  "nothing that will hold on new patients (too few patients or events, or no signal in its inputs)")
    from NPCPrognosisLib.pipeline.fit import training_findings

    for finding in training_findings(document):
        print(f"  warning: {finding}")
    for name, block in document["models"].items():
        dropped = (block.get("construction") or {}).get("no_weight")
        if dropped:
            alone = (document.get("cutoffs") or {}).get(name, {}).get("no_groups")
            print(f"  warning: in the {name} model, {' and '.join(dropped)} ranked the training patients the wrong way "
                  "round out of fold and carries no weight" + (": this model gives every patient the same risk"
                                                                if alone else ""))
    print("  the apparent C is optimistic; expect about the optimism-corrected C on new patients of the same "
          "population, and check it with `evaluate` on held-out patients")
    return 0


def _number(value: float | None, spec: str) -> str:
    """A metric as text; ``n/a`` where the cohort could not give it (e.g. no event in one risk group)."""
    return "n/a" if value is None else format(value, spec)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.io.manifest import load_column_map, read_manifest
    from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort

    manifest = read_manifest(args.manifest, load_column_map(args.column_map), require_images=False)
    from NPCPrognosisLib.reporting.checklist import read_study_info

    study_info = read_study_info(args.study_info) if args.study_info else None
    metrics = evaluate_cohort(args.bundle, manifest, args.features, args.endpoint, args.out, subset=args.subset,
                              n_boot=args.n_boot, seed=args.seed, extra_features=args.extra_features,
                              study_info=study_info)
    if metrics.get("without_features"):
        print(f"  warning: {len(metrics['without_features'])} patient(s) not evaluated, no features: "
              f"{', '.join(metrics['without_features'][:10])}")
    if "positives" in metrics:  # a binary endpoint
        print(f"{args.endpoint}: {metrics['n']} patients, {metrics['positives']} positive "
              f"({metrics['excluded_training_patients']} training patients excluded)")
        for warning in metrics.get("warnings") or []:
            print(f"  warning: {warning}")
        for name, block in metrics["models"].items():
            lo, hi = block["auc_95ci"]
            print(f"  {name:30s} AUC {block['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f})  sensitivity "
                  f"{_number(block['sensitivity'], '.2f')} specificity {_number(block['specificity'], '.2f')}"
                  + ("  <- the bundle's model" if name == metrics["model_used"] else ""))
        print(f"metrics: {Path(args.out) / 'metrics.json'}; predictions: {Path(args.out) / 'predictions.csv'}")
        return 0
    print(f"{metrics['endpoint'].upper()}: {metrics['n']} patients, {metrics['events']} events "
          f"({metrics['excluded_training_patients']} training patients excluded)")
    for warning in metrics.get("warnings") or []:
        print(f"  warning: {warning}")
    for name, block in metrics["models"].items():
        lo, hi = block["c_index_95ci"] or (None, None)
        print(f"  {name:10s} C-index {_number(block['c_index'], '.3f')} (95% CI {_number(lo, '.3f')}-"
              f"{_number(hi, '.3f')})  log-rank p {_number(block['logrank_p'], '.2g')}")
        for warning in block.get("warnings", []):
            print(f"    warning: {warning}")
    if metrics.get("mmoe_contributions"):
        from NPCPrognosisLib.reporting.labels import shares_text

        for task, shares in metrics["mmoe_contributions"].items():
            print(f"  what moves the fused {task} output (variance share over these patients): {shares_text(shares)}")
    print(f"metrics: {Path(args.out) / 'metrics.json'}; predictions: {Path(args.out) / 'predictions.csv'}")
    return 0


def _patient_id(args: argparse.Namespace) -> str:
    """``--patient-id``, or the PatientID of the DICOM series (the CET1W's first); a sheet titled 'patient' is the
    last resort, and said. Either way, series of another patient are then refused
    (:func:`~NPCPrognosisLib.io.dicom_series.check_series_owners`)."""
    from NPCPrognosisLib.io.dicom_series import series_identity

    if args.patient_id:
        return args.patient_id
    for path in (args.t1c, args.t1, args.t2):
        found = series_identity(path).get("patient") if path else None
        if found:
            return found
    print("  warning: no --patient-id given and no DICOM series carries one: the outputs name this patient "
          "'patient'", file=sys.stderr)
    return "patient"


def _warn_file_names(args: argparse.Namespace) -> None:
    """Warn when a --t1/--t2/--t1c file's name names another sequence (``P1_T2.nii.gz`` given as --t1), as a
    manifest's columns are (:func:`~NPCPrognosisLib.io.sequence_names.file_name_warnings`)."""
    from NPCPrognosisLib.io.sequence_names import file_name_warnings

    for message in file_name_warnings([(args.patient_id, {"t1": args.t1, "t2": args.t2, "t1c": args.t1c})]):
        warnings.warn(message, UserWarning, stacklevel=2)


def _cmd_predict(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.io.bundle import read_bundle
    from NPCPrognosisLib.io.clinical import parse_key_values
    from NPCPrognosisLib.io.extra_features import read_extra_blocks
    from NPCPrognosisLib.io.images import load_patient
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.pipeline.predict import predict_patient
    from NPCPrognosisLib.pipeline.prediction_folder import claim_folder, remove_replaced
    from NPCPrognosisLib.pipeline.prediction_record import AUTOMATIC_MASK_FILE, PREDICTION_FILE, write_prediction

    if read_bundle(args.bundle).get("endpoint_type") == "binary":
        raise InputError("this bundle holds only a binary endpoint's classifiers; a patient's prediction is made "
                         "with a survival bundle that carries them", path=args.bundle,
                         fix="train --endpoint dmfs --binary-endpoint <column> and predict with that bundle "
                             "(evaluate works on this one)")
    bundle = load_bundle(args.bundle)
    clinical = parse_key_values(args.clinical or [])
    mask = None if args.mask in (None, "auto") else args.mask
    if mask is None and bundle.network_dir is None:
        raise InputError("a mask is needed: this bundle has no segmentation network", column="--mask",
                         fix="pass --mask with label 1 = GTVp and 2 = GTVn, or a bundle trained with --network")
    args.patient_id = _patient_id(args)
    _warn_file_names(args)
    inputs = [args.t1, args.t2, args.t1c, mask]
    for file in claim_folder(args.out, args.patient_id, overwrite=args.overwrite, inputs=inputs):
        print(f"  removed {file} (another patient's result, --overwrite)")
    patient = load_patient(args.patient_id, {"t1": args.t1, "t2": args.t2, "t1c": args.t1c}, mask,
                           resample_mask=args.resample_mask, roi_map=args.roi_map, foreign_ids=None)
    extras = read_extra_blocks(args.extra_features)
    prediction = predict_patient(bundle, patient, clinical, tta=args.tta, centre=args.centre, extras=extras,
                                 saliency=args.saliency)
    from NPCPrognosisLib.reporting.labels import (
        extrapolation_text,
        factor_name,
        risk_group_text,
        risk_interval_text,
        survival_caveat,
    )

    path = write_prediction(prediction, args.out)
    record = prediction.to_dict()
    for file in remove_replaced(args.out, {PREDICTION_FILE, *record["images"]}, inputs):
        print(f"  removed {file} (made from an earlier prediction)")
    survival = ", ".join(f"{m} mo {s:.1%}" for m, s in prediction.survival.items())
    if survival_caveat(record):
        survival += f" ({survival_caveat(record)})"
    interval = risk_interval_text(record)
    print(f"{prediction.patient_id}: {prediction.endpoint.upper()} risk {prediction.risk_score:.3f}"
          + (f" ({interval})" if interval else "") + f"; {risk_group_text(record)}; survival {survival}")
    for covariate, block in prediction.imputed.items():
        if block.get("survival_range"):
            ranges = ", ".join(f"{m} mo {lo:.1%}-{hi:.1%}" for m, (lo, hi) in block["survival_range"].items())
            print(f"  {factor_name(covariate)} not measured: across its training 10th-90th percentile, risk "
                  f"{block['risk_range'][0]:.3f} to {block['risk_range'][1]:.3f}, survival {ranges}")
    if prediction.chemo_benefit.get("imputed"):  # a benefit resting on a filled-in factor, with its range
        print(f"  chemotherapy benefit: {prediction.chemo_benefit['statement']}")
    if extrapolation_text(record):
        print(f"  {extrapolation_text(record)}")
    from NPCPrognosisLib.slicer_support.formatting import format_binary, format_fusion

    # each binary endpoint's probability (unproven where train found so), as the sheet and the panel show it
    for line in [*format_binary(record), *format_fusion(record)]:
        print(f"  {line}")
    for warning in prediction.warnings:
        print(f"  warning: {warning}")
    print(f"written: {path}")
    if prediction.automatic_mask is not None:
        print(f"automatic contours: {path.with_name(AUTOMATIC_MASK_FILE)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.reporting.patient_sheet import contours_warning, read_sheet_inputs, write_patient_sheet

    prediction, images = read_sheet_inputs(args.prediction, t1c=args.t1c, mask=args.mask,
                                           automatic_mask=args.automatic_mask, uncertainty=args.uncertainty,
                                           saliency=args.saliency)
    out = args.out or (Path(args.prediction).parent if Path(args.prediction).is_file() else Path(args.prediction))
    paths = write_patient_sheet(prediction, out, images, pdf=not args.no_pdf)
    print(f"patient sheet: {paths['html']}" + (f"; PDF: {paths['pdf']}" if "pdf" in paths else ""))
    mismatch = contours_warning(prediction, images.mask, images.t1c)
    if mismatch:
        print(f"  warning: {mismatch}")
    if "pdf" not in paths and not args.no_pdf:
        print(f"  warning: no PDF ({paths.get('pdf_error', 'no Chromium found')}; install chromium, or set "
              "NPC_CHROMIUM to its path)")
    return 0


def _cmd_train_net(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.deep.training import train_network
    from NPCPrognosisLib.io.bundle import read_bundle
    from NPCPrognosisLib.io.manifest import load_column_map

    config = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_bytes())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the training options: {exc}", path=args.config,
                             fix="give a JSON object of TrainConfig fields, e.g. {\"cox_weight\": 0.5}") from None
    if args.cox_weight is not None:
        config["cox_weight"] = args.cox_weight
    if args.binary_column:
        config["binary_column"] = args.binary_column
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = train_network(args.manifest, args.endpoint, args.out, epochs=args.epochs, batch_size=args.batch_size,
                        device=args.device, seed=args.seed, val_fraction=args.val_fraction,
                        progress=not args.quiet, resume=args.resume, synthetic_demo=args.synthetic,
                        work_dir=args.work_dir, config=config, force=args.force, workers=args.workers,
                        column_map=load_column_map(args.column_map))
    gate = read_bundle(out)["network"]["quality_gate"]
    print(("quality gate passed: " if gate["passed"] else "WARNING (forced): ") + gate["message"])
    print(f"network bundle written: {out}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.deep.segmentation import cached_network, segment_patient, validation_summary
    from NPCPrognosisLib.io.images import load_patient, write_image_atomic
    from NPCPrognosisLib.io.manifest import load_column_map, read_manifest
    from NPCPrognosisLib.io.segment_outputs import SegmentOutputs
    from NPCPrognosisLib.pipeline.segment import (
        COHORT_FAILURES,
        cohort_outputs,
        outputs_removed_if_failed,
        outputs_written_whole,
        segment_cohort,
        write_contours,
    )

    network = _network_dir(args.bundle)
    if args.manifest:
        cohort = read_manifest(args.manifest, load_column_map(args.column_map), require_clinical=False)
        # a bundle that cannot be loaded fails the run before any patient: the folder's earlier masks and manifest
        # would otherwise be taken for this run's
        with outputs_removed_if_failed(*cohort_outputs(cohort, args.out)):
            model = cached_network(network)
        print(validation_summary(model))
        manifest = segment_cohort(model, cohort, args.out, tta=args.tta, progress=not args.quiet)
        print(f"masks and manifest written: {manifest}")
        if (failures := manifest.parent / COHORT_FAILURES).is_file():
            import pandas as pd

            failed = len(pd.read_csv(failures, dtype=str))
            print(f"  warning: {failed} of the {len(cohort.patient_ids)} patients failed and have no mask (their rows' "
                  f"mask cell is empty): {failures}")
        return 0
    if not (args.t1 and args.t2 and args.t1c):
        raise InputError("give --manifest, or --t1, --t2 and --t1c", column="--t1",
                         fix="npc-prognosis segment --bundle B --t1 A --t2 B --t1c C --out MASK.nii.gz")
    outputs = SegmentOutputs.beside_mask(args.out)
    with outputs_removed_if_failed(outputs):
        model = cached_network(network)
        print(validation_summary(model))
        args.patient_id = _patient_id(args)
        _warn_file_names(args)
        patient = load_patient(args.patient_id, {"t1": args.t1, "t2": args.t2, "t1c": args.t1c}, foreign_ids=None)
        result = segment_patient(model, patient.images, patient_id=args.patient_id, tta=args.tta,
                                 saliency=args.saliency)
        with outputs_written_whole(outputs) as staged:  # Ctrl-C leaves the earlier run's files or this run's
            _, seg, rtstruct, dicom_warnings = write_contours(result.mask, args.t1c, staged.mask, staged.seg,
                                                              staged.rtstruct, patient_id=args.patient_id)
            for image, path in ((result.uncertainty if args.tta else None, staged.uncertainty),
                                (result.saliency, staged.saliency)):
                if image is not None:
                    write_image_atomic(image, path)
    for what, written, path in (("DICOM SEG", seg, outputs.seg), ("RTSTRUCT", rtstruct, outputs.rtstruct)):
        if written is not None:
            print(f"{what}: {path}")
    result.warnings.extend(dicom_warnings)
    spread = f" +/- {result.deep_score_sd:.3f}" if result.deep_score_sd is not None else ""
    print(f"{args.patient_id}: GTVp {result.volumes_ml['gtvp']:.1f} mL, GTVn {result.volumes_ml['gtvn']:.1f} mL, "
          f"deep score {result.deep_score:.3f}{spread} -> {outputs.mask}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return 0


def _network_dir(path: str) -> Path:
    """A network bundle itself, or a prognosis bundle that ships one in its network/ folder."""
    folder = Path(path)
    return folder / "network" if (folder / "network" / "bundle.json").exists() else folder


def _cmd_cox(args: argparse.Namespace) -> int:
    import pandas as pd

    from NPCPrognosisLib.io.atomic import to_json, write_json_atomic
    from NPCPrognosisLib.pipeline.cox_table import cox_table

    path = Path(args.table)
    if not path.exists():
        raise InputError("table not found", path=path)
    table = pd.read_csv(path)
    covariates = [c.strip() for c in args.covariates.split(",") if c.strip()]
    result = cox_table(table, args.time_col, args.event_col, covariates, ties=args.ties)
    if args.out:
        write_json_atomic(args.out, result)
    print(to_json(result))
    return 0


def _cmd_benefit(args: argparse.Namespace) -> int:
    import pandas as pd

    from NPCPrognosisLib.io.atomic import to_json, write_json_atomic
    from NPCPrognosisLib.survival.treatment_effect import benefit_table

    path = Path(args.table)
    if not path.exists():
        raise InputError("table not found", path=path)
    table = pd.read_csv(path)
    covariates = [c.strip() for c in (args.covariates or "").split(",") if c.strip()]
    result = benefit_table(table, args.time_col, args.event_col, args.treatment_col, by=args.by,
                           covariates=covariates, reference=args.reference, ties=args.ties)
    if args.out:
        write_json_atomic(args.out, result)
    print(to_json(result))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from NPCPrognosisLib.pipeline.demo import run_demo

    run_demo(args.out, n=args.n, seed=args.seed, workers=args.workers, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npc-prognosis", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a SYNTHETIC cohort (images, masks, manifest, truth)")
    p.add_argument("--n", type=int, required=True, help="number of patients")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed, the same cohort")
    p.add_argument("--out", required=True, help="folder for images/, manifest.csv and truth.csv")
    p.add_argument("--workers", type=int, default=1, help="patients generated in parallel (same files either way)")
    from NPCPrognosisLib.datasets import FAMILY_MODULES

    p.add_argument("--family", choices=sorted(FAMILY_MODULES), default="synth",
                   help="phantom family: synth (family A), relaxometry (family B) or gradient_echo (family C); "
                        "B and C are independently modelled")
    p.add_argument("--id-prefix", help="patient IDs <prefix>0001, ... (default: the family's own, e.g. SYN); give "
                                       "cohorts that a bundle must tell apart different prefixes, since bundles "
                                       "recognise their training patients by ID")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("extract", help="radiomics features table for a cohort")
    _add_manifest_args(p)
    p.add_argument("--out", required=True, help="features CSV (failures and metadata are written beside it)")
    p.add_argument("--workers", type=int, default=None,
                   help="patients processed in parallel (default 1; with --engine dask, the local cluster's worker "
                        "processes, default 2)")
    p.add_argument("--params", default=None,
                   help="PyRadiomics parameter file (default: the shipped NPCPrognosis.yaml, the papers' settings)")
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--dask-scheduler", default=None, help="address of a Dask scheduler (default: a local cluster)")
    p.add_argument("--network", default=None, help="network bundle: adds each patient's deep score")
    p.add_argument("--mask", choices=("manifest", "auto"), default="manifest",
                   help="auto: radiomics from the network's contours (needs --network)")
    p.add_argument("--resample-mask", action="store_true",
                   help="resample a mask that is not on the CET1W grid (nearest neighbour) instead of refusing it")
    p.add_argument("--roi-map", default=None,
                   help="masks given as DICOM RTSTRUCT: which ROIs are GTVp/GTVn, e.g. GTVp=GTVnx,GTVn=GTVnd|GTV_LN* "
                        "(case-insensitive; default: common names such as GTVp, GTV-P, GTVnx / GTVn, GTVnd)")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("train", help="fit Rad-score, clinical model and nomogram; write a bundle")
    _add_manifest_args(p)
    p.add_argument("--features", required=True, help="features table written by extract from this manifest")
    p.add_argument("--endpoint", required=True,
                   help=f"survival endpoint ({', '.join(ENDPOINTS)}) or a 0/1 column such as ic_response")
    p.add_argument("--no-patient-ids", action="store_true",
                   help="store no (hashed) training patient IDs in the bundle; evaluate then needs --subset all")
    p.add_argument("--binary-endpoint", action="append", default=[],
                   help="also fit this 0/1 column (e.g. ic_response) into the same bundle; repeatable")
    p.add_argument("--fusion", choices=("none", "mmoe"), default="none",
                   help="mmoe: add the multimodal fusion model (mixture of experts over radiomics, deep, clinical "
                        "and --extra-features blocks; a task per --binary-endpoint) beside the Cox nomogram")
    p.add_argument("--extra-features", action="append", default=[], metavar="NAME=CSV",
                   help="another modality's per-patient table (patient_id + numeric columns), e.g. "
                        "pathology=slides.csv; repeatable; used by --fusion mmoe and by a binary endpoint's ridge "
                        "(--endpoint or --binary-endpoint ic_response)")
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--split-col", default=None, help="manifest column with train/test per patient")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="without --split-col: the share of patients held out for evaluate, drawn at random within "
                        "event and non-event patients (default 0.3; 0: every patient trains)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random split, the folds and the bootstrap resamples (default 0)")
    p.add_argument("--synthetic", action="store_true",
                   help="mark the bundle as trained on synthetic data (predictions then say: not for clinical use); "
                        "automatic for a manifest beside the SYNTHETIC_COHORT.json that synth writes")
    p.add_argument("--network", default=None,
                   help="network bundle used by extract --network; shipped inside the bundle for predict")
    p.add_argument("--optimism-bootstraps", type=int, default=None,
                   help="bootstrap refits for the optimism-corrected training C-index (default 20; 0: skip)")
    p.add_argument("--robustness-patients", type=int, default=None,
                   help="training patients perturbed to measure each feature's ICC (default 30, skipped when fewer "
                        "than 25 training events leave no ICC threshold to choose; 0: skip)")
    p.add_argument("--permutations", type=int, default=None,
                   help="label permutations testing each binary endpoint's model against chance (default 9, "
                        "smallest p 0.1; 99 gives p down to 0.01 at 11 x the cost; 0: skip)")
    p.add_argument("--no-select", action="store_true",
                   help="skip the cross-validated choice of features, penalty, clinical coding and nomogram design")
    p.add_argument("--workers", type=int, default=2,
                   help="processes for the perturbed extractions, the selection and the bootstrap refits")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics, predictions and plots of a bundle on a cohort")
    p.add_argument("--bundle", required=True, help="bundle directory written by train")
    _add_manifest_args(p)
    p.add_argument("--features", required=True, help="features table written by extract from this manifest")
    p.add_argument("--endpoint", required=True,
                   help=f"survival endpoint ({', '.join(ENDPOINTS)}) or a binary endpoint of the bundle")
    p.add_argument("--out", required=True,
                   help="folder for metrics.json, predictions.csv, the figures and cohort_study.html")
    p.add_argument("--subset", choices=("auto", "all"), default="auto",
                   help="auto: leave out the bundle's training patients (default); all: every patient")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for confidence intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--extra-features", action="append", default=[], metavar="NAME=CSV",
                   help="the extra modality tables the bundle's fusion model or binary endpoint was trained with "
                        "(repeatable)")
    p.add_argument("--study-info", default=None,
                   help="JSON with data_source, dates, setting, eligibility, outcome_definition, image_protocol "
                        "(the cohort page's reporting checklist)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="prognosis for one patient")
    p.add_argument("--bundle", required=True)
    p.add_argument("--t1", required=True)
    p.add_argument("--t2", required=True)
    p.add_argument("--t1c", required=True)
    p.add_argument("--mask", default=None, help="label map: 1 = GTVp, 2 = GTVn; 'auto' or absent: the bundle's network")
    p.add_argument("--resample-mask", action="store_true",
                   help="resample a mask that is not on the CET1W grid (nearest neighbour) instead of refusing it")
    p.add_argument("--roi-map", default=None,
                   help="masks given as DICOM RTSTRUCT: which ROIs are GTVp/GTVn, e.g. GTVp=GTVnx,GTVn=GTVnd|GTV_LN* "
                        "(case-insensitive; default: common names such as GTVp, GTV-P, GTVnx / GTVn, GTVnd)")
    p.add_argument("--tta", type=int, default=4, help="test-time augmentations for the deep score's spread")
    p.add_argument("--saliency", action="store_true", help="also write saliency.nii.gz, where the network's risk "
                   "looked (HiResCAM; needs the bundle's network), for the patient sheet")
    p.add_argument("--centre", default=None,
                   help="the patient's centre, when the bundle harmonised radiomics across training centres")
    p.add_argument("--patient-id", help="the ID the outputs name (default: the DICOM series' PatientID, else "
                   "'patient', with a warning); a DICOM series carrying another PatientID is refused")
    p.add_argument("--extra-features", action="append", default=[], metavar="NAME=CSV",
                   help="the extra modality tables (with a row for --patient-id) of the bundle's fusion model or "
                        "binary endpoints")
    p.add_argument("--clinical", nargs="*", metavar="NAME=VALUE",
                   help="age=52 sex=M t_stage=T2 n_stage=N1 rene=0 ldh=180 ebv_dna=1500 chemo=1 ccnd=200")
    p.add_argument("--out", required=True, help="folder of prediction.json; a sheet or report of an earlier run "
                   "there is removed once the new prediction is written")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another patient's result in --out (refused otherwise)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="the patient sheet (HTML, and PDF with Chromium) of a prediction")
    p.add_argument("--prediction", required=True, help="predict's output folder (or its prediction.json)")
    p.add_argument("--t1c", default=None, help="CET1W image for the key slices")
    p.add_argument("--mask", default=None,
                   help="the contours to show (default: the folder's automatic_mask.nii.gz when predict drew them)")
    p.add_argument("--automatic-mask", default=None, help="the automatic contours the shown ones were edited from")
    p.add_argument("--uncertainty", default=None, help="uncertainty map (default: the folder's uncertainty.nii.gz)")
    p.add_argument("--saliency", default=None, help="saliency map (default: the folder's saliency.nii.gz)")
    p.add_argument("--out", default=None, help="folder for patient_sheet.html/.pdf (default: the prediction folder)")
    p.add_argument("--no-pdf", action="store_true", help="only the HTML")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("train-net", help="train the multi-task segmentation + survival network")
    _add_manifest_args(p)
    p.add_argument("--endpoint", choices=ENDPOINTS, required=True)
    p.add_argument("--out", required=True, help="network bundle directory")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int,
                   help="samples per optimiser step (default 2; a resumed run keeps its own)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (mixed precision on cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share (epoch selection)")
    p.add_argument("--cox-weight", type=float, help="weight of the Cox loss against Dice + CE (default 0.5)")
    p.add_argument("--binary-column", help="also train the binary head on this 0/1 column (e.g. ic_response)")
    p.add_argument("--config", help="JSON file of further training options (TrainConfig fields)")
    p.add_argument("--work-dir", help="checkpoints and preprocessing cache (default: <out>.work)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--workers", type=int, default=2, help="patients preprocessed in parallel before training")
    p.add_argument("--synthetic", action="store_true", help="mark the network as a synthetic demo (automatic for "
                   "a manifest beside the SYNTHETIC_COHORT.json that synth writes)")
    p.add_argument("--force", action="store_true",
                   help="write the bundle even when the network fails the validation-Dice quality gate")
    p.set_defaults(func=_cmd_train_net)

    p = sub.add_parser("segment", help="GTVp/GTVn contours with the network, for one patient or a cohort")
    p.add_argument("--bundle", required=True, help="network bundle (or a prognosis bundle that ships one)")
    p.add_argument("--t1")
    p.add_argument("--t2")
    p.add_argument("--t1c")
    _add_manifest_args(p, required=False,
                       help="segment every patient: writes DIR/<patient_id>_mask.nii.gz and DIR/manifest.csv")
    p.add_argument("--patient-id", help="the ID the outputs name (default: the DICOM series' PatientID, else "
                   "'patient', with a warning); a DICOM series carrying another PatientID is refused")
    p.add_argument("--tta", type=int, default=0, help="test-time augmentations (uncertainty map, score spread)")
    p.add_argument("--saliency", action="store_true", help="also write a saliency volume of the risk score")
    p.add_argument("--out", required=True, help="MASK.nii.gz for one patient, a folder with --manifest; a DICOM "
                   "CET1W also gets <name>_seg.dcm (DICOM SEG) and <name>_rtstruct.dcm (RT Structure Set)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("cox", help="Cox model of any table: coefficients, HRs with 95%% CI, p values (JSON)")
    p.add_argument("--table", required=True)
    p.add_argument("--time-col", required=True)
    p.add_argument("--event-col", required=True)
    p.add_argument("--covariates", required=True, help="comma-separated column names")
    p.add_argument("--ties", choices=("breslow", "efron"), default="efron")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.set_defaults(func=_cmd_cox)

    p = sub.add_parser("benefit", help="treatment effect of any table: HR per arm, per subgroup, interaction test")
    p.add_argument("--table", required=True)
    p.add_argument("--time-col", required=True)
    p.add_argument("--event-col", required=True)
    p.add_argument("--treatment-col", required=True, help="treatment arm column (any labels)")
    p.add_argument("--by", default=None, help="subgroup column: per-level HRs and the interaction test")
    p.add_argument("--covariates", default="", help="comma-separated confounder columns (numeric)")
    p.add_argument("--reference", default=None, help="reference arm (default: the lowest label)")
    p.add_argument("--ties", choices=("breslow", "efron"), default="efron")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.set_defaults(func=_cmd_benefit)

    p = sub.add_parser("demo", help="end-to-end demo on SYNTHETIC data and the shipped sample case")
    p.add_argument("--out", default="npc-demo-output")
    p.add_argument("--n", type=int, default=120, help="size of the synthetic cohort (70%% trains)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a warning is for the user: its text, not the library's file, line and source code
        warnings.formatwarning = _user_warning
    try:
        for option, kind in OUTPUT_OPTIONS.get(args.command, {}).items():
            check_output(getattr(args, option, None), option="--" + option.replace("_", "-"), kind=kind)
        remove_killed_runs_leftovers(args.command, args)
        return int(args.func(args) or 0)
    except (InputError, BundleError) as exc:
        print(f"npc-prognosis {args.command}: error: {exc}", file=sys.stderr)
        # what the images said before the error (io.images.warnings_kept_on_failure): often its reason
        for warning in getattr(exc, "warnings", None) or []:
            print(f"  warned before the error: {warning}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: where the work stands, not a traceback
        # a command that knows what its part-way run left says so in the interrupt (segment_cohort)
        left = f"; {exc}" if str(exc) else _INTERRUPTED.get(args.command, lambda _: "")(args)
        print(f"npc-prognosis {args.command}: interrupted{left}", file=sys.stderr)
        return 130
    except OSError as exc:  # a disk that filled up or a permission that changed while running
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"npc-prognosis {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


#: What an interrupted command leaves for its re-run.
_INTERRUPTED = {
    "extract": lambda args: (f"; the patients finished so far are kept in {args.out}.partial and are not extracted "
                             "again when the same command runs again"),
    "train": lambda args: _train_left(args),
    # segment_cohort says what a cohort run stopped part-way leaves; before its first patient nothing has changed
    "segment": lambda args: (f"; no patient was segmented: {args.out} is as the earlier run left it, if any"
                             if args.manifest else
                             f"; nothing of this run was written: {args.out} and the files named after it (_seg.dcm, "
                             "_rtstruct.dcm, _uncertainty, _saliency) are the earlier run's, if any, and whole (this "
                             "run's replace them together once all are written)"),
}


def _train_left(args: argparse.Namespace) -> str:
    """What an interrupted ``train`` leaves: no bundle, and the perturbed extractions of its robustness study (each
    cached as it finishes, minutes per patient), which a re-run reads instead of extracting again."""
    from NPCPrognosisLib.pipeline.robustness import cache_dir_for

    return (f"; no bundle was written to {args.out}; the robustness study's perturbed extractions finished so far "
            f"are kept in {cache_dir_for(args.features)} and are not extracted again when the same command runs again")


def _user_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    return f"warning: {message}\n"


#: Output options of each command and whether they name a file or a folder, checked before any work starts.
OUTPUT_OPTIONS = {"synth": {"out": "folder"}, "extract": {"out": "file"}, "train": {"out": "folder"},
                  "evaluate": {"out": "folder"}, "predict": {"out": "folder"}, "train-net": {"out": "folder"},
                  "segment": {"out": "any"}, "cox": {"out": "file"}, "benefit": {"out": "file"},
                  "demo": {"out": "folder"}, "report": {"out": "folder"}}


def output_folders(command: str, args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """The folders ``command`` writes its outputs into, each with whether the folders below it are its too.

    A folder output is the command's with everything below it, and its parent holds the hidden folder a bundle is
    written in before it is renamed (``write_bundle``); a file output's folder is the user's, only that folder.

    Parameters
    ----------
    command : str
        The command's name, a key of :data:`OUTPUT_OPTIONS`.
    args : argparse.Namespace
        Its parsed options.

    Returns
    -------
    list of (Path, bool)
        Each folder once, with ``recursive``.
    """
    folders: dict[Path, bool] = {}
    for option, kind in OUTPUT_OPTIONS.get(command, {}).items():
        target = getattr(args, option, None)
        if not target:
            continue
        path = Path(target)
        if kind == "folder" or (kind == "any" and path.is_dir()):
            folders[path] = True
        folders.setdefault(path.parent, False)
    return list(folders.items())


def remove_killed_runs_leftovers(command: str, args: argparse.Namespace) -> None:
    """Remove, once per output folder before the command writes, the unfinished files a hard-killed run left there
    (:func:`~NPCPrognosisLib.io.atomic.remove_stale_writes`; it warns naming them)."""
    from NPCPrognosisLib.io.atomic import remove_stale_writes

    for folder, recursive in output_folders(command, args):
        remove_stale_writes(folder, recursive=recursive)


def check_output(target: str | None, option: str, kind: str = "any") -> None:
    """Refuse an output path that cannot be written before hours of work: a parent that is a file, a file where a
    folder goes (or the reverse), a folder that is not writable. Existing outputs of the right kind are replaced
    atomically, so their existence is fine."""
    import os

    if not target:
        return
    path = Path(target)
    if kind == "folder" and path.is_file():
        raise InputError(f"{path} is an existing file, but {option} names a folder", path=path, column=option,
                         fix="choose a folder path (it is created when missing)")
    if kind == "file" and path.is_dir():
        raise InputError(f"{path} is an existing folder, but {option} names a file", path=path, column=option,
                         fix="choose a file path, e.g. features.csv")
    for parent in [path, *path.parents]:
        if parent.exists():
            if parent != path and not parent.is_dir():
                raise InputError(f"{parent} is a file, so {path} cannot be created", path=path, column=option,
                                 fix="choose an output path whose folders are folders")
            folder = parent if parent.is_dir() else parent.parent
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"no permission to write in {folder}", path=path, column=option,
                                 fix="choose a folder you can write to")
            return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
