"""Model selection by cross-validation inside the training split: which features, which penalty, which model.

On 160 patients and ten thousand features, habits (every filter, LASSO, all clinical factors in the nomogram)
move the held-out C by several hundredths either way; the choice has to be made by the data, and only by the
training patients. Two steps share one set of event-stratified folds, so candidates are compared on the very
same patients (a paired comparison):

1. the radiomics configuration (image types, ROIs, robustness threshold, LASSO vs elastic net) by the
   cross-validated C of the Rad-score alone (each fold refits filters, penalty path and coefficients); then, on
   the winner, the univariate filter's threshold, stability selection and (with centres) ComBat harmonisation;
2. the nomogram's design (which of the Rad-score, deep score, clinical factors and log tumour volumes it combines,
   T/N ordinal or categorical) by the cross-validated C of each Cox model, fitted in each fold on cross-fitted
   Rad-scores as the final one is. The combination of every block is stacked
   (:func:`NPCPrognosisLib.survival.nomogram.fit_nomogram`): its block weights, fitted on out-of-fold scores, already
   decide how much each block counts, as a super learner's do (van der Laan et al. 2007). It is the nomogram unless a
   simpler design validates better by more than the standard error of their paired per-fold difference; the widest
   such design (most blocks; among equals, the best-validating) replaces it. Without that margin the choice followed
   the noise of five folds: on the three family-B cohorts of ``bench/bench_generalise.py`` the Rad-score alone
   out-validated the stacked combination inside two training splits by 0.03, and did worse than it on all three
   held-out halves. The widest beater rather than the best one for the same reason: a beater shows that some block
   hurt the stacked fit, not that every other block did, and the best of several noisy beaters is the luckiest
   (automatic-contour cohort, seed 3: the Rad-score alone beat the combination by 0.036 and Rad-score + clinical
   factors by 0.033 inside the training split; held out, 0.652 against 0.700).

The winning configuration's cross-validated C is the best of several, so it is mildly optimistic; the bundle
also records the optimism-corrected training C (``train``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import estimable_codings
from NPCPrognosisLib.radiomics.features_table import (
    DEEP_SCORE,
    VOLUME_ROIS,
    feature_matrix,
    is_deep_feature,
    tumour_volumes,
)
from NPCPrognosisLib.radiomics.signature import (
    RadiomicsSignature,
    SignatureSettings,
    cross_fitted_rad_score,
    fit_signature,
)
from NPCPrognosisLib.survival.splits import event_folds, paired_gain

log = logging.getLogger(__name__)

#: Folds of the selection (the same folds for every candidate).
SELECTION_FOLDS = 5
#: Below this many training events the folds are too thin to rank candidates: the defaults are kept.
MIN_EVENTS_FOR_SELECTION = 25
#: Robustness thresholds tried when ICCs were measured (0.75 and 0.9: "good" and "excellent", Koo & Li 2016).
ICC_THRESHOLDS = (None, 0.75, 0.9)
#: Cross-validated C differences below this are ties, resolved towards the simpler candidate.
TIE = 0.002
#: Univariate filter thresholds tried on the chosen configuration besides its own (p < 0.05).
UNIVARIATE_THRESHOLDS = (0.01, 0.2)
#: Selection share of the stability-selection variant tried on the chosen configuration (Meinshausen & Buehlmann
#: recommend 0.6-0.9; the lower end keeps weaker but real features on cohorts of a few hundred).
STABILITY_SHARE = 0.6


@dataclass
class Selection:
    """What the cross-validation chose, and the table it chose from (recorded in the bundle)."""

    settings: SignatureSettings
    clinical_coding: str
    nomogram: list[str]
    #: Radiomics harmonised across centres by ComBat (only tried when the manifest names two or more centres).
    harmonise: bool = False
    radiomics_table: list[dict[str, Any]] = field(default_factory=list)
    design_table: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"radiomics": self.settings.describe(), "harmonise": self.harmonise,
                "clinical_coding": self.clinical_coding,
                "nomogram_factors": self.nomogram, "folds": SELECTION_FOLDS,
                "radiomics_candidates": self.radiomics_table, "designs": self.design_table, "note": self.note}


def default_selection(settings: SignatureSettings, has_deep: bool, note: str, clinical: list[str]) -> Selection:
    """No selection: the given radiomics settings, ordinal stages (``clinical``: the columns that vary) and every
    factor in the nomogram."""
    design = [*([DEEP_SCORE] if has_deep else []), "rad_score", *clinical]
    return Selection(settings=settings, clinical_coding="ordinal", nomogram=design, note=note)


def radiomics_candidates(base: SignatureSettings, robustness_measured: bool) -> list[SignatureSettings]:
    """The configurations compared: image types x ROIs x penalty x robustness threshold (the base first)."""
    thresholds = ICC_THRESHOLDS if robustness_measured else (None,)
    candidates = []
    for image_types in (None, ("original",)):
        for rois in (None, ("gtvp", "gtv")):
            for l1_ratio in (1.0, 0.5):
                for min_icc in thresholds:
                    candidates.append(replace(base, image_types=image_types, rois=rois, l1_ratio=l1_ratio,
                                              min_icc=min_icc))
    return candidates


def _fold_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    from NPCPrognosisLib.survival.metrics import harrell_c

    try:
        return harrell_c(time, event, risk)
    except (InputError, ValueError):
        return float("nan")


def _fold_tables(table: pd.DataFrame, held: np.ndarray,
                 centres: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A fold's training and held-out rows; with ``centres``, harmonised by ComBat fitted on the fold's training
    rows only (as the final model is fitted on the training split only)."""
    train, test = table[~held].reset_index(drop=True), table[held].reset_index(drop=True)
    if centres is None:
        return train, test
    from NPCPrognosisLib.radiomics.harmonization import fit_combat

    labels = np.asarray(centres, dtype=object)
    model = fit_combat(feature_matrix(train), labels[~held])
    return model.apply(train, labels[~held]), model.apply(test, labels[held])


