"""Multimodal fusion (``train --fusion mmoe``): the MMoE over radiomics, deep, clinical and extra blocks.

Each modality reaches the fusion in a compact, honest form: radiomics as the signatures' scores (the survival
Rad-score and each binary endpoint's radiomics log-odds), *cross-fitted* on the training patients so the fusion
never learns to trust a score that saw the patient's outcome; the network's deep score; the encoded clinical
factors; each extra table's columns (e.g. pathology slide features). Inputs are z-scored with training means;
a patient without a block (no slide) has it masked.

The width and the number of epochs are chosen by inner cross-validation on the training split; the out-of-fold
outputs of that choice then calibrate the final ensemble: a one-factor Cox model on the out-of-fold survival
output (so ``mmoe`` is a model of the bundle like the nomogram, with survival at 1/3/5 years and a risk cut-off)
and a logistic recalibration of each binary output. What the fusion learned is judged on nested out-of-fold
outputs (the choice repeated without each fold, :func:`~NPCPrognosisLib.deep.mmoe.cross_validate`): the same
held-out scores that pick one of ~120 schedules cannot also say how good the winner is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.classification.signature import fit_rad_signature, rad_score
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import CLINICAL_COVARIATES
from NPCPrognosisLib.io.extra_features import ExtraBlock, check_training_rows
from NPCPrognosisLib.pipeline.binary import RAD_SCORE
from NPCPrognosisLib.radiomics.features_table import DEEP_SCORE, feature_matrix
from NPCPrognosisLib.survival.splits import event_folds

log = logging.getLogger(__name__)

#: Name of the fusion model among the bundle's models, and of its one factor.
MMOE = "mmoe"
MMOE_SCORE = "mmoe_score"
#: Fusion methods ``train --fusion`` offers ("none": the Cox nomogram alone).
FUSIONS = ("none", MMOE)
#: Architectures tried by the inner cross-validation (expert width x weight decay), and its folds.
CANDIDATES: tuple[dict[str, float], ...] = tuple({"width": w, "weight_decay": d} for w in (4, 8) for d in (0.1, 1.0))
INNER_FOLDS = 5
#: Longest schedule tried (the CV picks the epoch count, every 10 epochs).
MAX_EPOCHS = 300
WEIGHTS_FILE = "fusion/mmoe.safetensors"
#: Members of the ensemble in the inner cross-validation and in the final model.
MEMBERS = 3
#: A task's gate has collapsed onto one modality when that expert's mean gate weight over the patients with every
#: block is above this: the other experts then carry under 5% of the mixture between them, so the "fusion" is a
#: one-modality model and the other modalities' inputs hardly reach its output.
COLLAPSED_GATE = 0.95
#: A task's gate routes patients only when some expert's weight differs by at least this between the 5th and 95th
#: percentile of the patients with every block. Below it every patient gets the same mixture to within 5 points (the
#: reports print whole percents), so the per-patient gate-weight lines describe the model, not the patient:
#: seen when the inner cross-validation stops at 10 epochs, where the gates have barely left their even start
#: (spread 0.02-0.03 across 160 patients). Percentiles, not the range: one odd patient is not routing.
ROUTING_SPREAD = 0.05


@dataclass
class FusionPrediction:
    """Per patient: the survival output (before the Cox calibration), each binary task's calibrated
    probability, the gate weights and each modality's additive part of the output per task (patients x blocks:
    :func:`~NPCPrognosisLib.deep.mmoe.expert_contributions`) and which blocks each patient had."""

    score: np.ndarray
    probabilities: dict[str, np.ndarray]
    gates: dict[str, np.ndarray]
    present: np.ndarray
    blocks: list[str]
    contributions: dict[str, np.ndarray]

    def gate_weights(self, row: int) -> dict[str, dict[str, float]]:
        return {task: {name: float(w) for name, w in zip(self.blocks, weights[row])}
                for task, weights in self.gates.items()}

    def missing(self, row: int) -> list[str]:
        return [name for name, has in zip(self.blocks, self.present[row]) if not has]


def gate_findings(gates: Mapping[str, np.ndarray], present: np.ndarray, blocks: Sequence[str]
                  ) -> dict[str, dict[str, Any]]:
    """Per task, whether the fusion's gates collapsed onto one modality or route every patient the same way.

    Only patients with every block are looked at: a missing block's weight is 0 by construction and the others are
    renormalised, which varies the mixture without the gate having learned anything.

    Parameters
    ----------
    gates : mapping of str to ndarray
        Each task's gate weights (patients x blocks), as :meth:`FusionModel.predict` gives them.
    present : ndarray of bool
        Which blocks each patient had (patients x blocks).
    blocks : sequence of str
        The blocks' names, in column order.

    Returns
    -------
    findings : dict
        Per task: ``patients`` (with every block), ``mean`` and ``spread_p5_p95`` of each block's weight,
        ``collapsed_onto`` (the block whose mean weight is above :data:`COLLAPSED_GATE`, or None) and
        ``no_routing`` (True when no block's spread reaches :data:`ROUTING_SPREAD`); ``patients`` 0 and nothing
        else when fewer than 2 patients have every block (nothing to compare).
    """
    complete = np.asarray(present, bool).all(axis=1)
    findings = {}
    for task, weights in gates.items():
        full = np.asarray(weights, float)[complete]
        if len(full) < 2:
            findings[task] = {"patients": int(len(full))}
            continue
        mean = full.mean(axis=0)
        low, high = np.percentile(full, [5, 95], axis=0)
        spread = high - low
        top = int(np.argmax(mean))
        findings[task] = {"patients": int(len(full)), "mean": dict(zip(blocks, mean.tolist())),
                          "spread_p5_p95": dict(zip(blocks, spread.tolist())),
                          "collapsed_onto": blocks[top] if mean[top] > COLLAPSED_GATE else None,
                          "no_routing": bool(spread.max() < ROUTING_SPREAD)}
    return findings


def gate_warnings(findings: Mapping[str, Mapping[str, Any]], patients: str = "training patients") -> list[str]:
    """The warnings of :func:`gate_findings`, one per task and finding (none when the gates fuse and route)."""
    found = []
    for task, block in findings.items():
        name = task.replace("_", " ")
        if block.get("collapsed_onto"):
            onto = block["collapsed_onto"]
            found.append(f"the fusion's {name} gate collapsed onto the {onto} modality (mean weight "
                         f"{block['mean'][onto]:.0%} over {block['patients']} {patients} with every modality): the "
                         f"other modalities hardly reach its {name} output, so it is a {onto}-only model")
        if block.get("no_routing"):
            found.append(f"the fusion's {name} gate gives every patient the same mixture of modalities (each weight "
                         f"varies by less than {ROUTING_SPREAD:.0%} between the 5th and 95th percentile of "
                         f"{block['patients']} {patients}): its per-patient modality weights describe the model, not "
                         "the patient")
    return found


def contribution_shares(contributions: Mapping[str, np.ndarray], present: np.ndarray, blocks: Sequence[str]
                        ) -> dict[str, dict[str, float]]:
    """Per task, the share of the variance of the fused output that each modality's contribution carries.

    A task's output is its head's bias plus each expert's contribution
    (:func:`~NPCPrognosisLib.deep.mmoe.expert_contributions`), so its variance over the patients splits exactly into
    Cov(contribution, output) / Var(output) per modality: the shares sum to 1, and a negative one is a modality whose
    part works against the others'. Unlike a gate weight it says how much each modality moves the output between
    patients. Only patients with every block count, as for :func:`gate_findings`.

    Parameters
    ----------
    contributions : mapping of str to ndarray
        Each task's contributions (patients x blocks).
    present : ndarray of bool
        Which blocks each patient had (patients x blocks).
    blocks : sequence of str
        The blocks' names, in column order.

    Returns
    -------
    shares : dict
        Per task, each block's share; a task is left out when fewer than 2 patients have every block or its
        output is the same for all of them.
    """
    complete = np.asarray(present, bool).all(axis=1)
    shares = {}
    for task, parts in contributions.items():
        full = np.asarray(parts, float)[complete]
        output = full.sum(axis=1)
        if len(full) < 2 or not output.var() > 0:
            continue
        covariance = ((full - full.mean(axis=0)) * (output - output.mean())[:, None]).mean(axis=0)
        shares[task] = dict(zip(blocks, (covariance / output.var()).tolist()))
    return shares


def raw_blocks(factors: pd.DataFrame, binary_scores: Mapping[str, np.ndarray], extras: Mapping[str, ExtraBlock],
               patient_ids: Sequence[str], extra_columns: Mapping[str, Sequence[str] | None]
               ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Every block's unscaled values (NaN where missing) and column names, in the model's block order.

    ``extra_columns`` names the extra blocks and the columns each must have (None: all of the table's); a block
    not given at all is missing for every patient.
    """
    radiomics = [factors["rad_score"].to_numpy(float), *(np.asarray(binary_scores[k], float) for k in binary_scores)]
    blocks = {"radiomics": (np.column_stack(radiomics),
                            ["rad_score", *(f"{RAD_SCORE}_{k}" for k in binary_scores)])}
    if DEEP_SCORE in factors.columns:
        blocks["deep"] = (factors[[DEEP_SCORE]].to_numpy(float), [DEEP_SCORE])
    blocks["clinical"] = (factors[list(CLINICAL_COVARIATES)].to_numpy(float), list(CLINICAL_COVARIATES))
    ids = [str(p) for p in patient_ids]
    for name, wanted in extra_columns.items():
        if name not in extras:
            blocks[name] = (np.full((len(ids), len(wanted or ())), np.nan), list(wanted or ()))
            continue
        block = extras[name]
        columns = list(wanted or block.columns)
        lacking = [c for c in columns if c not in block.columns]
        if lacking:
            raise InputError(f"the {name} table lacks column(s) {lacking[:3]} the fusion model was trained on",
                             path=block.source, column=lacking[0],
                             fix=f"give the {name} table with its training columns")
        blocks[name] = (block.values.reindex(ids)[columns].to_numpy(float), columns)
    return blocks


def _present(values: np.ndarray) -> np.ndarray:
    """Patients who have a block: at least one value (an extra table without their row has none)."""
    return ~np.isnan(values).all(axis=1) if values.shape[1] else np.zeros(len(values), bool)


def _standardise(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (values - mean) / scale


class FusionModel:
    """A fitted fusion block of a bundle with its ensemble, ready to score patients."""

    def __init__(self, document: Mapping[str, Any], members: Mapping[str, list]) -> None:
        self.document = document
        self.members = members

    @property
    def blocks(self) -> list[str]:
        return list(self.document["blocks"])

    @property
    def extra_blocks(self) -> list[str]:
        return [n for n, b in self.document["blocks"].items() if b["kind"] == "extra table"]

    @property
    def binary_tasks(self) -> list[str]:
        return [t for t in self.document["config"]["tasks"] if t != "survival"]

    def data(self, factors: pd.DataFrame, binary_scores: Mapping[str, np.ndarray],
             extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str]):
        """The model's inputs for aligned patients, scaled as in training."""
        from NPCPrognosisLib.deep.mmoe import FusionData

        spec = self.document["blocks"]
        if len(patient_ids) > 1:  # a cohort: a given table that matches none of it is IDs written another way
            check_training_rows({n: extras[n] for n in self.extra_blocks if n in extras}, patient_ids,
                                patients="evaluated patient")
        raw = raw_blocks(factors, binary_scores, extras, patient_ids,
                         {name: spec[name]["columns"] for name in self.extra_blocks})
        blocks, present = {}, []
        for name, block in spec.items():
            values = raw[name][0]
            z = _standardise(values, np.asarray(block["mean"]), np.asarray(block["scale"]))
            blocks[name] = np.where(np.isnan(z), 0.0, z)
            present.append(_present(values))
        return FusionData(blocks=blocks, present=np.column_stack(present))

    def predict(self, factors: pd.DataFrame, binary_scores: Mapping[str, np.ndarray],
                extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str]) -> FusionPrediction:
        """Survival output, calibrated probabilities, gate weights and contributions for aligned patients."""
        from scipy.special import expit

        from NPCPrognosisLib.deep.mmoe import SURVIVAL, expert_contributions, predict_members

        data = self.data(factors, binary_scores, extras, patient_ids)
        outputs, gates = predict_members(self.members, data)
        probabilities = {}
        for task in self.binary_tasks:
            calibration = self.document["binary_calibration"][task]
            probabilities[task] = expit(calibration["intercept"] + calibration["slope"] * outputs[task])
        # centred as the out-of-fold outputs its Cox calibration saw were (bundles before it have no offset)
        score = outputs[SURVIVAL] - float(self.document.get("survival_offset", 0.0))
        return FusionPrediction(score=score, probabilities=probabilities, gates=gates,
                                present=data.present, blocks=self.blocks,
                                contributions=expert_contributions(self.members, data))


