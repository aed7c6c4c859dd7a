"""What a training run is judged by: the network's outputs on whole validation cases, their Dice and C-index,
the epoch-selection score, and the quality gate that refuses a network that did not learn to contour.

Why a gate at all: a run that never predicts a tumour voxel still ends with weights, and a bundle written from
them would contour nothing without a word. The gate compares the shipped weights' validation Dice with a floor
and with the Dice of the cohort's average tumour position (:func:`position_prior_dice`): a network no better than
that has learned where tumours usually sit, not to see them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from NPCPrognosisLib.contract import LABEL_NAMES
from NPCPrognosisLib.deep.data import CasePatient
from NPCPrognosisLib.deep.inference import grid_pass
from NPCPrognosisLib.imaging.overlap import dice

#: Cases per forward pass when predicting on the working grid: a batch of 4 costs about half as much per case as
#: one case at a time on a CPU (the validation of every epoch was a sixth of an epoch's time one by one).
PREDICT_BATCH = 4


def metric_value(record: Mapping[str, Any], key: str) -> float:
    """A metric read back from JSON: NaN (written as null, e.g. the GTVn Dice of a validation set without nodes)
    and a missing key both come back as NaN.

    Parameters
    ----------
    record : mapping
        An epoch's metrics, e.g. ``best_metrics`` of a network bundle.
    key : str
        The metric, e.g. ``val_dice_gtvn``.

    Returns
    -------
    value : float
    """
    value = record.get(key)
    return float("nan") if value is None else float(value)


def case_outputs(model, cases: Sequence[CasePatient], device: str,
                 inference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The network's outputs for each case without augmentation: argmax labels on the working grid, risks, and
    the risk head's inputs (deep features, image measures).

    With an ``inference`` block whose window is smaller than the cases' grid, each case goes through
    :func:`NPCPrognosisLib.deep.inference.grid_pass` (stitched windows, as ``segment`` runs it); otherwise cases
    are batched whole.
    """
    import torch

    labels, risks, features, measures = [], [], [], []
    model.eval()
    windows = inference is not None and bool(cases) and any(
        int(r) < g for r, g in zip(inference.get("roi_size", cases[0].image.shape[1:]), cases[0].image.shape[1:]))
    with torch.no_grad():
        if windows:
            for case in cases:
                prob, out, _ = grid_pass(model, case.image, inference, device)
                labels.append(prob.argmax(0))
                risks.append(float(out["risk"].float()[0]))
                features.append(out["features"].float()[0].cpu().numpy())
                measures.append(out["measures"].float()[0].cpu().numpy())
        for start in range(0, 0 if windows else len(cases), PREDICT_BATCH):
            batch = cases[start:start + PREDICT_BATCH]
            x = torch.from_numpy(np.stack([case.image for case in batch])).to(device)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast(device):
                out = model(x)
            labels.extend(out["seg_logits"].argmax(1).cpu().numpy())
            risks.extend(out["risk"].float().reshape(len(batch)).tolist())
            features.extend(out["features"].float().cpu().numpy())
            measures.extend(out["measures"].float().cpu().numpy())
    return {"labels": labels, "risks": np.array(risks), "features": np.array(features),
            "measures": np.array(measures)}


#: What ``TrainConfig.precision`` may be.
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str, device: str) -> str:
    """The arithmetic of the training step: ``precision`` unless it is ``"auto"``; then bfloat16 on CUDA, float32
    on the CPU.

    Parameters
    ----------
    precision : str
        One of :data:`PRECISIONS`.
    device : str
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    precision : str
        ``"float32"`` or ``"bfloat16"``.
    """
    if precision != "auto":
        return precision
    return "bfloat16" if device.startswith("cuda") else "float32"


