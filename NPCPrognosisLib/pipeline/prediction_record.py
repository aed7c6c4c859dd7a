"""The record of one patient's prediction and the files it is written to: ``prediction.json`` and the images the
prediction made (the network's contours, its uncertainty and saliency maps).

Apart from :mod:`NPCPrognosisLib.pipeline.predict` (which computes a prediction) because the record is what the
CLI, the Slicer module, the patient sheet and the prediction folder read and write; they need its fields and file
names, not the stages that fill them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from NPCPrognosisLib.io.atomic import write_json_atomic
from NPCPrognosisLib.io.images import write_image_atomic

#: The patient's record in a prediction folder (:func:`write_prediction`; read by the report and the panel).
PREDICTION_FILE = "prediction.json"
#: Where ``write_prediction`` puts the network's contours of a patient predicted without a mask.
AUTOMATIC_MASK_FILE = "automatic_mask.nii.gz"
#: The network's voxel uncertainty over test-time augmentations and the saliency of its risk, when computed.
UNCERTAINTY_FILE = "uncertainty.nii.gz"
SALIENCY_FILE = "saliency.nii.gz"

_IMAGE_FIELDS = ("automatic_mask", "uncertainty_map", "saliency_map")


@dataclass
class Prediction:
    """What a clinician sees for one patient; ``to_dict`` is ``prediction.json``."""

    patient_id: str
    endpoint: str
    risk_score: float
    #: The group of the risk score itself, or ``not determined`` when the nomogram learned nothing (``unproven``);
    #: ``borderline`` and ``imputed`` say when it is not firm (reports print it through
    #: :func:`~NPCPrognosisLib.reporting.labels.risk_group_text`).
    risk_group: str
    cutoff: float
    survival: dict[str, float]
    nomogram_points: dict[str, Any]
    model_risks: dict[str, float]
    factors: dict[str, float]
    clinical: dict[str, Any]
    #: Standard error of the risk score (delta method) and the deep score's TTA spread (see survival.patient).
    uncertainty: dict[str, Any] = field(default_factory=dict)
    #: Months, this patient's predicted survival and the reference curves (risk groups, cut-off, training KM).
    survival_curves: dict[str, list[float]] = field(default_factory=dict)
    chemo_benefit: dict[str, Any] = field(default_factory=dict)
    #: Binary endpoints the bundle carries (e.g. induction-chemotherapy response): probability, 95% interval, and
    #: what train found its model failed to learn (``no_better_than_chance``, ``warnings``:
    #: :func:`~NPCPrognosisLib.pipeline.binary.training_findings`, the chance test's and the ridge's own text).
    binary: dict[str, Any] = field(default_factory=dict)
    #: The fusion model's prediction (``train --fusion mmoe``): risk, group (``not determined`` with ``unproven``
    #: when the fusion learned nothing, as for the nomogram), survival, probabilities and the gate weights per task
    #: (which modality drove this prediction), with the modalities this patient lacked.
    fusion: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    #: The nomogram's scale (:meth:`Nomogram.chart_scale`): enough to draw the chart with this patient's points.
    nomogram_scale: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The risk score's 95% interval spans the cut-off (:func:`~NPCPrognosisLib.survival.patient.group_certainty`);
    #: None when the bundle stores no covariance.
    borderline: bool | None = None
    #: Per covariate filled with a training value (missing EBV DNA): the prediction across the training 10th-90th
    #: percentile (:func:`~NPCPrognosisLib.survival.patient.imputation_effect`) and ``risk_group``, "undetermined
    #: without ..." when the group changes within it.
    imputed: dict[str, Any] = field(default_factory=dict)
    #: What the nomogram failed to learn in training
    #: (:func:`~NPCPrognosisLib.pipeline.predict.unproven_nomogram`: ``no_weight``, ``corrected_c``); empty when it
    #: learned something.
    unproven: dict[str, Any] = field(default_factory=dict)
    #: Factors outside their training range, and the risk score (``combined_risk``) when the factors together put
    #: it beyond every training patient's (the model extrapolates): factor, value, training low and high.
    out_of_range: list[dict[str, Any]] = field(default_factory=list)
    bundle: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 of each sequence as the models read it (on the CET1W grid) and of the contours the radiomics came
    #: from (:func:`~NPCPrognosisLib.imaging.geometry.image_fingerprint`), so a filed result names its inputs.
    inputs: dict[str, str] = field(default_factory=dict)
    #: Seconds per stage of this prediction (preprocess, contour, radiomics, scores).
    timings: dict[str, float] = field(default_factory=dict)
    #: The network's contours when no mask was given (on the CET1W grid), for review; not part of the JSON.
    automatic_mask: sitk.Image | None = field(default=None, repr=False, compare=False)
    #: The network's uncertainty map (TTA) and risk saliency on the CET1W grid, when computed; not in the JSON.
    uncertainty_map: sitk.Image | None = field(default=None, repr=False, compare=False)
    saliency_map: sitk.Image | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record; ``images`` names the image files this prediction made (the report shows only those
        of the folder: a file there may be another run's, or the user's own edit)."""
        made = [name for field_name, name in zip(_IMAGE_FIELDS, (AUTOMATIC_MASK_FILE, UNCERTAINTY_FILE, SALIENCY_FILE))
                if getattr(self, field_name) is not None]
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in _IMAGE_FIELDS},
                "images": made}


def write_prediction(prediction: Prediction, out_dir: str | Path) -> Path:
    """``prediction.json`` in ``out_dir`` (with ``automatic_mask.nii.gz`` when the network drew the contours, so they
    can be reviewed, and the uncertainty and saliency maps when computed), each written atomically; returns the
    JSON's path. Nothing else in the folder is touched (a mask there may be the user's edit); the JSON lists the
    images this prediction made, and the report reads only those."""
    for image, name in ((prediction.automatic_mask, AUTOMATIC_MASK_FILE),
                        (prediction.uncertainty_map, UNCERTAINTY_FILE), (prediction.saliency_map, SALIENCY_FILE)):
        if image is not None:
            write_image_atomic(image, Path(out_dir) / name)
    return write_json_atomic(Path(out_dir) / PREDICTION_FILE, prediction.to_dict())