def load_fusion(document: Mapping[str, Any], bundle_dir: str | Path) -> FusionModel:
    """The fusion block of a bundle document with its weights (safetensors, verified by the bundle's checksums)."""
    from NPCPrognosisLib.deep.mmoe import MMoEConfig, load_members

    config = MMoEConfig.from_dict(document["config"])
    return FusionModel(document, load_members(Path(bundle_dir) / document["weights"], config))


def binary_scores_for(binary_blocks: Mapping[str, Any], tasks: Sequence[str], features: pd.DataFrame
                      ) -> dict[str, np.ndarray]:
    """Each binary task's radiomics log-odds from the bundle's own binary signature."""
    return {task: rad_score(binary_blocks[task]["signature"], features) for task in tasks}


def cross_fitted_binary_score(features: pd.DataFrame, y: np.ndarray, seed: int, folds: int = INNER_FOLDS
                              ) -> np.ndarray:
    """Out-of-fold radiomics log-odds: each patient scored by a signature fitted without them.

    Each fold's scores are centred on their fold mean and then all moved to the full signature's training mean:
    a fold's intercept mirrors its training prevalence, which is the complement of the held-out fold's, and left
    in, that shift alone would make a weak score rank the patients backwards. Patients with an unknown label are
    scored by the signature of all known patients.
    """
    from sklearn.model_selection import StratifiedKFold

    X = feature_matrix(features)
    known = ~np.isnan(y)
    yk = y[known].astype(int)
    known_rows = np.flatnonzero(known)
    full = fit_rad_signature(X.iloc[known_rows], yk, seed)
    score = rad_score(full, X)
    centre = float(score[known].mean())
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(yk)), yk):
        signature = fit_rad_signature(X.iloc[known_rows[tr]], yk[tr], seed)
        held = rad_score(signature, X.iloc[known_rows[va]])
        score[known_rows[va]] = held - held.mean() + centre
    return score


