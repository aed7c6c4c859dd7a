"""Training the multi-task network: Dice + cross-entropy + Cox, checkpoints every epoch, exact resume.

Why the loop is built this way:

* Loss = DiceCE (MONAI, batch Dice so patients without nodes do not divide by zero) + ``cox_weight`` x Cox
  partial likelihood (Efron ties) [+ BCE for the optional binary head]. Batches are dealt so that
  events are spread evenly (a batch without an event gives the Cox term no gradient).
* On a grid larger than one patch (the derived default), each sample is one patch of its patient, placed on a
  contoured voxel two times in three (:func:`sample_patch`, each structure equally often); the outcome terms read
  only those. Epochs are validated on a fixed patch per patient; the weights that ship on whole grids stitched
  from windows, as ``segment`` runs them (:mod:`NPCPrognosisLib.deep.inference`).
* Segmentation first, then outcome: the Cox and binary terms are off for the first 30 % of the epochs and ramp
  in over the next 20 % (:func:`cox_weight_at`), gradients are clipped, the learning rate warms up then decays.
  On an external-style cohort the joint loss from epoch 0 made the Cox term spike and the contours vanish.
* A quality gate (:func:`~NPCPrognosisLib.deep.validation.segmentation_gate`): a network whose validation Dice
  does not beat the cohort's average tumour position is reported as having learned nothing and no bundle is
  written (unless forced).
* Reproducible to the bit: every random draw of epoch ``e`` (batch order, MONAI augmentation, dropout) is
  seeded from ``(seed, e)``, the learning rate is a pure function of the epoch, data loading is in-process
  (no workers) and ``torch.use_deterministic_algorithms`` is on. A checkpoint therefore needs only the weights,
  the optimizer moments (safetensors) and a JSON of the epoch and history, and a run killed after epoch ``k``
  and resumed ends with exactly the weights of an uninterrupted run.
* Nothing is pickled: weights and optimizer tensors are safetensors, everything else JSON
  (:mod:`NPCPrognosisLib.deep.checkpoints`).
* Checkpoints and the preprocessing cache live beside the bundle (``<out>.work/``), not in it: the bundle
  folder is replaced atomically when it is written and must hold only checksummed files. Every file there is
  written atomically; the hidden unfinished files a hard-killed run leaves there are removed, with a warning
  naming them, when the next run starts (:func:`~NPCPrognosisLib.io.atomic.remove_stale_writes`).
* The weights that ship are the average of those at the end of each epoch of the last third (stochastic weight
  averaging), not the one epoch that validated best on a few dozen patients (``TrainConfig.final_weights``).
* After the last epoch the shipped weights' risk head gets its last layer refitted on the whole training split
  (ridge Cox, :func:`~NPCPrognosisLib.deep.risk_head.refit_risk_head`): the joint mini-batch Cox loss learns
  good features but a noisy final weighting. The bundle records the refit (ridge strength, cross-validated C,
  coefficients) and the same refit without each of its folds, so the network's own training patients get
  out-of-fold deep scores.
* The training step runs in bfloat16 (autocast, no loss scaler, so no scaler state to checkpoint) on CUDA and in
  float32 on the CPU unless ``TrainConfig.precision`` asks for bfloat16. Validation, the refit and ``segment``
  stay in float32 on the CPU. CPU is the default device.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from NPCPrognosisLib.contract import LABEL_NAMES, REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.deep.augmentation import AugmentConfig, augment, fat_suppression_survey, train_transforms
from NPCPrognosisLib.deep.checkpoints import (
    checkpoint_settings,
    load_average,
    load_checkpoint,
    save_checkpoint,
    save_tensors,
    update_average,
)
from NPCPrognosisLib.deep.data import (
    GRID_SAMPLE,
    CasePatient,
    GridConfig,
    centred_patch,
    derive_grid,
    epoch_seed,
    event_balanced_batches,
    load_case,
    sample_patch,
)
from NPCPrognosisLib.deep.inference import inference_spec
from NPCPrognosisLib.deep.network import NetworkConfig, build_network, cox_loss
from NPCPrognosisLib.deep.postprocess import choose_opening_radius, count_components
from NPCPrognosisLib.deep.risk_head import head_risks, refit_risk_head
from NPCPrognosisLib.deep.typicality import cross_correlations, typicality_reference
from NPCPrognosisLib.deep.validation import (
    PRECISIONS,
    autocast,
    case_outputs,
    evaluate,
    position_prior_dice,
    resolve_precision,
    safe_c_index,
    segmentation_gate,
    selection_score,
)
from NPCPrognosisLib.errors import InputError, TrainingFailedError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig
from NPCPrognosisLib.io.atomic import remove_stale_writes
from NPCPrognosisLib.io.images import read_header
from NPCPrognosisLib.survival.splits import event_split

log = logging.getLogger(__name__)

SYNTHETIC_NOTICE = ("SYNTHETIC DEMO NETWORK - NOT FOR CLINICAL USE. Trained on synthetic images generated by "
                    "NPCPrognosisLib.datasets.synth; it has never seen a real patient.")


#: What ``TrainConfig.final_weights`` may be.
FINAL_WEIGHTS = ("best", "average")


@dataclass
class TrainConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    #: The working grid; ``None`` (default): derived from the training images (:func:`derive_grid`).
    grid: GridConfig | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: 2e-3 with class weighting trained the demo network (GTVp/GTVn validation Dice 0.84 / 0.72); 3e-3
    #: without weighting never predicted a tumour voxel on an external-style cohort.
    lr: float = 2e-3
    weight_decay: float = 1e-5
    #: Epochs of linear warm-up to ``lr``. One was not enough: with ``--seed 2`` on 160 family-A patients the
    #: primary, found after the first epoch (validation Dice 0.39), was lost when the rate reached its peak in the
    #: second (softmax inside it near-uniform) and came back only at the 15th of 30 epochs; with three it stayed
    #: (0.70 at the 4th), as it did with half the rate.
    warmup_epochs: int = 3
    #: DeepMTS uses 1:1; on the synthetic demo cohort 1.0 shook the shared encoder early on and the GTVn class
    #: never emerged in 30 epochs, while 0.5 gave validation Dice 0.84 / 0.72.
    cox_weight: float = 0.5
    #: Segmentation first: the Cox (and binary) terms are off for this share of the epochs, then ramp linearly
    #: to full weight over ``cox_ramp_fraction`` of them. A Cox gradient on random contours only pushes the
    #: shared encoder around (training Cox loss 5 -> 11 at epochs 2-4 on an external cohort, Dice 0 after).
    cox_start_fraction: float = 0.3
    cox_ramp_fraction: float = 0.2
    #: Global gradient-norm clip: one batch whose risk set is ill-conditioned cannot throw the weights away.
    grad_clip_norm: float = 12.0
    #: The best epoch is chosen among the last third only: with ~20 validation patients the C-index moves by
    #: +-0.07 between epochs by chance, and early epochs "won" on that noise with half-trained contours.
    select_after_fraction: float = 0.67
    #: Class weights (background, GTVp, GTVn) of the cross-entropy (and, MONAI, of the per-class Dice terms)
    #: and whether Dice counts the background: nodes are <1% of the field, and without weighting the demo
    #: network had not predicted a single GTVn voxel after 12 epochs.
    ce_weights: list[float] | None = field(default_factory=lambda: [1.0, 2.0, 5.0])
    dice_include_background: bool = False
    #: The quality gate (:func:`~NPCPrognosisLib.deep.validation.segmentation_gate`): the selected epoch's
    #: validation Dice of GTVp must reach this floor and beat, by ``min_dice_gain``, the Dice of the cohort's
    #: average tumour position (a network that only learned where tumours usually are has learned nothing from the
    #: images).
    min_val_dice: float = 0.5
    min_dice_gain: float = 0.1
    #: The gate's floor for GTVn, checked when at least ``min_val_node_patients`` validation patients have nodes:
    #: a network can learn the primary and never the nodes (one family-C run at batch 4 on a GPU: validation
    #: GTVn 0.000 at every one of 30 epochs while GTVp reached 0.84), and such a network would report every
    #: patient as node-negative. Weak but real node contours validate at 0.3-0.6 on the phantom cohorts.
    min_val_dice_gtvn: float = 0.2
    min_val_node_patients: int = 3
    binary_column: str | None = None
    binary_weight: float = 0.2
    #: Post-processing stored in the bundle: nodes smaller than this are dropped as noise.
    gtvn_min_ml: float = 0.2
    #: Post-processing stored in the bundle: a node piece more than this many times as long as it is wide (the
    #: long-to-short axis ratio, :func:`~NPCPrognosisLib.deep.postprocess.elongation`) is dropped as a vessel; 0:
    #: none. Nodes are round or oval (the phantom families' true nodes: 99th percentile 2.3-3.7); a vessel's
    #: section on slice after slice is a tube (the false nodes of a network run on another family's scans: 6-17).
    gtvn_max_elongation: float = 4.0
    #: Derive a grid taller than the training scans (at least a patch and a half high), so that training patches
    #: move head-foot. Without it a patch holds every slice and the network learns at which height the anatomy
    #: lies: scans padded by 6-12 slices lost 0.03-0.11 GTVp and up to 0.32 GTVn Dice, which this option removes
    #: (within 0.005 of the unshifted scans); across phantom families it moved the primary by -0.066 (A -> B) and
    #: +0.057 (B -> A), the nodes by +0.01, and took about a fifth longer and 0.6-0.9 GB more memory to train (docs,
    #: "Room to move head-foot").
    #: Off by default until more runs decide; ``segment`` warns about a scan of another height instead.
    head_foot_room: bool = False
    #: Opening radius (mm) of the automatic GTVp's largest component (its thick parts all stay). None: the largest
    #: radius that the training patients' own GTVp contours survive with a mean Dice of ``gtvp_opening_keep_dice``
    #: (:func:`~NPCPrognosisLib.deep.postprocess.choose_opening_radius`); 0: no opening. Trained on family B and
    #: run on family A, the network drew the primary on along the enhancing mucosa of the airway (precision 0.66).
    #: 0.98 let family B's round primaries choose 5.5 mm, which cut a small family-A primary to a third.
    gtvp_opening_mm: float | None = None
    gtvp_opening_keep_dice: float = 0.99
    #: Ridge strengths tried when the last risk layer is refitted on the whole training split
    #: (:func:`~NPCPrognosisLib.deep.risk_head.refit_risk_head`); the one with the best cross-validated C wins.
    refit_penalties: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    #: Fewer training events than this and the refit is skipped (the jointly trained head is kept).
    refit_min_events: int = 8
    #: Whether the MLP output enters the refit. Off: it is in-sample on the training patients (see network.py).
    refit_include_mlp: bool = False
    #: The weights that ship: ``"average"``, the mean of the weights at the end of every epoch of the selection
    #: window (stochastic weight averaging, Izmailov et al. 2018; group norm has no running statistics to
    #: recompute), or ``"best"``, those of the selected epoch. The selected epoch wins on the noise of a few dozen
    #: validation patients; the average was as good or slightly better on the other phantom family (four paired
    #: runs: Dice GTVp +0.011, GTVn +0.000, HD95 GTVn lower in all four; docs/segmentation-network.md, "Weight
    #: averaging"). The average is kept either way, so this is chosen after the epochs and may change on
    #: ``--resume``.
    final_weights: str = "average"
    #: Arithmetic of the training step (:data:`PRECISIONS`). ``"auto"`` is resolved when a run starts
    #: (:func:`resolve_precision`: bfloat16 on CUDA, float32 on the CPU) and the resolved value is what the
    #: checkpoint and the bundle record, so a resumed run keeps it. ``"bfloat16"`` on a CPU that computes in it
    #: natively (AVX512-BF16, AMX) trained family C 17-25 % faster; held-out GTVn Dice against float32 with the
    #: same seed -0.070 and +0.035 in two seeds (docs/segmentation-network.md, "bfloat16 steps on the CPU"): no
    #: clear cost, no evidence of none, and every measurement in this project is float32, so the CPU default
    #: stays float32; elsewhere bfloat16 is only emulated and slower.
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network.to_dict(), "grid": None if self.grid is None else self.grid.to_dict(),
                "preprocess": self.preprocess.to_dict(), "augment": self.augment.to_dict(),
                **{k: v for k, v in asdict(self).items() if k not in ("network", "grid", "preprocess", "augment")}}


def make_config(overrides: Mapping[str, Any] | None = None, *,
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig with overrides; nested ones as dicts, e.g. ``{"network": {"init_filters": 4}}``. ``base``
    (a checkpoint's settings) is applied first, the overrides on top of it, nested sections key by key."""
    config = TrainConfig()
    for key, value in [*dict(base or {}).items(), *dict(overrides or {}).items()]:
        if key == "network":
            config.network = NetworkConfig.from_dict({**config.network.to_dict(), **value})
        elif key == "grid":
            config.grid = None if value is None else GridConfig.from_dict({**(config.grid or GridConfig()).to_dict(),
                                                                           **value})
        elif key == "preprocess":
            config.preprocess = PreprocessConfig.from_dict({**config.preprocess.to_dict(), **value})
        elif key == "augment":
            config.augment = AugmentConfig(**{**config.augment.to_dict(), **value})
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            raise InputError(f"unknown network training option {key!r}",
                             fix=f"use one of {sorted(TrainConfig().to_dict())}")
    for name in ("size", "patch"):
        shape = getattr(config.grid, name) if config.grid is not None else None
        if shape is not None and any(s % config.network.downsampling for s in shape):
            # otherwise the first forward pass fails with a shape error, after every patient was preprocessed
            raise InputError(f"working grid {name} {shape} is not a multiple of {config.network.downsampling} "
                             "(the network's downsampling)", fix=f"change grid.{name}")
    if config.final_weights not in FINAL_WEIGHTS:
        raise InputError(f"unknown final_weights {config.final_weights!r}",
                         fix=f"use one of {', '.join(FINAL_WEIGHTS)}")
    if config.precision not in PRECISIONS:
        raise InputError(f"unknown precision {config.precision!r}", fix=f"use one of {', '.join(PRECISIONS)}")
    return config