def autocast(device: str, precision: str | None = None):
    """bfloat16 autocast when ``precision`` resolves to ``"bfloat16"`` (no loss scaler, so no scaler state to
    checkpoint), nothing for ``"float32"``. ``None`` (validation and prediction) is ``"auto"``: float32 on the CPU,
    as ``segment`` runs the network, so an epoch is judged by the contours the bundle will draw."""
    import torch

    if resolve_precision(precision or "auto", device) == "bfloat16":
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model, cases: Sequence[CasePatient], device: str,
             inference: Mapping[str, Any] | None = None, *,
             outputs: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Validation Dice (GTVp, GTVn) and C-index of ``cases`` (``inference``: see :func:`case_outputs`), from
    their ``outputs`` when the caller has them."""
    outputs = case_outputs(model, cases, device, inference) if outputs is None else outputs
    labels, risks = outputs["labels"], outputs["risks"]
    result = {}
    for name in ("gtvp", "gtvn"):
        values = [dice(p == LABEL_NAMES[name], c.label[0] == LABEL_NAMES[name]) for p, c in zip(labels, cases)]
        values = [v for v in values if not math.isnan(v)]
        result[f"dice_{name}"] = float(np.mean(values)) if values else float("nan")
    result["c_index"] = safe_c_index([c.time for c in cases], [c.event for c in cases], risks)
    return result


def safe_c_index(time, event, risk) -> float:
    """Harrell's C, or NaN when a (small validation) set has no event or no comparable pair."""
    from NPCPrognosisLib.survival.metrics import harrell_c

    event, risk = np.asarray(event, bool), np.asarray(risk, float)
    if not event.any() or not np.isfinite(risk).all():
        return float("nan")
    try:
        return harrell_c(time, event, risk)
    except Exception:  # sksurv: no comparable pairs
        return float("nan")


def selection_score(metrics: Mapping[str, float]) -> float:
    """Mean validation Dice (GTVp, GTVn) + validation C-index: the epoch that contours and ranks best
    (among the last third of the schedule, see ``TrainConfig.select_after_fraction``)."""
    mean_dice = np.nanmean([metrics["dice_gtvp"], metrics["dice_gtvn"]])
    c = metrics["c_index"] if math.isfinite(metrics["c_index"]) else 0.5
    return float((0.0 if math.isnan(mean_dice) else mean_dice) + c)


def position_prior_dice(train_cases: Sequence[CasePatient], val_cases: Sequence[CasePatient],
                        label: int = LABEL_NAMES["gtvp"]) -> float:
    """Validation Dice of the cohort's average tumour position: the baseline a network must beat.

    The prior mask is where at least half of the training patients have the structure, or, when no voxel is
    that common, the median training volume's worth of the most common voxels. A network whose contours are no
    better than this has learned where tumours usually sit, not to see them (labels shuffled between patients
    give exactly that).
    """
    stack = np.stack([c.label[0] == label for c in train_cases])
    frequency = stack.mean(0)
    prior = frequency >= 0.5
    if not prior.any():
        volume = int(np.median(stack.reshape(len(train_cases), -1).sum(1)))
        if volume == 0:
            return float("nan")
        threshold = np.sort(frequency.ravel())[-volume]
        prior = frequency >= max(threshold, 1e-9)
    values = [dice(prior, c.label[0] == label) for c in val_cases]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


class GateFloors(Protocol):
    """The quality gate's settings, as :class:`~NPCPrognosisLib.deep.training.TrainConfig` holds them (the
    gate is judged here, the settings live with the rest of the training options)."""

    min_val_dice: float
    min_dice_gain: float
    min_val_dice_gtvn: float
    min_val_node_patients: int