def calibrate_survival(oof_output: np.ndarray, time: np.ndarray, event: np.ndarray) -> Any:
    """The bundle's ``mmoe`` model: a one-factor Cox model on the fusion's out-of-fold survival output.

    Its weight is kept non-negative, as for every out-of-fold score of the nomogram
    (:func:`~NPCPrognosisLib.survival.nomogram.fit_nomogram` ``scores``): an output that ranked the training patients
    the wrong way round out of fold has learned nothing, and a negative weight would turn it round and report its
    reversed ranking as a C-index above 0.5. It gets weight 0 instead, so every patient has the same risk and the
    cut-off record says ``no_groups`` (:func:`~NPCPrognosisLib.pipeline.predict.unproven_nomogram`).

    Parameters
    ----------
    oof_output : ndarray
        The survival task's out-of-fold output for the training patients.
    time, event : ndarray
        Their survival endpoint.

    Returns
    -------
    nomogram : Nomogram
        The calibration, named :data:`MMOE` with the one factor :data:`MMOE_SCORE`.
    """
    from NPCPrognosisLib.survival.nomogram import fit_nomogram

    return fit_nomogram(MMOE, pd.DataFrame({MMOE_SCORE: np.asarray(oof_output, float)}), [MMOE_SCORE], time, event,
                        scores=[MMOE_SCORE])