def learning_rate(config: TrainConfig, epoch: int, epochs: int) -> float:
    """Linear warm-up then cosine decay: a pure function of the epoch, so a resumed run needs no scheduler state."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / (config.warmup_epochs + 1)
    span = max(1, epochs - config.warmup_epochs)
    return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span)))


def outcome_ramp(config: TrainConfig, epoch: int, epochs: int) -> float:
    """Share of their full weight the outcome terms (Cox, binary) have at ``epoch``: 0 while the contours form, then
    a linear ramp to 1.

    Parameters
    ----------
    config : TrainConfig
        ``cox_start_fraction`` and ``cox_ramp_fraction``.
    epoch, epochs : int
        The epoch (0-based) and the run's number of epochs.

    Returns
    -------
    share : float
    """
    start = int(math.floor(epochs * config.cox_start_fraction))
    ramp = max(1, int(round(epochs * config.cox_ramp_fraction)))
    return float(np.clip((epoch - start + 1) / ramp, 0.0, 1.0))


def cox_weight_at(config: TrainConfig, epoch: int, epochs: int) -> float:
    """Weight of the Cox term at ``epoch`` (:func:`outcome_ramp` of ``cox_weight``)."""
    return config.cox_weight * outcome_ramp(config, epoch, epochs)


def split_patients(ids: Sequence[str], events: Sequence[bool], val_fraction: float, seed: int) -> tuple:
    """Validation set stratified by event status, drawn from ``seed`` only."""
    train, val = event_split(np.asarray(events, bool), val_fraction, epoch_seed(seed, 0, 7))
    return [int(i) for i in train], [int(i) for i in val]


#: Training samples per optimiser step. Two, not four: an epoch costs the same on a CPU (the same patches go
#: through the network), and the nodes get twice the updates. At four the node class emerged late or never on
#: family C (seed 32: validation GTVn 0 until the 11th of 30 epochs on 2 CPU cores, and at every epoch of a GPU
#: run; at two from the 6th-8th). Held out, paired (200 patients each): family-C seeds 32 / 33 GTVn +0.080 /
#: +0.056 and GTVp +0.015 / +0.017; family B GTVp / GTVn 0.891 / 0.882 -> 0.906 / 0.904
#: (docs/segmentation-network.md, "Two samples per step"). Group norm does not depend on the batch size.
BATCH_SIZE = 2


def _patch_view(case: CasePatient, slices: tuple[slice, ...]) -> CasePatient:
    """The case cut to one patch of its grid."""
    view = (slice(None),) + tuple(slices)
    return CasePatient(case.patient_id, np.ascontiguousarray(case.image[view]),
                       np.ascontiguousarray(case.label[view]), case.time, case.event, case.binary)


def training_volumes(cases: Sequence[CasePatient], voxel_ml: float, gtvn_min_ml: float = 0.0
                     ) -> dict[str, dict[str, float]]:
    """Range of the contoured volumes (mL, on the working grid) of the training patients, per structure, and the
    most separate nodes any of them had (pieces of at least ``gtvn_min_ml``, as ``segment`` keeps them):
    ``segment`` warns about a patient whose automatic contours fall outside it."""
    out = {}
    for name in ("gtvp", "gtvn"):
        volumes = np.array([float((c.label[0] == LABEL_NAMES[name]).sum()) * voxel_ml for c in cases])
        present = volumes[volumes > 0]
        if present.size:
            out[name] = {"min": float(present.min()), "p01": float(np.percentile(present, 1)),
                         "p99": float(np.percentile(present, 99)), "max": float(present.max()),
                         "share_present": float(present.size / len(cases))}
    if "gtvn" in out:
        out["gtvn"]["max_components"] = max(count_components(c.label[0] == LABEL_NAMES["gtvn"], voxel_ml, gtvn_min_ml)
                                            for c in cases)
    return out


def gtvp_opening(config: TrainConfig, cases: Sequence[CasePatient]) -> dict[str, Any]:
    """The opening of automatic primaries that the bundle records: the configured radius, or the one that all
    the network's patients' (training and validation) GTVp contours survive."""
    if config.gtvp_opening_mm is not None:
        return {"radius_mm": float(config.gtvp_opening_mm), "source": "configuration"}
    rows = [c.gtvp_opening_dice for c in cases if c.gtvp_opening_dice is not None]
    return choose_opening_radius(rows, config.gtvp_opening_keep_dice)


# ------------------------------------------------------------------------------------------------ training

def _load_cases(entries, endpoint, config: TrainConfig, cache_dir: Path, progress: bool,
                workers: int = 1) -> list[CasePatient]:
    """Preprocess every training patient (or read its cache), ``workers`` patients at a time.

    N4 and resampling run on one ITK thread per patient (identical results on any machine, see
    :func:`NPCPrognosisLib.imaging.preprocess.preprocess_image`), so patients in parallel processes are what
    uses the cores: on 2 cores this stage was 7 of a 160-patient run's 20 minutes when it ran one patient at a time.
    A bad patient stops it at once: ``Executor.map`` cancels the patients not yet started when a result raises.
    """
    from tqdm import tqdm

    load = functools.partial(load_case, endpoint=endpoint, preprocess=config.preprocess, grid=config.grid,
                             cache_dir=cache_dir, foreign_ids=frozenset(e.patient_id for e in entries))
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(entries) > 1:
            from NPCPrognosisLib.processes import worker_pool

            loaded = stack.enter_context(worker_pool(min(workers, len(entries)))).map(load, entries)
        else:
            loaded = map(load, entries)
        return list(tqdm(loaded, total=len(entries), desc="preparing patients", unit="patient",
                         disable=not progress))


def _binary_values(manifest, ids: Sequence[str], column: str) -> dict[str, float]:
    table = manifest.table.set_index("patient_id")
    if column not in table.columns:
        raise InputError(f"no {column} column for the binary head", path=manifest.source, column=column)
    return {pid: float(table.loc[pid, column]) for pid in ids}


def train_network(
    manifest_path: str | Path,
    endpoint: str,
    out_dir: str | Path,
    *,
    epochs: int = 30,
    batch_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: bool = True,
    resume: bool = False,
    synthetic_demo: bool = False,
    work_dir: str | Path | None = None,
    stop_after_epoch: int | None = None,
    config: Mapping[str, Any] | None = None,
    force: bool = False,
    workers: int = 2,
    column_map: Mapping[str, str] | None = None,
) -> Path:
    """Train the multi-task network on a manifest (images, masks, ``<endpoint>_time/_event``); write a bundle.

    ``out_dir`` becomes the network bundle. Checkpoints (``latest`` and ``best``) and the preprocessing cache go
    to ``work_dir`` (default ``<out_dir>.work``); ``resume=True`` continues from ``latest``. ``stop_after_epoch``
    ends the call after that epoch as if the run had been killed (tests of resume). ``config`` overrides
    :class:`TrainConfig` fields. Returns the bundle folder (or the checkpoint folder when stopped early).

    A network whose selected epoch fails the quality gate
    (:func:`~NPCPrognosisLib.deep.validation.segmentation_gate`) raises
    :class:`TrainingFailedError` and writes no bundle, unless ``force``: then the bundle is written with the
    failed gate recorded, and every ``segment`` with it warns. ``workers`` patients are preprocessed at a time
    (separate processes); the network then trains in this process on torch's threads. ``column_map`` maps
    canonical column names to the manifest's own; the manifest needs the patient ID, the three sequences, the
    mask and the endpoint's time and event, not the clinical factors. ``batch_size`` None: :data:`BATCH_SIZE`,
    or on ``resume`` the batch size the run was started with. ``synthetic_demo`` marks the network synthetic (every
    segmentation warns); a manifest of a cohort ``synth`` wrote sets it by itself
    (:func:`~NPCPrognosisLib.io.manifest.is_synthetic_cohort`).
    """
    import torch

    from NPCPrognosisLib.io import bundle as bundle_io
    from NPCPrognosisLib.io.manifest import check_outcomes, is_synthetic_cohort, read_manifest

    started = time.time()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    ckpt_dir = work / "checkpoints"
    # a hard-killed run's unfinished checkpoint and cache files (5 MB a patient, 14 MB a checkpoint): before this run
    # writes there; only those whose writer no longer runs, so a run still using the folder keeps its own
    remove_stale_writes(work, recursive=True)
    # a resumed run goes on as it was started: what the call does not set comes from the checkpoint (neither a
    # newer version's defaults nor a choice made from the data may change a run half-way); what it sets is checked
    # against the checkpoint below
    started_with, started_batch_size = checkpoint_settings(ckpt_dir) if resume else (None, None)
    if started_with is not None and "precision" not in started_with:  # checkpoints from before the option
        started_with = {**started_with, "precision": resolve_precision("auto", device)}  # what they ran
    train_config = make_config(config, base=started_with)
    if batch_size is None:
        batch_size = BATCH_SIZE if started_batch_size is None else started_batch_size
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch", fix="use --device cpu")
    if train_config.binary_column and not train_config.network.binary_head:
        train_config.network.binary_head = True
    train_config.precision = resolve_precision(train_config.precision, device)
    log.info("training steps in %s", train_config.precision)

    # the network reads images, masks and the outcome only: a cohort without clinical columns trains as well
    manifest = read_manifest(manifest_path, column_map, require_mask=True, require_clinical=False)
    check_outcomes(manifest, endpoint)
    synthetic_demo = synthetic_demo or is_synthetic_cohort(manifest)
    entries = manifest.entries()
    grid_derivation = None
    if train_config.grid is None:
        step = max(1, len(entries) // GRID_SAMPLE)
        headers = [read_header(e.images[REFERENCE_SEQUENCE], patient_id=e.patient_id, role=REFERENCE_SEQUENCE)
                   for e in entries[::step][:GRID_SAMPLE]]
        grid_derivation = derive_grid(headers, train_config.network.downsampling,
                                      head_foot_room=train_config.head_foot_room).to_dict()
        train_config.grid = GridConfig.from_dict(grid_derivation["grid"])
        log.info("working grid from %d training images: %s voxels of %s mm", len(headers),
                 train_config.grid.size, train_config.grid.spacing)
    cases = _load_cases(entries, endpoint, train_config, work / "cache", progress, workers)
    if train_config.network.binary_head:
        values = _binary_values(manifest, [c.patient_id for c in cases], train_config.binary_column)
        for case in cases:
            case.binary = values[case.patient_id]
    train_idx, val_idx = split_patients([c.patient_id for c in cases], [c.event for c in cases], val_fraction, seed)
    train_cases = [cases[i] for i in train_idx]
    val_cases = [cases[i] for i in val_idx]
    if not val_cases:
        # epoch selection and the quality gate would judge the training patients: a network that memorised them,
        # even with shuffled labels, would pass
        raise InputError(f"no validation patient: --val-fraction {val_fraction:g} of {len(cases)} patients leaves "
                         "none to choose the epoch and check the contours on", path=manifest.source,
                         fix="use --val-fraction 0.2 (the default) or more patients")
    if not any(c.event for c in train_cases):
        raise InputError(f"no {endpoint} event among the training patients: the Cox loss cannot learn",
                         path=manifest.source, column=f"{endpoint}_event")
    fat_suppression = None
    if train_config.augment.fat_unsuppressed_prob is None:
        fat_suppression = fat_suppression_survey([c.image for c in train_cases])
        train_config.augment.fat_unsuppressed_prob = fat_suppression["augment_prob"]
        log.info("%d of %d training CET1W scans look fat-suppressed: fat augmentation probability %.2f",
                 fat_suppression["n"] - fat_suppression["n_unsuppressed"], fat_suppression["n"],
                 fat_suppression["augment_prob"])

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(int(seed))
        model = build_network(train_config.network, train_config.grid.voxel_ml).to(device)
        model = model.to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                      weight_decay=train_config.weight_decay)
        state = {"epoch": -1, "history": [], "best_epoch": None, "best_score": None,
                 "config": json.loads(json.dumps(train_config.to_dict())), "seed": int(seed), "epochs": int(epochs),
                 "batch_size": int(batch_size),
                 "train_ids": [c.patient_id for c in train_cases], "val_ids": [c.patient_id for c in val_cases],
                 "wall_s": 0.0, "fat_suppression": fat_suppression, "grid_derivation": grid_derivation}
        if resume:
            loaded = load_checkpoint(ckpt_dir, "latest", model, optimizer)
            if loaded is not None:
                if _epoch_settings(started_with) != _epoch_settings(state["config"]) \
                        or loaded.get("seed") != int(seed) \
                        or loaded.get("epochs") != int(epochs) \
                        or loaded.get("batch_size", batch_size) != int(batch_size):
                    raise InputError("cannot resume: the checkpoint was made with other settings "
                                     "(seed, epochs, batch size or configuration)", path=ckpt_dir,
                                     fix="resume with the original settings, or start without --resume")
                if loaded.get("train_ids", state["train_ids"]) != state["train_ids"] \
                        or loaded.get("val_ids", state["val_ids"]) != state["val_ids"]:
                    raise InputError("cannot resume: the manifest gives other training or validation patients than "
                                     "the checkpoint was trained on", path=ckpt_dir,
                                     fix="resume with the original manifest, or start without --resume")
                loaded.pop("param_groups", None)
                state = {"fat_suppression": {"source": "checkpoint",
                                             "augment_prob": train_config.augment.fat_unsuppressed_prob},
                         "grid_derivation": {"source": "checkpoint"},  # what an older version did not record
                         **loaded, "config": state["config"]}  # later checkpoints carry every option
        _train_epochs(model, optimizer, train_config, train_cases, val_cases, state, ckpt_dir, epochs=epochs,
                      batch_size=batch_size, device=device, seed=int(seed), progress=progress,
                      stop_after_epoch=stop_after_epoch, started=started)
        if state["epoch"] < epochs - 1:
            return ckpt_dir
        inference = inference_spec(train_config.grid)
        final, val_outputs = _load_final_weights(model, train_config, state, ckpt_dir, val_cases, device, inference)
        val_node_patients = sum(bool((c.label[0] == LABEL_NAMES["gtvn"]).any()) for c in val_cases)
        gate = segmentation_gate(state["history"], final["metrics"], position_prior_dice(train_cases, val_cases),
                                 train_config, val_node_patients)
        if not gate.passed:
            if not force:
                raise TrainingFailedError(gate.message, path=manifest.source)
            gate.forced = True
            log.warning("%s; bundle written anyway (--force)", gate.message)
        train_outputs = case_outputs(model, train_cases, device, inference)
        refit = refit_risk_head(model, train_cases, device, train_config.refit_penalties,
                                min_events=train_config.refit_min_events, seed=int(seed),
                                include_mlp=train_config.refit_include_mlp, outputs=train_outputs)
        if refit["refitted"]:  # the refit changes the head only: the validation grids need not pass again
            val_risks = head_risks(model, val_outputs)
            refit["val_c_index"] = safe_c_index([c.time for c in val_cases], [c.event for c in val_cases], val_risks)
            log.info("risk head refitted on %d training patients (ridge %g): train C %.3f, validation C %.3f",
                     refit["n"], refit["penalizer"], refit["train_c_index"], refit["val_c_index"])
        save_tensors(model.state_dict(), ckpt_dir / "final.safetensors", {"epoch": str(final["epoch"])})
        train_risks = head_risks(model, train_outputs)
        content = _bundle_content(train_config, state, final, endpoint, train_risks, synthetic_demo,
                                  gtvp_opening(train_config, cases), batch_size=batch_size,
                                  val_fraction=val_fraction, device=device)
        content["network"]["risk_head_refit"] = refit
        content["network"]["quality_gate"] = gate.to_dict()
        content["network"]["training_volumes_ml"] = training_volumes(train_cases, train_config.grid.voxel_ml,
                                                                      train_config.gtvn_min_ml)
        content["network"]["typicality"] = typicality_reference(
            [cross_correlations(c.image, train_config.grid.spacing) for c in train_cases + val_cases])
        for key in ("grid_derivation", "fat_suppression"):  # a resumed run's from its checkpoint
            content["network"]["training"][key] = state.get(key) or {"source": "configuration"}
        return bundle_io.write_bundle(out_dir, content,
                                      extra_files={"network.safetensors": ckpt_dir / "final.safetensors"})
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _load_final_weights(model, config: TrainConfig, state, ckpt_dir: Path, val_cases, device,
                        inference: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the weights that ship into ``model``; returns their epoch, kind and validation record, and the
    validation cases' outputs (:func:`case_outputs`).

    The record is measured again on whole validation grids, as ``segment`` runs them, whichever weights ship: the
    per-epoch record of a patched grid reads one patch centred on the contours, which cannot see a false tumour
    elsewhere in the head, and the quality gate compares the record with a whole-grid baseline.
    """
    if config.final_weights == "average" and state.get("average_n"):
        model.load_state_dict(load_average(ckpt_dir, "latest", state["epoch"]))
        first, last = int(state["average_first_epoch"]), int(state["epoch"])
        epoch, chosen = last, {"kind": "average", "averaged_epochs": [first, last]}
        which = f"weights averaged over epochs {first + 1}-{last + 1}"
    else:
        if config.final_weights == "average":
            log.warning("the checkpoints hold no weight average (made by an older version): the selected epoch "
                        "ships")
        epoch = int(load_checkpoint(ckpt_dir, "best", model)["epoch"])
        chosen, which = {"kind": "best"}, f"weights of epoch {epoch + 1}"
    outputs = case_outputs(model, val_cases, device, inference)
    metrics = evaluate(model, val_cases, device, outputs=outputs)
    log.info("%s: validation Dice GTVp %.3f GTVn %.3f C %.3f (whole grids)", which, metrics["dice_gtvp"],
             metrics["dice_gtvn"], metrics["c_index"])
    return {"epoch": epoch, **chosen, "metrics": {"epoch": epoch, **{f"val_{k}": v for k, v in metrics.items()}}}, \
        outputs