def _fold_signature(table: pd.DataFrame, time: np.ndarray, event: np.ndarray, held: np.ndarray,
                    settings: SignatureSettings, icc: pd.Series | None,
                    centres: Sequence[str] | None) -> tuple[RadiomicsSignature, pd.DataFrame, pd.DataFrame]:
    """A fold's Rad-score fitted on its training rows, with those rows and the held-out ones (harmonised per fold
    when ``centres`` are given). Raises what ``fit_signature`` raises."""
    train, test = _fold_tables(table, held, centres)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = fit_signature(feature_matrix(train), time[~held], event[~held], settings, icc)
    return signature, train, test


def _cv_signature(matrix: pd.DataFrame, time: np.ndarray, event: np.ndarray, fold: np.ndarray,
                  settings: SignatureSettings, icc: pd.Series | None,
                  centres: Sequence[str] | None = None) -> list[float]:
    """Per-fold held-out C of one radiomics configuration, harmonised per fold when ``centres`` are given
    (module-level for process pools)."""
    scores = []
    for k in np.unique(fold):
        held = fold == k
        try:
            signature, _, test = _fold_signature(matrix, time, event, held, settings, icc, centres)
        except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError):
            scores.append(float("nan"))
            continue
        scores.append(_fold_c(time[held], event[held], signature.rad_score(test)))
    return scores