@dataclass
class SegmentationGate:
    """Whether the trained network contours: the outcome of :func:`segmentation_gate`."""

    passed: bool
    val_dice_gtvp: float
    val_dice_gtvn: float
    prior_dice_gtvp: float
    required_dice_gtvp: float
    message: str
    forced: bool = False
    #: None when too few validation patients have nodes for GTVn to be checked.
    required_dice_gtvn: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def segmentation_gate(history: Sequence[Mapping[str, Any]], selected: Mapping[str, Any], prior_dice: float,
                      config: GateFloors, val_node_patients: int = 0) -> SegmentationGate:
    """Check the final weights' validation Dice against the floors and the position prior.

    Parameters
    ----------
    history : sequence of mapping
        Per-epoch records with ``val_dice_gtvp`` and ``val_dice_gtvn`` (for the message: the best any epoch
        reached).
    selected : mapping
        ``val_dice_gtvp`` and ``val_dice_gtvn`` of the weights that ship (the selected epoch or the average).
    prior_dice : float
        Validation Dice of the average tumour position (:func:`position_prior_dice`).
    config : GateFloors
        The training options (:class:`~NPCPrognosisLib.deep.training.TrainConfig`): ``min_val_dice``,
        ``min_dice_gain``, ``min_val_dice_gtvn`` and ``min_val_node_patients``.
    val_node_patients : int, default 0
        Validation patients with contoured nodes; GTVn is checked only when there are enough of them for its
        Dice to mean something.

    Returns
    -------
    gate : SegmentationGate
        ``passed`` and a message that says what to try when it did not.
    """
    gtvp = metric_value(selected, "val_dice_gtvp")
    gtvn = metric_value(selected, "val_dice_gtvn")
    prior = float(prior_dice) if math.isfinite(prior_dice) else 0.0
    required = max(config.min_val_dice, prior + config.min_dice_gain)
    primary_ok = math.isfinite(gtvp) and gtvp >= required
    nodes_checked = int(val_node_patients) >= config.min_val_node_patients and math.isfinite(gtvn)
    required_gtvn = float(config.min_val_dice_gtvn) if nodes_checked else None
    nodes_ok = not nodes_checked or gtvn >= config.min_val_dice_gtvn

    def best_seen(key: str) -> float:
        return max((metric_value(r, key) for r in history), default=float("nan"),
                   key=lambda v: v if math.isfinite(v) else -1.0)

    retry = ("Try: check that each mask belongs to its patient and lies on the CET1W (label 1 = GTVp, 2 = GTVn); "
             "more epochs (--epochs); more contoured patients; ")
    if primary_ok and nodes_ok:
        message = (f"validation Dice GTVp {gtvp:.3f} (required {required:.3f}; average-position baseline "
                   f"{prior:.3f}), GTVn {gtvn:.3f}"
                   + (f" (required {required_gtvn:.2f})" if nodes_checked else " (not checked: fewer than "
                      f"{config.min_val_node_patients} validation patients with nodes)"))
    elif not primary_ok:
        message = (f"the network did not learn to contour: validation Dice GTVp {gtvp:.3f} of the final weights "
                   f"(best of any epoch {best_seen('val_dice_gtvp'):.3f}) is below the required {required:.3f} "
                   f"(floor {config.min_val_dice:.2f}, or the average tumour position's Dice {prior:.3f} + "
                   f"{config.min_dice_gain:.2f}). {retry}a lower learning rate (--config with {{\"lr\": 0.001}}). "
                   f"--force writes the bundle anyway, marked as failed")
    else:
        message = (f"the network did not learn to contour the nodes: validation Dice GTVn {gtvn:.3f} of the final "
                   f"weights (best of any epoch {best_seen('val_dice_gtvn'):.3f}, {int(val_node_patients)} "
                   f"validation patients with nodes) is below the required {config.min_val_dice_gtvn:.2f}, while "
                   f"GTVp reached {gtvp:.3f}: it would call every patient node-negative. {retry}smaller batches "
                   f"(--batch-size 2: twice the updates per epoch). --force writes the bundle anyway, marked as "
                   f"failed")
    return SegmentationGate(primary_ok and nodes_ok, gtvp, gtvn, prior, required, message,
                            required_dice_gtvn=required_gtvn)