def _epoch_settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options that shape the epochs; the refit (``refit_*``), the choice of the final weights, the quality
    gate's floors (``min_*``) and the post-processing (``gtvp_opening_*``, ``gtvn_min_ml``, ``gtvn_max_elongation``)
    act after them and may change on resume."""
    return {k: v for k, v in dict(config or {}).items()
            if not k.startswith(("refit_", "min_", "gtvp_opening_"))
            and k not in ("final_weights", "gtvn_min_ml", "gtvn_max_elongation")}


def _train_epochs(model, optimizer, config: TrainConfig, train_cases, val_cases, state, ckpt_dir, *, epochs,
                  batch_size, device, seed, progress, stop_after_epoch, started) -> None:
    import torch
    from monai.losses import DiceCELoss

    weight = None if not config.ce_weights else torch.tensor(config.ce_weights, dtype=torch.float32, device=device)
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=weight,
                          include_background=config.dice_include_background)
    transforms = train_transforms(config.augment, spacing=config.grid.spacing)
    events = [c.event for c in train_cases]
    patch = config.grid.patch_size
    # on a patched grid every epoch is validated on one fixed patch per case, centred on its contours (cheap; the
    # whole grids are stitched once, for the weights that ship)
    val_views = ([_patch_view(c, centred_patch(c.label, patch)) for c in val_cases] if config.grid.patched
                 else val_cases)
    elapsed_before = float(state.get("wall_s", 0.0))
    average = load_average(ckpt_dir, "latest", state["epoch"]) if state.get("average_n") else None
    for epoch in range(state["epoch"] + 1, epochs):
        epoch_start = time.time()
        lr = learning_rate(config, epoch, epochs)
        outcome_weight = cox_weight_at(config, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(epoch_seed(seed, epoch, 1))
        transforms.set_random_state(seed=epoch_seed(seed, epoch, 2))
        batches = event_balanced_batches(events, batch_size, epoch_seed(seed, epoch, 0))
        patch_rng = np.random.default_rng(epoch_seed(seed, epoch, 3))
        model.train()
        totals = {"loss": 0.0, "seg": 0.0, "cox": 0.0}
        bar = batches
        if progress:
            from tqdm import tqdm

            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
        for batch in bar:
            # on a patched grid: where each sample's patch lies, and whether it holds the contours (the outcome
            # terms read only those: a patch of empty neck says nothing about the patient's risk)
            placed = [sample_patch(train_cases[i].label, patch, patch_rng) if config.grid.patched else (None, True)
                      for i in batch]
            pairs = [augment(transforms, train_cases[i], where) for i, (where, _) in zip(batch, placed)]
            on_contours = torch.tensor([anchored for _, anchored in placed], dtype=torch.bool, device=device)
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
            t = torch.tensor([train_cases[i].time for i in batch], dtype=torch.float32, device=device)
            e = torch.tensor([train_cases[i].event for i in batch], dtype=torch.bool, device=device)
            with autocast(device, config.precision):
                out = model(x)
            seg = seg_loss(out["seg_logits"].float(), y)
            cox = cox_loss(out["risk"].float()[on_contours], t[on_contours], e[on_contours])
            loss = seg + outcome_weight * cox
            if "binary_logit" in out:
                target = torch.tensor([train_cases[i].binary for i in batch], dtype=torch.float32, device=device)
                known = torch.isfinite(target) & on_contours
                if bool(known.any()):
                    # ramped as the Cox term is, but not scaled by it: with cox_weight 0 the head still learns
                    scale = config.binary_weight * outcome_ramp(config, epoch, epochs)
                    loss = loss + scale * torch.nn.functional.binary_cross_entropy_with_logits(
                        out["binary_logit"].float()[known], target[known])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            totals["loss"] += float(loss.detach()) / len(batches)
            totals["seg"] += float(seg.detach()) / len(batches)
            totals["cox"] += float(cox.detach()) / len(batches)
            if progress:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        metrics = evaluate(model, val_views, device)
        score = selection_score(metrics)
        record = {"epoch": epoch, "lr": lr, "cox_weight": outcome_weight,
                  **{f"train_{k}": v for k, v in totals.items()},
                  **{f"val_{k}": v for k, v in metrics.items()}, "val_score": score,
                  "seconds": round(time.time() - epoch_start, 2)}
        state["history"].append(record)
        state["epoch"] = epoch
        state["wall_s"] = elapsed_before + (time.time() - started)
        eligible = epoch >= min(epochs - 1, int(math.floor(epochs * config.select_after_fraction)))
        if eligible and (state["best_score"] is None or score > state["best_score"]):
            state["best_score"], state["best_epoch"] = score, epoch
            save_checkpoint(ckpt_dir, "best", model, None, {"epoch": epoch, "metrics": record})
        if eligible:
            count = int(state.get("average_n", 0))
            average = update_average(average, model, count)
            state["average_n"] = count + 1
            state.setdefault("average_first_epoch", epoch)
        save_checkpoint(ckpt_dir, "latest", model, optimizer, state, average=average)
        message = (f"epoch {epoch + 1}/{epochs} loss {totals['loss']:.3f} (seg {totals['seg']:.3f}, "
                   f"cox {totals['cox']:.3f}) val Dice GTVp {metrics['dice_gtvp']:.3f} GTVn "
                   f"{metrics['dice_gtvn']:.3f} C {metrics['c_index']:.3f} [{record['seconds']:.0f} s]")
        log.info(message)
        if progress:
            from tqdm import tqdm

            tqdm.write(message)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return


def validation_record(val_ids: Sequence[str]) -> dict[str, Any]:
    """Which patients validated the network, without their IDs: a bundle travels, identifiers must not.

    The hashes are of each ID's :func:`~NPCPrognosisLib.io.patient_ids.id_key`, as the out-of-fold risk heads
    record their patients (:func:`NPCPrognosisLib.deep.risk_head.refit_risk_head`), so a validation patient
    re-exported as 'p7' or 'P007' (for 'P7') is still recognised; look a patient up with
    :func:`~NPCPrognosisLib.io.patient_ids.recorded_hash` and the record's ``id_hash``, which also matches networks
    written before (hashes of the ID as written, matched as written only).

    Parameters
    ----------
    val_ids : sequence of str
        The validation patients' IDs as the manifest spells them.

    Returns
    -------
    dict
        ``val_id_hashes`` (one salted hash per patient, in order), ``id_salt`` (random, this bundle's own) and
        ``id_hash`` (:data:`~NPCPrognosisLib.io.patient_ids.ID_KEY_HASH_METHOD`).
    """
    from NPCPrognosisLib.io.patient_ids import ID_KEY_HASH_METHOD, hash_id, id_key, new_id_salt

    salt = new_id_salt()
    return {"val_id_hashes": [hash_id(id_key(p), salt) for p in val_ids], "id_salt": salt,
            "id_hash": ID_KEY_HASH_METHOD}


def _bundle_content(config: TrainConfig, state, final, endpoint, train_risks, synthetic_demo, opening,
                    **training) -> dict:
    finite = train_risks[np.isfinite(train_risks)]
    validation = validation_record(state["val_ids"])
    network = {
        "architecture": {"name": "MultiTaskSegResNet", "backbone": "monai.networks.nets.SegResNet",
                         **config.network.to_dict()},
        "grid": config.grid.to_dict(),
        "preprocess": config.preprocess.to_dict(),
        "labels": {"gtvp": LABEL_NAMES["gtvp"], "gtvn": LABEL_NAMES["gtvn"]},
        "sequences": list(SEQUENCES),
        "endpoint": endpoint,
        "inference": inference_spec(config.grid),
        "postprocessing": {"gtvp_opening_mm": opening["radius_mm"], "gtvp_largest_component": True,
                           "gtvn_min_ml": config.gtvn_min_ml, "gtvn_max_elongation": config.gtvn_max_elongation,
                           "gtvp_opening_derivation": opening},
        "score_normalisation": {"mean": float(finite.mean()) if finite.size else 0.0,
                                "sd": float(finite.std()) if finite.size > 1 else 1.0,
                                "source": "training patients, no augmentation"},
        "best_epoch": final["epoch"],
        "best_metrics": final["metrics"],
        "final_weights": {k: v for k, v in final.items() if k != "metrics"},
        "history": state["history"],
        "training": {"config": config.to_dict(), "seed": state["seed"], "epochs": state["epochs"],
                     "n_train": len(state["train_ids"]), "n_val": len(state["val_ids"]),
                     **validation, "wall_s": round(float(state.get("wall_s", 0.0)), 1),
                     **training},
        "weights": "network.safetensors",
    }
    content = {"kind": "network", "synthetic_demo": bool(synthetic_demo), "network": network}
    if synthetic_demo:
        content["notice"] = SYNTHETIC_NOTICE
    return content


def add_typicality(bundle_dir: str | Path, manifest_path: str | Path, *, workers: int = 2,
                   work_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Record the typicality reference (:mod:`NPCPrognosisLib.deep.typicality`) in a network bundle trained
    before ``train-net`` recorded it, from the manifest it was trained on.

    The patients are prepared exactly as ``train-net`` prepares them (:func:`load_case` on the bundle's grid and
    preprocessing), so the record is the one the run would have written. The weights are not touched (their
    checksum, to which extracted deep features are tied, is unchanged).

    Parameters
    ----------
    bundle_dir : str or Path
        The network bundle, rewritten in place (checksums renewed).
    manifest_path : str or Path
        The manifest ``train-net`` was given (every training and validation patient).
    workers : int, default 2
        Patients prepared at a time.
    work_dir : str or Path, optional
        Where the preprocessing cache goes (default: a temporary folder).
    progress : bool, default True
        Progress bar.

    Returns
    -------
    reference : dict
        The record written (``network.typicality``).
    """
    import tempfile

    from NPCPrognosisLib.deep.segmentation import load_network
    from NPCPrognosisLib.io import bundle as bundle_io
    from NPCPrognosisLib.io.manifest import read_manifest

    bundle_dir = Path(bundle_dir)
    model = load_network(bundle_dir, device="cpu")
    training = model.content["network"]["training"]
    manifest = read_manifest(manifest_path, require_mask=True, require_clinical=False)
    n_expected = int(training["n_train"]) + int(training["n_val"])
    if len(manifest.entries()) != n_expected:
        raise InputError(f"the manifest gives {len(manifest.entries())} patients; this network trained and "
                         f"validated on {n_expected}", path=manifest.source,
                         fix="give the manifest the network was trained on")
    config = make_config(training["config"])
    config.grid, config.preprocess = model.grid, model.preprocess  # what the shipped network runs on
    if work_dir is not None:  # a hard-killed run's unfinished cache files
        remove_stale_writes(work_dir, recursive=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = _load_cases(manifest.entries(), model.endpoint, config, Path(work_dir or tmp), progress, workers)
    reference = typicality_reference([cross_correlations(c.image, model.grid.spacing) for c in cases])
    content = json.loads((bundle_dir / bundle_io.MANIFEST_FILE).read_text(encoding="utf-8"))
    content["network"]["typicality"] = reference
    weights = content["network"].get("weights", "network.safetensors")
    with tempfile.TemporaryDirectory() as tmp:  # the weights are copied out first: the folder is replaced
        kept = Path(tmp) / weights
        shutil.copyfile(bundle_dir / weights, kept)
        bundle_io.write_bundle(bundle_dir, content, extra_files={weights: kept})
    return reference