def fit_fusion(factors: pd.DataFrame, features: pd.DataFrame, labels: Mapping[str, np.ndarray],
               extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str], time: np.ndarray, event: np.ndarray,
               *, seed: int = 0, candidates: Sequence[Mapping[str, Any]] = CANDIDATES, max_epochs: int = MAX_EPOCHS,
               members: int = MEMBERS, options: Mapping[str, Any] | None = None
               ) -> tuple[dict[str, Any], FusionModel, Any, np.ndarray, np.ndarray]:
    """Fit the MMoE on the training patients.

    Parameters
    ----------
    factors : pandas.DataFrame
        Training factors as the Cox models saw them (encoded clinical covariates, the cross-fitted
        ``rad_score``, ``deep_score`` when present).
    features : pandas.DataFrame
        Their radiomics (for the binary tasks' cross-fitted radiomics log-odds).
    labels : mapping of str to array
        Each binary task's 0/1 labels (NaN unknown); empty for a survival-only fusion.
    extras : mapping of str to ExtraBlock
        Extra modality tables (``--extra-features``).
    patient_ids : sequence of str
        The training patients, row-aligned with ``factors``.
    time, event : arrays
        The survival endpoint.
    options : mapping, optional
        Further :class:`~NPCPrognosisLib.deep.mmoe.MMoEConfig` fields (learning rate, dropout, weight decay).

    Returns
    -------
    document : dict
        The bundle's ``fusion`` block (configuration, input scaling, CV report, calibration, and ``gates``: the
        final ensemble's :func:`gate_findings` on the training patients).
    model : FusionModel
        The final ensemble.
    nomogram : Nomogram
        The one-factor Cox model on the out-of-fold survival output (the bundle's ``mmoe`` model).
    oof_risk : ndarray
        That model's risk for the training patients computed from the chosen schedule's out-of-fold outputs (the
        risk-group cut-off: on the scale of the final ensemble, which has that schedule).
    nested_risk : ndarray
        The same model's risk from the nested out-of-fold outputs (each fold's under the choice made without it):
        the honest training metrics, which decide whether the fusion learned anything.
    """
    from scipy.special import expit

    from NPCPrognosisLib.classification.metrics import recalibration, youden_threshold
    from NPCPrognosisLib.deep.mmoe import (
        SURVIVAL,
        FusionData,
        MMoEConfig,
        cross_validate,
        expert_contributions,
        fit_ensemble,
        predict_members,
    )

    tasks = [SURVIVAL, *labels]
    binary_scores = {task: cross_fitted_binary_score(features, np.asarray(y, float), seed)
                     for task, y in labels.items()}
    raw = raw_blocks(factors, binary_scores, extras, patient_ids, {name: None for name in extras})
    blocks, present, spec = {}, [], {}
    for name, (values, columns) in raw.items():
        has = _present(values)
        if has.sum() < 10:
            raise InputError(f"only {int(has.sum())} training patient(s) have the {name} block",
                             column="--extra-features", fix=f"give {name} features for more training patients")
        mean = np.nanmean(values[has], axis=0)
        scale = np.nanstd(values[has], axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean)
        scale = np.where(~(scale > 0), 1.0, scale)
        z = _standardise(values, mean, scale)
        blocks[name] = np.where(np.isnan(z), 0.0, z)
        present.append(has)
        spec[name] = {"kind": "extra table" if name in extras else "computed", "columns": columns,
                      "mean": mean.tolist(), "scale": scale.tolist(), "training_share_present": float(has.mean())}
    data = FusionData(blocks=blocks, present=np.column_stack(present), time=np.asarray(time, float),
                      event=np.asarray(event, bool), labels={k: np.asarray(v, float) for k, v in labels.items()})
    base = MMoEConfig(blocks={name: int(b.shape[1]) for name, b in blocks.items()}, tasks=tasks, epochs=max_epochs,
                      members=members, **(options or {}))
    fold = event_folds(event, INNER_FOLDS, seed + 7919)
    report = cross_validate(data, base, candidates, [fold == k for k in range(INNER_FOLDS)], seed)
    config = MMoEConfig(**{**base.to_dict(), **report["chosen"], "task_epochs": report["task_epochs"],
                           "epochs": max(report["task_epochs"].values())})
    ensemble = fit_ensemble(data, config, seed)
    oof = report.pop("oof")
    nested = report.pop("nested")
    nested_oof = nested.pop("oof")
    nomogram = calibrate_survival(oof[SURVIVAL], time, event)
    training_outputs, training_gates = predict_members(ensemble, data)
    gates = gate_findings(training_gates, data.present, list(blocks))
    for warning in gate_warnings(gates):
        log.warning("fusion model: %s", warning)
    calibration, thresholds = {}, {}
    for task, y in data.labels.items():
        known = ~np.isnan(y)
        honest = nested["per_task"][task]
        calibration[task] = recalibration(y[known], oof[task][known], ranks=honest > 0.5,
                                          model="the fusion, for this task,",
                                          evidence=f"nested cross-validated AUC {honest:.3f}, ")
        if not calibration[task]["validated"]:
            log.warning("fusion model: %s", calibration[task]["note"])
        probability = expit(calibration[task]["intercept"] + calibration[task]["slope"] * oof[task][known])
        thresholds[task] = youden_threshold(y[known].astype(int), probability)
    document = {
        "method": "MMoE (multi-gate mixture of experts): one expert per modality block, one gate per task",
        "config": config.to_dict(), "blocks": spec, "weights": WEIGHTS_FILE,
        "cv": {"folds": INNER_FOLDS, **report,
               "nested": {**nested, "note": "each fold scored under the candidate and epochs chosen on the other "
                                            "folds (per_task above is optimistic: it picked the choice)"}},
        "binary_calibration": calibration, "thresholds": thresholds, "seed": int(seed),
        # the final ensemble's mean survival output on the training patients, taken off every score: the Cox loss
        # ignores a shift, so the ensemble's output carries an offset of its own (from its initialisation), while
        # the out-of-fold outputs its calibration (and baseline survival) was fitted on are centred the same way
        "survival_offset": float(training_outputs[SURVIVAL].mean()),
        # the final ensemble's gates on the training patients (gate_findings): collapsed or not routing
        "gates": gates,
        # what each modality moves: its share of the variance of each task's output over the training patients
        "contributions": contribution_shares(expert_contributions(ensemble, data), data.present, list(blocks)),
        "inputs": "radiomics: cross-fitted Rad-score and binary radiomics log-odds in training (the full "
                  "signatures for new patients); clinical: encoded covariates; extra tables as given; all "
                  "z-scored with training means and SDs, a missing block masked in every gate",
        "calibration": "Cox model on the out-of-fold survival output (model 'mmoe'; its weight kept "
                       "non-negative: a backwards output gets none); logistic recalibration of "
                       "each out-of-fold binary output",
    }
    return (document, FusionModel(document, ensemble), nomogram,
            nomogram.risk(pd.DataFrame({MMOE_SCORE: oof[SURVIVAL]})),
            nomogram.risk(pd.DataFrame({MMOE_SCORE: nested_oof[SURVIVAL]})))