def _summary(name: str, scores: Sequence[float], factors: int) -> dict[str, Any]:
    values = np.asarray(scores, float)
    ok = values[~np.isnan(values)]
    mean = float(ok.mean()) if ok.size else float("nan")
    se = float(ok.std(ddof=1) / np.sqrt(ok.size)) if ok.size > 1 else float("nan")
    return {"name": name, "cv_c_index": mean, "se": se, "folds_fitted": int(ok.size), "factors": factors}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest cross-validated C; within :data:`TIE` of it, the candidate with fewest factors (then listed first)."""
    fitted = [r for r in rows if r["folds_fitted"] == SELECTION_FOLDS and np.isfinite(r["cv_c_index"])]
    if not fitted:
        raise InputError("no candidate model could be fitted in every cross-validation fold",
                         fix="use a larger training cohort")
    top = max(r["cv_c_index"] for r in fitted)
    return min((r for r in fitted if r["cv_c_index"] >= top - TIE), key=lambda r: r["factors"])


def select_radiomics(matrix: pd.DataFrame, time: np.ndarray, event: np.ndarray, fold: np.ndarray,
                     candidates: list[SignatureSettings], icc: pd.Series | None,
                     workers: int = 2) -> tuple[SignatureSettings, list[dict[str, Any]]]:
    """The radiomics configuration whose Rad-score validates best, and every candidate's cross-validated C."""
    if workers > 1 and len(candidates) > 1:
        from NPCPrognosisLib.processes import worker_pool

        with worker_pool(workers) as pool:
            futures = [pool.submit(_cv_signature, matrix, time, event, fold, c, icc) for c in candidates]
            scores = [f.result() for f in futures]
    else:
        scores = [_cv_signature(matrix, time, event, fold, c, icc) for c in candidates]
    # "factors" ranks simplicity: original-only, fewer ROIs, stricter robustness and the LASSO are simpler
    rows = []
    for index, (candidate, values) in enumerate(zip(candidates, scores)):
        simplicity = ((candidate.image_types is None) * 4 + (candidate.rois is None) * 2
                      + (candidate.l1_ratio != 1.0) + (1 - (candidate.min_icc or 0.0)))
        rows.append({**_summary(candidate.describe(), values, 0), "factors": simplicity, "index": index})
    best = _best(rows)
    return candidates[best["index"]], rows


#: The design table's row of the Cox model on the log tumour volumes alone: scored in the same folds as the
#: designs, never chosen (:func:`NPCPrognosisLib.pipeline.models.volume_factors`).
VOLUME_REFERENCE = "tumour volumes alone (reference)"


def _design_factors(has_deep: bool, codings: dict[str, list[str]],
                    volumes: Sequence[str] = ()) -> dict[str, list[str]]:
    """The candidate designs: the scores alone, the clinical factors alone (in each of ``codings``) and every
    combination; each design with clinical factors once more with ``volumes`` (the log tumour volumes) beside them,
    which a nomogram stacks as a block of their own (:data:`NPCPrognosisLib.pipeline.models.FACTOR_BLOCKS`)."""
    designs: dict[str, list[str]] = {"radiomics": ["rad_score"]}
    if has_deep:
        designs["deep"] = [DEEP_SCORE]
        designs["deep + radiomics"] = [DEEP_SCORE, "rad_score"]
    scores = [("", []), ("radiomics + ", ["rad_score"])]
    if has_deep:
        scores += [("deep + ", [DEEP_SCORE]), ("deep + radiomics + ", [DEEP_SCORE, "rad_score"])]
    for coding, clinical in codings.items():
        for prefix, score_factors in scores:
            designs[f"{prefix}clinical ({coding})"] = [*score_factors, *clinical]
            if volumes:
                designs[f"{prefix}clinical + volume ({coding})"] = [*score_factors, *clinical, *volumes]
    return designs


def _candidate_designs(features: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, list[str]]:
    """The designs a features table and the clinical factors allow: with a deep score, with the tumour volumes that
    vary in it, and with the clinical codings the patients can fit (:func:`estimable_codings`)."""
    from NPCPrognosisLib.pipeline.models import volume_factors

    return _design_factors(DEEP_SCORE in features.columns, estimable_codings(clinical)[0],
                           volume_factors(tumour_volumes(features)))


