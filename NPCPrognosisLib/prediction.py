"""One patient's prognosis from images, mask and clinical record, with a bundle.

The Slicer module and ``npc-prognosis predict`` both land here, so a patient gets the same numbers whichever
way a clinician asks.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import pandas as pd

from .atomic import json_default, write_text_atomic
from .benefit import benefit_statement
from .clinical import ClinicalRecord, parse_clinical
from .errors import InputError
from .features_table import DEEP_SCORE, patient_features
from .imageio import PatientImages, check_mask
from .models import LoadedBundle
from .nomogram import REPORT_MONTHS
from .risk_groups import assign_groups

SYNTHETIC_WARNING = "This bundle was trained on SYNTHETIC data: a software demonstration, not for clinical use."


@dataclass
class Prediction:
    """What a clinician sees for one patient; ``to_dict`` is ``prediction.json``."""

    patient_id: str
    endpoint: str
    risk_score: float
    risk_group: str
    cutoff: float
    survival: Dict[str, float]
    nomogram_points: Dict[str, Any]
    model_risks: Dict[str, float]
    factors: Dict[str, float]
    clinical: Dict[str, Any]
    chemo_benefit: Dict[str, Any] = field(default_factory=dict)
    segmentation: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    bundle: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def bundle_features(bundle: LoadedBundle, patient: PatientImages) -> Dict[str, float]:
    """Extract with exactly the bundle's radiomics settings (written to a temporary parameter file)."""
    import yaml

    settings = bundle.document["radiomics"]["settings"]
    handle, params = tempfile.mkstemp(suffix=".yaml", prefix="npc-radiomics-")
    try:
        with os.fdopen(handle, "w") as stream:
            yaml.safe_dump(settings, stream)
        return patient_features(patient, bundle.preprocess, params_path=params)
    finally:
        os.unlink(params)


def predict_patient(
    bundle: LoadedBundle,
    patient: PatientImages,
    clinical: "Mapping[str, Any] | ClinicalRecord",
    *,
    features: Optional[Mapping[str, float]] = None,
    tta: int = 4,
) -> Prediction:
    """Predict from aligned images (or from precomputed ``features`` of the same settings).

    Without a mask (``patient.mask is None``) the bundle's network segments the patient and radiomics come from
    its contours; when the nomogram uses the deep score the network scores the patient too, with ``tta``
    test-time augmentations giving the spread of the score.
    """
    record = clinical if isinstance(clinical, ClinicalRecord) else parse_clinical(clinical, patient.patient_id)
    segmentation: Dict[str, Any] = {}
    warnings: List[str] = []
    # The deep score depends on the images only, so precomputed radiomics (e.g. of edited contours) still need
    # the network unless they carry the score too.
    has_deep = features is not None and DEEP_SCORE in features
    needs_network = (features is None and patient.mask is None) or (bundle.uses_deep_score and not has_deep)
    deep_sd = None
    row: Dict[str, float] = {}
    if needs_network:
        if bundle.network_dir is None:
            raise InputError("no mask given and the bundle has no segmentation network", patient_id=patient.patient_id,
                             column="--mask", fix="pass a mask (label 1 = GTVp, 2 = GTVn) or use a bundle with a network")
        from .features_table import cached_network
        from .segmentation import segment_patient

        result = segment_patient(cached_network(bundle.network_dir), patient.images, patient_id=patient.patient_id,
                                 tta=tta)
        warnings.extend(result.warnings)
        segmentation = {"source": "manual" if patient.mask is not None else "automatic",
                        "automatic_volumes_ml": result.volumes_ml, "deep_score": result.deep_score,
                        "deep_score_sd": result.deep_score_sd}
        if patient.mask is None:
            patient.mask = check_mask(result.mask, patient_id=patient.patient_id)
            warnings.append("radiomics computed on automatic contours: review them before acting on the result")
        row[DEEP_SCORE] = float(result.deep_score)
        deep_sd = result.deep_score_sd
    row.update(dict(features) if features is not None else bundle_features(bundle, patient))
    factors = bundle.factors([record], pd.DataFrame([row]))
    values = {k: float(v) for k, v in factors.iloc[0].items()}
    nomogram = bundle.nomograms["nomogram"]
    risk = float(nomogram.risk(values)[0])
    survival = nomogram.survival(values, REPORT_MONTHS)[0]
    cutoff = bundle.cutoffs["nomogram"]
    warnings = list(patient.warnings) + warnings + nomogram.out_of_range(values)
    if deep_sd is not None and DEEP_SCORE in nomogram.factors:
        # The deep score's spread over test-time augmentations, carried through the nomogram's coefficient.
        segmentation["risk_score_sd"] = abs(float(nomogram.model.coef[nomogram.factors.index(DEEP_SCORE)])) * deep_sd
    if record.ebv_dna is None:
        warnings.append("EBV DNA missing: the training median was used")
    if bundle.document.get("synthetic_demo"):
        warnings.insert(0, SYNTHETIC_WARNING)
    group = str(assign_groups([risk], cutoff)[0])
    survival_by_month = {f"{m}": float(s) for m, s in zip(REPORT_MONTHS, survival)}
    return Prediction(
        patient_id=patient.patient_id,
        endpoint=bundle.endpoint,
        risk_score=risk,
        risk_group=group,
        cutoff=cutoff,
        survival=survival_by_month,
        nomogram_points=nomogram.points(values),
        model_risks={name: float(model.risk(values)[0]) for name, model in bundle.nomograms.items()},
        factors=values,
        clinical=record.to_dict(),
        chemo_benefit=benefit_statement(group, survival_by_month, bundle.document.get("chemo_benefit"),
                                        record.t_stage, record.n_stage),
        segmentation=segmentation,
        warnings=warnings,
        bundle={"path": str(bundle.path), "created": bundle.document.get("created"),
                "format_version": bundle.document.get("format_version")},
    )


def write_prediction(prediction: Prediction, out_dir: "str | Path") -> Path:
    return write_text_atomic(Path(out_dir) / "prediction.json",
                             json.dumps(prediction.to_dict(), indent=2, default=json_default))