def select_design(clinical: pd.DataFrame, features: pd.DataFrame, time: np.ndarray, event: np.ndarray,
                  fold: np.ndarray, settings: SignatureSettings, icc: pd.Series | None, *,
                  rad_score_folds: int, penalizer: float,
                  centres: Sequence[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The nomogram design that validates best, and every design's cross-validated C.

    In each fold the Rad-score is refitted, the Cox models are fitted on the fold's cross-fitted Rad-scores
    (as the final models are) and scored on the held-out patients with the fold's full Rad-score.
    """
    from NPCPrognosisLib.pipeline.models import FACTOR_BLOCKS, SCORE_FACTORS, model_factors, volume_factors
    from NPCPrognosisLib.survival.nomogram import fit_nomogram

    designs = _candidate_designs(features, clinical)
    scores: dict[str, list[float]] = {name: [] for name in [*designs, VOLUME_REFERENCE]}
    for k in np.unique(fold):
        held = fold == k
        try:
            signature, train_rows, held_rows = _fold_signature(features, time, event, held, settings, icc, centres)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                oof = cross_fitted_rad_score(train_rows, time[~held], event[~held], settings, rad_score_folds, icc)
        except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError):
            for name in scores:
                scores[name].append(float("nan"))
            continue
        factors_train = model_factors(clinical[~held], signature, train_rows)
        if oof is not None:
            factors_train["rad_score"] = oof
        factors_held = model_factors(clinical[held], signature, held_rows)
        fold_designs = {**designs, VOLUME_REFERENCE: volume_factors(factors_train)}
        for name, columns in fold_designs.items():
            if not columns:  # no tumour volume in the table: no reference
                scores[name].append(float("nan"))
                continue
            try:
                model = fit_nomogram(name, factors_train, columns, time[~held], event[~held], penalizer=penalizer,
                                     scores=SCORE_FACTORS, factor_blocks=FACTOR_BLOCKS, seed=settings.seed)
                scores[name].append(_fold_c(time[held], event[held], model.risk(factors_held)))
            except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError):
                scores[name].append(float("nan"))
    rows = [_summary(name, scores[name], len(columns)) for name, columns in designs.items()]
    chosen = _stacked_unless_beaten(rows, scores, designs)
    if np.isfinite(scores[VOLUME_REFERENCE]).any():
        rows.append({**_summary(VOLUME_REFERENCE, scores[VOLUME_REFERENCE], len(VOLUME_ROIS)), "reference": True})
    return chosen, rows


def _stacked_unless_beaten(rows: list[dict[str, Any]], scores: dict[str, list[float]],
                           designs: dict[str, list[str]], test_to_train: float | None = None) -> str:
    """The combination of every block (its better-validating T/N coding), unless a simpler design beats it by
    more than the standard error of the paired per-fold difference (recorded in each row); then the beater with
    the most blocks.

    ``test_to_train`` (None: the plain ``SD / sqrt(folds)``, the rule ``train`` uses) makes that standard error
    Nadeau & Bengio's corrected one (:func:`NPCPrognosisLib.survival.splits.paired_gain`); only
    ``bench/bench_selection_se.py`` passes it, to measure the corrected rule on the same folds (see
    docs/generalisation.md, "The nomogram design choice's standard error")."""
    from NPCPrognosisLib.pipeline.models import FACTOR_BLOCKS, SCORE_FACTORS
    from NPCPrognosisLib.survival.nomogram import stacking_blocks

    def blocks(name: str) -> int:
        scores, others = stacking_blocks(designs[name], SCORE_FACTORS, FACTOR_BLOCKS)
        return len(scores) + len(others)

    widest = max(blocks(name) for name in designs)
    full_rows = [r for r in rows if blocks(r["name"]) == widest]
    try:
        full = _best(full_rows)
    except InputError:
        return _best(rows)["name"]
    beating = []
    for row in rows:
        if row is full:
            continue
        paired = paired_gain(scores[row["name"]], scores[full["name"]], test_to_train)
        if paired is None:
            continue
        row["paired_difference_vs_full"], row["paired_se"] = paired
        if paired[0] > paired[1] and row["folds_fitted"] == SELECTION_FOLDS:
            beating.append(row)
    if not beating:
        return full["name"]
    most = max(blocks(r["name"]) for r in beating)
    return _best([r for r in beating if blocks(r["name"]) == most])["name"]


def select_models(clinical: pd.DataFrame, features: pd.DataFrame, time: np.ndarray, event: np.ndarray,
                  base: SignatureSettings, icc: pd.Series | None, *, rad_score_folds: int, penalizer: float,
                  workers: int = 2, centres: Sequence[str] | None = None) -> Selection:
    """Choose the radiomics configuration, the clinical coding and the nomogram design on the training patients.

    Parameters
    ----------
    clinical : pandas.DataFrame
        Encoded clinical factors of the training patients (both codings' columns).
    features : pandas.DataFrame
        Their features table rows (radiomics and, when present, the deep score), aligned with ``clinical``.
    time, event : numpy.ndarray
        Their outcomes.
    base : SignatureSettings
        The starting configuration (filters, folds, seed); the candidates vary it.
    icc : pandas.Series or None
        ICC(3,1) per feature; without it no robustness threshold is tried.
    rad_score_folds : int
        Folds of the cross-fitted Rad-score the Cox models are fitted on.
    penalizer : float
        Ridge strength of the Cox models.
    workers : int
        Radiomics candidates run in parallel processes.
    centres : sequence of str, optional
        Each patient's centre: ComBat harmonisation (fitted per fold) is then compared with none for the chosen
        radiomics configuration, and kept only if it validates better.

    Returns
    -------
    selection : Selection
        With the defaults (every feature family, LASSO, ordinal stages, every factor in the nomogram) when there are
        fewer than :data:`MIN_EVENTS_FOR_SELECTION` events.
    """
    time, event = np.asarray(time, float), np.asarray(event, bool)
    has_deep = DEEP_SCORE in features.columns
    if event.sum() < MIN_EVENTS_FOR_SELECTION:
        note = (f"not selected: {int(event.sum())} training events (< {MIN_EVENTS_FOR_SELECTION}) are too few to "
                "compare candidates by cross-validation; the default configuration was used")
        # info, not a warning: `train` prints the bundle's note once, and the nested CV's outer folds (fewer events
        # than the whole split) would otherwise repeat it once per fold
        log.info(note)
        return default_selection(base, has_deep, note, estimable_codings(clinical)[0]["ordinal"])
    fold = event_folds(event, SELECTION_FOLDS, base.seed + 15485863)
    candidates = radiomics_candidates(base, icc is not None)
    settings, radiomics_rows = select_radiomics(feature_matrix(features), time, event, fold, candidates, icc,
                                                workers)
    plain = next(r for r in radiomics_rows if r["index"] == candidates.index(settings))
    # the winner's univariate filter: stricter and looser thresholds (a stricter filter is the simpler model)
    variants = [(settings, plain)]
    for threshold in UNIVARIATE_THRESHOLDS:
        variant = replace(settings, p_threshold=threshold)
        scores = _cv_signature(feature_matrix(features), time, event, fold, variant, icc)
        row = {**_summary(variant.describe(), scores, 0),
               "factors": plain["factors"] + (0.25 if threshold > settings.p_threshold else -0.25)}
        radiomics_rows.append(row)
        variants.append((variant, row))
    best_row = _best([row for _, row in variants])
    settings, plain = next((v, row) for v, row in variants if row is best_row)
    if any(is_deep_feature(c) for c in features.columns):
        # the network's deep features must earn their place: the same configuration without them is simpler
        variant = replace(settings, deep_features=False)
        scores = _cv_signature(feature_matrix(features), time, event, fold, variant, icc)
        row = {**_summary(variant.describe(), scores, 0), "factors": plain["factors"] - 0.25}
        radiomics_rows.append(row)
        if _best([plain, row]) is row:
            settings, plain = variant, row
    stable = replace(settings, stability_share=STABILITY_SHARE)
    scores = _cv_signature(feature_matrix(features), time, event, fold, stable, icc)
    # fewer, reproducible features: the simpler of the two when they validate alike
    row = {**_summary(stable.describe(), scores, 0), "factors": plain["factors"] - 0.5}
    radiomics_rows.append(row)
    if _best([plain, row]) is row:
        settings, plain = stable, row
    harmonise = False
    if centres is not None:
        scores = _cv_signature(feature_matrix(features), time, event, fold, settings, icc, centres)
        row = {**_summary(settings.describe() + ", ComBat across centres", scores, 0), "factors": plain["factors"] + 1}
        radiomics_rows.append(row)
        harmonise = _best([plain, row]) is row
    design, design_rows = select_design(clinical, features, time, event, fold, settings, icc,
                                        rad_score_folds=rad_score_folds, penalizer=penalizer,
                                        centres=centres if harmonise else None)
    clinical_rows = [r for r in design_rows if r["name"].startswith("clinical (")]
    coding = _best(clinical_rows)["name"].split("(")[1].rstrip(")")
    if "(" in design:
        coding = design.split("(")[1].rstrip(")")
    factors = _candidate_designs(features, clinical)[design]
    log.info("selected radiomics: %s; nomogram: %s", settings.describe(), design)
    return Selection(settings=settings, clinical_coding=coding, nomogram=factors, harmonise=harmonise,
                     radiomics_table=radiomics_rows, design_table=design_rows, note=f"nomogram design: {design}")
