"""Binary endpoints (induction-chemotherapy response, recurrence): radiomics signature, clinical, combined,
tumour-volume and ridge logistic models, the classifier families, and their stacking, all scored by
cross-validation inside the training split.

Why cross-validation scores them: on 160 patients and thousands of features, which model wins is itself noise
unless it is judged on patients the fit did not see. Every model is therefore scored by stratified k-fold
cross-validation *with the feature selection inside each fold* (univariable filter, Pearson redundancy filter,
LASSO-logistic, :mod:`NPCPrognosisLib.classification.signature`). The bundle's model (``best``) is by default the
ridge (:mod:`NPCPrognosisLib.classification.ridge`: every original-image feature and the clinical factors with small
weights, and another modality's table such as the biopsy slide's features as a block of its own when
``--extra-features`` gives one): on two phantom families it validated better than the super learner of the other
models (:func:`fit_stacking`), whose weights 160 weak yes/no answers cannot pin down; the
stacking is still fitted, scored and compared beside it. Another model replaces the ridge only when it beats it on
the same folds by more than the paired standard error (:mod:`NPCPrognosisLib.pipeline.binary_choice`), and its
reported CV AUC is then the nested one (:func:`nested_choice`). Out-of-fold probabilities give each model's Youden
threshold, so the threshold is not tuned on the fitted patients. Every model is JSON
(:mod:`NPCPrognosisLib.classification.models` and the ridge's quantiles and weights); bootstrap refits of the ridge
give each patient's probability an interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.classification.folds import n_folds, stratified_splits
from NPCPrognosisLib.classification.metrics import (
    SMALL_CLASS,
    binary_metrics,
    delong_auc,
    delong_test,
    few_in_a_class,
    scarcer_class,
    youden_threshold,
)
from NPCPrognosisLib.classification.models import FAMILIES, fit_classifier, predict_proba
from NPCPrognosisLib.classification.ridge import (
    RIDGE,
    fit_ridge,
    predict_ridge,
    ridge_inputs,
    ridge_log_odds,
    ridge_scores,
    ridge_warning,
    ridge_weights,
)
from NPCPrognosisLib.classification.signature import fit_rad_signature, rad_score, signature_values
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import CLINICAL_COVARIATES
from NPCPrognosisLib.io.extra_features import check_training_rows, with_extra_columns
from NPCPrognosisLib.pipeline.binary_choice import choose_model
from NPCPrognosisLib.radiomics.features_table import feature_matrix, tumour_volumes, volume_columns

log = logging.getLogger(__name__)

MIN_FOLDS = 3
CV_REPEATS = 2
#: Repeats of the inner cross-validation that remakes the model choice in each outer fold (:func:`nested_choice`):
#: one, not :data:`CV_REPEATS`, since each repeat costs a fit of every model per fold.
NESTED_INNER_REPEATS = 1
BOOTSTRAP_REFITS = 30
#: Label permutations of the chance check (:func:`permutation_test`); 9 gives p = 0.1 when none reaches the AUC.
PERMUTATIONS = 9
RAD_SCORE = "rad_score_logit"


def read_binary(values: Sequence[Any], ids: Sequence[str], column: str, source: str | Path | None = None) -> np.ndarray:
    """The endpoint as 0/1, refusing anything else with the patient who has it, the file (``source``), how many
    other patients have such a value and the codes found (a column coded yes/no, CR/PR or 1/2 is one fix, not one
    per patient)."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isin(numbers, (0.0, 1.0)))
    if len(bad):
        first = bad[0]
        found = sorted({str(values[i]) for i in bad})
        others = f"; {len(bad) - 1} other patient(s) too" if len(bad) > 1 else ""
        raise InputError(f"binary endpoint value {values[first]!r} is not 0 or 1{others} (values found other than 0 "
                         f"and 1: {', '.join(found[:6])})", patient_id=str(ids[first]), path=source, column=column,
                         fix="code the endpoint as 1 (e.g. response) or 0 for every patient (a column coded "
                             "yes/no, CR/PR or 1/2 must be recoded), or leave the cell empty to leave the patient out")
    out = numbers.astype(int)
    if len(set(out.tolist())) < 2:
        raise InputError(f"every patient of this cohort with a value has the same value ({out[0]}) of the binary "
                         "endpoint", path=source, column=column,
                         fix="a classifier is trained, and an AUC measured, only on patients with both outcomes")
    return out


# ---------------------------------------------------------------------------------------------- models
def _design(name: str, clinical: pd.DataFrame, signature: Mapping[str, Any], features: pd.DataFrame) -> pd.DataFrame:
    """Inputs of each model: radiomics (Rad-score), clinical factors, both, tumour volumes, and clinical factors +
    the signature's features."""
    if name == VOLUME:
        return tumour_volumes(features.reset_index(drop=True))
    clin = clinical[list(CLINICAL_COVARIATES)].reset_index(drop=True).astype(float)
    if name == "clinical":
        return clin
    score = pd.DataFrame({RAD_SCORE: rad_score(signature, features)})
    if name == "radiomics":
        return score
    if name == "combined":
        return pd.concat([score, clin], axis=1)
    chosen = pd.DataFrame(signature_values(signature, features.reset_index(drop=True)),
                          columns=signature["features"])
    return pd.concat([clin, chosen], axis=1)


#: Tumour volumes alone (logistic on :func:`tumour_volumes`): the reference a radiomics model has to beat. A
#: signature chosen from thousands of features on ~160 patients is often a noisy stand-in for the tumour's size
#: (Welch et al. 2019, "Vulnerabilities of radiomic signature development: the need for safeguards"), and the
#: volume needs no selection, so it is a model of its own beside the signature instead of being hoped for inside it.
VOLUME = "volume"
MODELS = ("radiomics", "clinical", "combined", VOLUME, RIDGE, *(f"classifier_{f}" for f in FAMILIES))
#: Every model above, each one's out-of-fold log-odds weighted by a non-negative logistic fit (the super learner
#: of van der Laan, Polley & Hubbard 2007; :func:`fit_stacking`): the model of bundles written before the ridge
#: (2026-12-02), still fitted and compared.
STACKED = "stacked"
#: The model a bundle uses unless another beats it in cross-validation by a margin (:func:`fit_ridge`,
#: :func:`~NPCPrognosisLib.pipeline.binary_choice.choose_model`).
DEFAULT = RIDGE
#: The models that may replace it, simplest first: the references that select nothing (the tumour volume, the
#: clinical factors). A model must never be used over a simpler one that validates better; a more flexible one
#: (the LASSO signature, the classifier families) is not offered, because among nine challengers a one-SE margin let
#: noise pick one under shuffled labels (2 of 2 null cohorts: an SVM, and the volume on the tests' coin), and a
#: model that wins among many is the luckiest (held-out AUC / oracle 0.842 / 0.942 for the best-CV model against
#: the ridge's 0.884 / 0.992, docs/binary-endpoints.md). Not the stacking: its CV AUC reuses the folds'
#: out-of-fold predictions rather than nesting them.
CHALLENGERS = (VOLUME, "clinical")
CANDIDATES = (*MODELS, STACKED)
#: The mean probability of every model, the model of bundles written before the stacking (2026-12-02): they still
#: predict and evaluate with it.
ENSEMBLE = "ensemble"
#: Probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before their log-odds are taken (a random forest or
#: k-NN gives exact 0 and 1).
LOGIT_CLIP = 1e-4


def _models_for(features: pd.DataFrame) -> list[str]:
    """The models a features table allows: all of :data:`MODELS`, less ``volume`` without a GTVp volume."""
    return [name for name in MODELS if name != VOLUME or volume_columns(features)]


def _needs_signature(name: str) -> bool:
    return name not in (RIDGE, VOLUME, "clinical")


def _fit_model(name: str, clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int,
               signature: Mapping[str, Any] | None) -> dict[str, Any]:
    """One model of :data:`MODELS` on its inputs (:func:`_design`; ``signature`` for those with signature
    features): the ridge, a ``classifier_<family>`` on the clinical factors and the signature's features, or a
    logistic fit."""
    if name == RIDGE:
        return fit_ridge(clinical, features, y, seed)
    family = name.removeprefix("classifier_") if name.startswith("classifier_") else "logistic"
    X = _design("classifier" if name.startswith("classifier_") else name, clinical, signature, features)
    return fit_classifier(family, X.to_numpy(float), y, list(X.columns), seed)


def _fit_all(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int) -> tuple[dict, dict]:
    signature = fit_rad_signature(feature_matrix(features), y, seed)
    names = [RIDGE, *(n for n in _models_for(features) if n != RIDGE)]
    return signature, {name: _fit_model(name, clinical, features, y, seed, signature) for name in names}


def _combined_model(block: Mapping[str, Any]) -> list[str]:
    """The combination a block predicts besides its models: the stacking, the mean of older bundles, or none (the
    models of one cross-validation fold)."""
    if "stacking" in block:
        return [STACKED]
    return [ENSEMBLE] if "best" in block else []


def predict_models(block: Mapping[str, Any], clinical: pd.DataFrame, features: pd.DataFrame,
                   names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Probability of each stored model (default: all, and their combination) for aligned clinical rows and feature
    rows."""
    names = list(names or [*block["models"], *_combined_model(block)])
    wanted = [n for n in names if n not in (STACKED, ENSEMBLE)]
    if ENSEMBLE in names:
        wanted = list(block["models"])
    if STACKED in names:
        wanted = list(dict.fromkeys([*wanted, *stacked_members(block["stacking"])]))
    out = {}
    for name in wanted:
        model = block["models"][name]
        if name == RIDGE:
            out[name] = predict_ridge(model, clinical, features)
            continue
        X = _design(name if not name.startswith("classifier_") else "classifier", clinical, block["signature"],
                    features)
        out[name] = predict_proba(model, X[model["columns"]].to_numpy(float))
    if ENSEMBLE in names:
        out[ENSEMBLE] = np.mean([out[n] for n in MODELS if n in out], axis=0)
    if STACKED in names:
        out[STACKED] = stacked_probability(block["stacking"], out, len(features))
    return {n: out[n] for n in names}


def _log_odds(prob: np.ndarray) -> np.ndarray:
    prob = np.clip(np.asarray(prob, float), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(prob / (1.0 - prob))


def fit_stacking(oof: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    """The super learner's weights: a logistic regression of the endpoint on every model's out-of-fold log-odds
    (standardised), weights kept non-negative, intercept free.

    Why not the model with the highest cross-validated AUC: with ten models on ~160 patients their CV AUCs differ
    by less than their standard errors, so the winner is largely the luckiest, and a rule that picks one model
    throws away what the others know. The super learner (van der Laan, Polley & Hubbard 2007) weights every model
    by how well its out-of-fold predictions, patients it did not see, explain the outcome; it is asymptotically as
    good as the best weighted combination of them, and no single model has to be chosen. Non-negative weights
    (Breiman 1996, "Stacked regressions") keep correlated models from cancelling each other with large opposite
    weights; a model that adds nothing gets weight 0. Measured on 24 random 160 / 200 re-splits of each phantom
    family (docs/binary-endpoints.md): held-out AUC / oracle 0.853 against 0.844 for the one-model choice on
    family B, 0.969 against 0.958 on family A.

    Parameters
    ----------
    oof : dict of str to array
        Each model's out-of-fold probability of every training patient (:func:`cross_validate`); the models of
        :data:`MODELS` present are used.
    y : array of 0/1
        The endpoint.

    Returns
    -------
    stacking : dict
        ``models``, their ``weights`` (>= 0, on standardised log-odds), ``intercept``, and the log-odds' training
        ``mean`` and ``scale``.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    names = [n for n in MODELS if n in oof]
    Z = np.column_stack([_log_odds(oof[n]) for n in names])
    mean, scale = Z.mean(axis=0), Z.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    S = (Z - mean) / scale
    y = np.asarray(y, float)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        eta = w[0] + S @ w[1:]
        residual = expit(eta) - y
        value = float(np.sum(np.logaddexp(0.0, eta) - y * eta))
        return value, np.concatenate([[residual.sum()], S.T @ residual])

    start = np.zeros(len(names) + 1)
    start[0] = np.log(y.mean() / (1.0 - y.mean()))
    fit = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0.0, None)] * len(names))
    return {"models": names, "weights": [float(w) for w in fit.x[1:]], "intercept": float(fit.x[0]),
            "mean": mean.tolist(), "scale": scale.tolist(),
            "method": "super learner: non-negative logistic weights of the models' standardised out-of-fold "
                      "log-odds (van der Laan et al. 2007)"}


def stacked_members(stacking: Mapping[str, Any]) -> list[str]:
    """The models with a non-zero weight: the only ones the stacked probability needs."""
    return [n for n, w in zip(stacking["models"], stacking["weights"]) if w > 0]


def stacked_probability(stacking: Mapping[str, Any], probs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """The super learner's probability for ``n`` patients from its members' probabilities (:func:`fit_stacking`;
    with every weight 0, the training prevalence for all)."""
    from scipy.special import expit

    eta = np.full(n, stacking["intercept"], dtype=float)
    for name, w, m, s in zip(stacking["models"], stacking["weights"], stacking["mean"], stacking["scale"]):
        if w > 0:
            eta = eta + w * (_log_odds(probs[name]) - m) / s
    return expit(eta)


def cross_validate(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int,
                   repeats: int = CV_REPEATS) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Repeated stratified k-fold CV of every candidate, selection inside the folds.

    Returns
    -------
    cv : dict
        Per candidate the mean and standard error of the per-fold AUCs, each repeat's mean, the AUC of the
        pooled out-of-fold probabilities and the ``fold_aucs`` themselves (repeat by repeat, fold by fold: the
        same folds for every candidate, which the choice of the model compares pairwise).
    oof : dict
        Per candidate each patient's out-of-fold probability, averaged over the repeats.
    """
    from sklearn.metrics import roc_auc_score

    # Repeated k-fold: one split of 160 patients moves a model's CV AUC by several hundredths, as much as the
    # families differ; averaging over repeats steadies the AUCs and the out-of-fold predictions the stacking uses.
    oof_runs = []
    candidates = [*_models_for(features), STACKED]
    fold_aucs: dict[str, list[float]] = {name: [] for name in candidates}

    def score(name: str, va: np.ndarray, prob: np.ndarray) -> None:
        oof[name][va] = prob
        fold_aucs[name].append(float(roc_auc_score(y[va], prob)) if np.ptp(prob) > 0 else 0.5)

    for repeat in range(repeats):
        oof = {name: np.zeros(len(y)) for name in candidates}
        splits = stratified_splits(y, seed + repeat)
        for tr, va in splits:
            signature, models = _fit_all(clinical.iloc[tr], features.iloc[tr].reset_index(drop=True), y[tr], seed)
            fold = {"signature": signature, "models": models}
            probs = predict_models(fold, clinical.iloc[va].reset_index(drop=True),
                                   features.iloc[va].reset_index(drop=True))
            for name, prob in probs.items():
                score(name, va, prob)
        # The stacking's own score: its weights fitted on the other folds' out-of-fold predictions, applied to this
        # fold's (the level-1 predictions are reused rather than nested, as the super learner's CV risk usually is).
        for tr, va in splits:
            stacking = fit_stacking({n: oof[n][tr] for n in candidates if n != STACKED}, y[tr])
            members = {n: oof[n][va] for n in stacked_members(stacking)}
            score(STACKED, va, stacked_probability(stacking, members, len(va)))
        oof_runs.append(oof)
    # The CV AUC is the mean of the per-fold AUCs, not the AUC of the pooled out-of-fold probabilities: each fold's
    # model has its own intercept (its training prevalence mirrors the held-out fold's), and pooling them biases a
    # weak model's AUC below 0.5 - most for the models that select features (Airola et al. 2011; Parker 2007).
    cv = {}
    for name in candidates:
        values = np.asarray(fold_aucs[name])
        cv[name] = {"auc": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(len(values))),
                    "auc_repeats": [float(v.mean()) for v in np.array_split(values, repeats)],
                    "pooled_auc": float(np.mean([delong_auc(y, run[name])["auc"] for run in oof_runs])),
                    "fold_aucs": values.tolist()}
    return cv, {name: np.mean([run[name] for run in oof_runs], axis=0) for name in candidates}


def nested_choice(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int,
                  cv: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The nested cross-validated AUC of the model choice (:func:`~NPCPrognosisLib.pipeline.binary_choice.
    choose_model`): in each outer fold the choice is made again on the outer training patients alone, by an inner
    cross-validation (:func:`cross_validate`, :data:`NESTED_INNER_REPEATS` repeat(s)), and the model it makes is
    scored on the held-out fold.

    Why: a model chosen because it beat the ridge on some folds has, on those folds, the maximum of several CV AUCs;
    reported as its validation it would be optimistic (most of all when nothing was learned, where the beater is
    the luckiest of ten). The outer folds are those of :func:`cross_validate`'s first repeat (same seed), so each
    outer fold's models were already fitted and scored there (``cv``'s ``fold_aucs``): only the choice is remade.

    Returns
    -------
    nested : dict
        ``auc`` (mean of the outer folds' AUCs of the model chosen without them) and its ``se``, those
        ``fold_aucs``, the ``chosen_per_fold`` and how it was done.
    """
    splits = stratified_splits(y, seed)
    aucs, chosen = [], []
    for k, (tr, _) in enumerate(splits):
        inner, _ = cross_validate(clinical.iloc[tr].reset_index(drop=True), features.iloc[tr].reset_index(drop=True),
                                  y[tr], seed, NESTED_INNER_REPEATS)
        name, _ = choose_model({n: c["fold_aucs"] for n, c in inner.items()}, DEFAULT, CHALLENGERS,
                               folds=n_folds(y[tr]))
        chosen.append(name)
        aucs.append(float(cv[name]["fold_aucs"][k]))
    values = np.asarray(aucs)
    return {"auc": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "fold_aucs": aucs, "chosen_per_fold": chosen, "outer_folds": len(splits),
            "inner_repeats": NESTED_INNER_REPEATS,
            "method": "the choice remade on each outer fold's training patients by an inner cross-validation, its "
                      "model scored on the outer fold (the first repeat's folds)"}


def ranking_auc(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int, name: str = DEFAULT) -> float:
    """The statistic of the chance check (:func:`permutation_test`): the mean over the folds of one stratified
    k-fold run (those of :func:`cross_validate`'s first repeat) of the held-out AUC of model ``name`` refitted in
    each fold (for the ridge, its quantile map and penalty search included, and its log-odds before its
    recalibration, :func:`~NPCPrognosisLib.classification.ridge.ridge_log_odds`; for another model, its signature
    when it has one, and its probability). Module-level for process pools.

    Why the ridge's log-odds and not its probability: a fold's ridge whose own out-of-fold check does not confirm
    its ranking predicts the training rate for everyone, an AUC of exactly 0.5, and that happens most often with
    permuted labels; the permuted runs then pile up at 0.5 and a real run just above it looked better than chance
    (a 50-patient cohort with a held-out AUC of 0.47 passed at p = 0.1). The question is whether the ranking the
    model learns holds on patients it did not see; the same statistic on the real and the permuted labels
    answers it, whatever the recalibration then does. The other models have no recalibration: their probability
    ranks as their score does.
    """
    from sklearn.metrics import roc_auc_score

    aucs = []
    for tr, va in stratified_splits(y, seed):
        train_clinical, train_features = clinical.iloc[tr], features.iloc[tr].reset_index(drop=True)
        held_clinical = clinical.iloc[va].reset_index(drop=True)
        held_features = features.iloc[va].reset_index(drop=True)
        if name == RIDGE:
            model = fit_ridge(train_clinical, train_features, y[tr], seed)
            score = ridge_log_odds(model, held_clinical, held_features)
        else:
            signature = (fit_rad_signature(feature_matrix(train_features), y[tr], seed) if _needs_signature(name)
                         else None)
            fold = {"signature": signature,
                    "models": {name: _fit_model(name, train_clinical, train_features, y[tr], seed, signature)}}
            score = predict_models(fold, held_clinical, held_features, [name])[name]
        aucs.append(float(roc_auc_score(y[va], score)))
    return float(np.mean(aucs))


def permutation_test(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int,
                     permutations: int = PERMUTATIONS, workers: int = 1, name: str = DEFAULT,
                     observed: float | None = None) -> dict[str, Any]:
    """Did the training patients show that anything was learned? The cross-validated ranking of the model used
    (``name``, :func:`ranking_auc`) against the same statistic with permuted labels (Ojala & Garriga 2010).

    Why not "CV AUC above 0.5": with thousands of features, a label that is pure noise still correlates with some
    of them in the whole training sample, and cross-validation on that same sample confirms the correlation
    (one coin-toss label reached a CV AUC of 0.65 +- 0.03 on 160 patients and 42 features); the per-fold
    standard error does not see this. Permuted labels go through everything the ridge's real ones do (the
    quantile map, the penalty search, in every fold), so they show how high a CV AUC chance alone reaches on these
    patients; the real labels are scored by exactly the same statistic (one k-fold run on the same folds' seed),
    so under no signal the real run is one more draw of the same distribution and the p value is uniform. The
    other models do not enter the ridge, so they are not refitted; when another model replaced the ridge
    (:func:`~NPCPrognosisLib.pipeline.binary_choice.choose_model`), that model is the one refitted on permuted
    labels, and the real labels' statistic is ``observed``, the nested AUC of the choice (:func:`nested_choice`, on
    the same outer folds): the model's own statistic on the real labels would be that of the luckiest of several
    models, above what it reaches without being chosen, and a coin-toss endpoint would pass. Being a test at level
    0.1, it lets about one label in ten that carries nothing pass unflagged.

    Returns
    -------
    test : dict
        ``observed_auc`` (:func:`ranking_auc` with the real labels, or ``observed``), ``null_auc`` (the same with each
        permutation), ``p_value`` ((1 + runs reaching the observed AUC) / (1 + permutations)) and
        ``no_better_than_chance`` (some permuted run reached it).
    """
    rng = np.random.default_rng(seed + 7919)
    labels = [*([y] if observed is None else []), *(rng.permutation(y) for _ in range(permutations))]
    if workers > 1:
        from NPCPrognosisLib.processes import worker_pool

        with worker_pool(workers) as pool:
            runs = list(pool.map(ranking_auc, *zip(*[(clinical, features, y_k, seed, name) for y_k in labels])))
    else:
        runs = [ranking_auc(clinical, features, y_k, seed, name) for y_k in labels]
    observed, null = (runs[0], runs[1:]) if observed is None else (observed, runs)
    reached = int(sum(value >= observed for value in null))
    return {"permutations": permutations, "observed_auc": observed, "null_auc": null,
            "p_value": (1 + reached) / (1 + permutations), "no_better_than_chance": reached > 0,
            "model": name,
            "statistic": f"mean held-out AUC of the {name}'s "
                         + ("log-odds before recalibration" if name == RIDGE else "probability")
                         + f" over one stratified {n_folds(y)}-fold run"
                         + ("" if name == DEFAULT else "; with the real labels, the nested AUC of the choice on "
                                                       "the same folds"),
            "method": "labels permuted, the " + ("ridge (quantile map, penalty search)" if name == RIDGE else
                                                 f"{name} model") + " refitted in every fold"}


def no_better_than_chance(block: Mapping[str, Any]) -> bool:
    """Whether the endpoint's permutation test found the chosen model no better than chance (bundles written
    before the test: False)."""
    return bool((block.get("permutation") or {}).get("no_better_than_chance", False))


def training_findings(block: Mapping[str, Any]) -> list[str]:
    """What ``train`` found the endpoint's model failed to learn, in the words every result of it repeats: a
    patient's probability (``predict``: its warnings, the sheet, the panel) and a cohort's metrics (``evaluate``).

    Why one function: ``predict`` said it and ``evaluate`` did not, so a held-out AUC of a ridge that predicts the
    training rate for everyone read as a model that learned something.

    Parameters
    ----------
    block : dict
        A binary endpoint's block of the bundle (:func:`fit_binary_endpoint`).

    Returns
    -------
    findings : list of str
        The permutation test's finding (:func:`no_better_than_chance`) and the ridge's own (the block's
        ``warnings``: :func:`~NPCPrognosisLib.classification.ridge.ridge_warning`, e.g. the training rate for
        everyone, or the strongest penalty searched); empty for a model training confirmed.
    """
    best = block["best"]
    found = []
    if no_better_than_chance(block):
        found.append(f"{block['endpoint']}: the {best} model's cross-validated AUC was reached with randomly "
                     "permuted labels in training; its probability is unproven")
    if best == RIDGE:
        found.extend(block.get("warnings") or [])
    return found


def fit_binary_endpoint(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, endpoint: str,
                        seed: int = 0, workers: int = 1, permutations: int = PERMUTATIONS) -> dict[str, Any]:
    """Fit every model on the training patients, score each by cross-validation, and stack them; the bundle uses
    the ridge (:func:`fit_ridge`) unless another model beats it on the same folds by more than the paired standard
    error (:func:`~NPCPrognosisLib.pipeline.binary_choice.choose_model`).

    Parameters
    ----------
    clinical : DataFrame
        Encoded clinical covariates of the training patients (:data:`CLINICAL_COVARIATES`).
    features : DataFrame
        Their radiomics features (same row order), with any other modality's columns joined
        (:func:`NPCPrognosisLib.io.extra_features.with_extra_columns`; the ridge uses them, the other models not).
    y : array of 0/1
        The endpoint.
    endpoint : str
        Its column name (recorded in the block).
    seed : int
        Folds, penalty search and bootstrap.
    workers : int
        Processes of the permutation test (:func:`permutation_test`).
    permutations : int, default 9
        Label permutations of that test; more give a finer p value (the smallest is 1 / (1 + permutations)) at
        ``1 + permutations`` x one k-fold run of the ridge; 0 skips the test (no ``permutation`` entry, no
        warning).

    Returns
    -------
    block : dict
        JSON-able: ``signature``, ``models``, ``cv`` (per model the mean and standard error of the per-fold AUCs,
        and the AUC of the pooled out-of-fold probabilities), ``stacking`` (:func:`fit_stacking`), ``best`` (the
        model used: the ridge unless another beats it, :func:`~NPCPrognosisLib.pipeline.binary_choice.choose_model`),
        ``choice`` (the paired comparisons with the ridge and, when another model replaced it, the ``nested`` CV AUC
        of the choice, :func:`nested_choice`), ``permutation`` (:func:`permutation_test` of the model used),
        ``thresholds`` (Youden on out-of-fold probabilities), ``bootstrap`` (refits of the model used for
        per-patient intervals) and, when the ridge
        learned nothing the training patients confirm (:func:`~NPCPrognosisLib.classification.ridge.ridge_warning`),
        ``warnings``.
    """
    clinical = clinical.reset_index(drop=True)
    features = features.reset_index(drop=True)
    if min(int(y.sum()), int(len(y) - y.sum())) < 2 * MIN_FOLDS:
        raise InputError(f"{endpoint}: fewer than {2 * MIN_FOLDS} training patients with one of the outcomes",
                         column=endpoint, fix=f"a binary endpoint needs at least {2 * MIN_FOLDS} patients of each "
                                              "outcome in the training split")
    folds = n_folds(y)
    cv, oof = cross_validate(clinical, features, y, seed)
    stacking = fit_stacking(oof, y)
    signature, models = _fit_all(clinical, features, y, seed)
    best, compared = choose_model({name: cv[name]["fold_aucs"] for name in cv}, DEFAULT, CHALLENGERS, folds=folds)
    choice: dict[str, Any] = {
        "default": DEFAULT, "chosen": best, "compared": compared,
        "rule": f"the {DEFAULT} unless a model beats its per-fold AUCs by more than the standard error of their paired "
                "difference; among such models the simplest, unless a less simple one beats it by the same margin"}
    if best != DEFAULT:
        choice["nested"] = nested_choice(clinical, features, y, seed, cv)
    used = ("a ridge logistic regression on the clinical factors and every original-image feature" if best == RIDGE
            else f"the {best} model, which beat the ridge in cross-validation by more than the paired standard error")
    block: dict[str, Any] = {
        "endpoint": endpoint, "n": int(len(y)), "positives": int(y.sum()), "signature": signature, "models": models,
        "cv": {"folds": folds, "repeats": CV_REPEATS, "selection_inside_folds": True, **cv}, "stacking": stacking,
        "best": best, "choice": choice,
        "thresholds": {name: youden_threshold(y, prob) for name, prob in oof.items()},
        "note": f"the model used is {used}; the stacking of every model is fitted and compared beside it; the "
                "probability interval comes from bootstrap refits"}
    warning = ridge_warning(models[RIDGE], float(np.mean(y)))
    if warning:
        block["warnings"] = [f"{endpoint}: {warning}"]
    if permutations > 0:
        block["permutation"] = permutation_test(clinical, features, y, seed, permutations, workers, best,
                                                None if best == DEFAULT else choice["nested"]["auc"])
    block["bootstrap"] = (_bootstrap_ridge(clinical, features, y, models[RIDGE], seed) if best == RIDGE
                          else _bootstrap_model(clinical, features, y, block, seed))
    return block


def chosen_cv_auc(block: Mapping[str, Any]) -> float:
    """The cross-validated AUC to report for the model a block uses: the nested one when the choice replaced the
    ridge (:func:`nested_choice`: its own CV AUC is the maximum of several on the folds it was chosen on), else the
    model's own (older bundles: always)."""
    nested = (block.get("choice") or {}).get("nested")
    return float(nested["auc"]) if nested else float(block["cv"][block["best"]]["auc"])


def _stratified_resample(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """Row indices of one bootstrap resample that keeps the number of patients of each outcome."""
    return np.concatenate([rng.choice(np.flatnonzero(y == k), size=int((y == k).sum())) for k in (0, 1)])


def _bootstrap_model(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, block: Mapping[str, Any],
                     seed: int) -> dict:
    """Refits of the model used when it is not the ridge, on the same stratified resamples as the ridge's
    (:func:`_bootstrap_ridge`): the model's own fit on the resampled patients, its inputs (the signature) kept, as
    the ridge keeps its penalty and normal-score map. Each refit stores that model alone (``model``)."""
    rng = np.random.default_rng(seed)
    name = block["best"]
    refits = []
    for _ in range(BOOTSTRAP_REFITS):
        idx = _stratified_resample(rng, y)
        refits.append({"model": _fit_model(name, clinical.iloc[idx].reset_index(drop=True),
                                           features.iloc[idx].reset_index(drop=True), y[idx], seed,
                                           block["signature"])})
    return {"model": name, "n": len(refits), "refits": refits,
            "method": f"stratified resamples, the {name} model refitted on each (the signature kept)"}


def _bootstrap_ridge(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, ridge: Mapping[str, Any],
                     seed: int) -> dict:
    """Refits of the ridge's weights on stratified resamples, at the training penalty and through the training
    patients' normal-score map (neither is refitted: a penalty search per refit costs a cross-validation, and a
    refit stores only its weights and its calibration, so the bundle stays small).

    Each refit carries the ridge's recalibration carried over to its own log-odds as the calibration itself was
    carried from the folds to the final model (:func:`~NPCPrognosisLib.classification.ridge.ridge_calibration`:
    log-odds centred and scaled by their spread over the model's own training patients). Why: under a strong
    penalty the recalibration's slope is large (thousands), and applied to a refit's log-odds as they are it
    turned each refit's small shift of offset into a large shift of probability: on null cohorts 4-12 % of new
    patients had a probability outside their own 95% interval (0.739 with an interval of 0.802-0.953)."""
    rng = np.random.default_rng(seed)
    S = ridge_scores(ridge, ridge_inputs(clinical, features))
    calibration = ridge.get("calibration")
    if calibration:  # on the final model's log-odds standardised over its training patients
        lp = S @ np.asarray(ridge["coef"]) + ridge["intercept"]
        spread = lp.std() if lp.std() > 0 else 1.0
        standard = (calibration["intercept"] + calibration["slope"] * lp.mean(), calibration["slope"] * spread)
    refits = []
    for _ in range(BOOTSTRAP_REFITS):
        idx = _stratified_resample(rng, y)
        coef, intercept = ridge_weights(S[idx], y[idx], ridge["C"])
        refit: dict[str, Any] = {"coef": coef, "intercept": intercept}
        if calibration:
            own = S[idx] @ np.asarray(coef) + intercept
            spread = own.std() if own.std() > 0 else 1.0
            refit["calibration"] = {**calibration, "slope": float(standard[1] / spread),
                                    "intercept": float(standard[0] - standard[1] * own.mean() / spread)}
        refits.append(refit)
    return {"model": RIDGE, "n": len(refits), "refits": refits,
            "method": "stratified resamples, the ridge's weights refitted at the training penalty and its "
                      "recalibration carried over to each refit's log-odds standardised over its own patients"}


def _refit_probability(block: Mapping[str, Any], refit: Mapping[str, Any], clinical: pd.DataFrame,
                       features: pd.DataFrame) -> float:
    """One bootstrap refit's probability for one patient: the ridge's weights (bundles since 2026-12-02), another
    model used in its place (``model``, since 2026-12-07), or a whole refitted block (the stacked model of older
    bundles)."""
    best = block["best"]
    if best == RIDGE:
        return float(predict_ridge({**block["models"][RIDGE], **refit}, clinical, features)[0])
    if "model" in refit:
        refitted = {**block, "models": {**block["models"], best: refit["model"]}}
        return float(predict_models(refitted, clinical, features, [best])[best][0])
    return float(predict_models(refit, clinical, features, [best])[best][0])


# ---------------------------------------------------------------------------------------------- use
def needed_blocks(blocks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The other modalities (``--extra-features`` blocks) that the binary endpoints' ridges were trained with."""
    return sorted({name for block in blocks
                   for name in ((block.get("models") or {}).get(RIDGE, {}).get("blocks") or {})})


def with_needed_extras(blocks: Sequence[Mapping[str, Any]], features: pd.DataFrame, extras: Mapping[str, Any] | None,
                       patient_ids: Sequence[str]) -> pd.DataFrame:
    """The features table with the extra blocks the endpoints' ridges need joined (:func:`needed_blocks`).

    A block the model was trained with but not given now would score every patient as without that modality, a
    different model from the one validated: that stops with what to pass instead; so does a table that has no row
    for any patient of a cohort (IDs written another way than in the manifest)."""
    needed = needed_blocks(blocks)
    missing = [name for name in needed if name not in (extras or {})]
    if missing:
        endpoints = ", ".join(sorted({b["endpoint"] for b in blocks}))
        raise InputError(f"the {endpoints} model was trained with the {', '.join(missing)} feature table(s), "
                         "which were not given", column="--extra-features",
                         fix=" ".join(f"--extra-features {name}=<CSV>" for name in missing)
                         + " (a patient without a row counts as without that modality)")
    if len(patient_ids) > 1:  # a cohort (one patient without a slide simply lacks the modality)
        check_training_rows({name: extras[name] for name in needed}, patient_ids, patients="evaluated patient")
    return with_extra_columns(features, {name: extras[name] for name in needed}, patient_ids) if needed else features


def patient_binary(block: Mapping[str, Any], clinical: pd.DataFrame, features: pd.DataFrame) -> dict[str, Any]:
    """One patient's probability from the best model, with the bootstrap 95% interval and the Youden label.

    What ``train`` found the model failed to learn goes with the probability: ``no_better_than_chance``
    (:func:`no_better_than_chance`) and ``warnings`` (:func:`training_findings`: that and the block's own text of
    the ridge's finding, e.g. that it predicts the training rate for every patient), so one patient's probability is
    never read without it.
    """
    best = block["best"]
    prob = float(predict_models(block, clinical, features, [best])[best][0])
    draws = [_refit_probability(block, refit, clinical, features) for refit in block["bootstrap"]["refits"]]
    ci = [float(v) for v in np.percentile(draws, [2.5, 97.5])] if len(draws) >= 20 else None
    threshold = block["thresholds"][best]
    return {"endpoint": block["endpoint"], "model": best, "probability": prob, "ci95": ci,
            "threshold": threshold, "predicted_positive": bool(prob >= threshold),
            "cv_auc": chosen_cv_auc(block), "bootstrap_refits": len(draws),
            "no_better_than_chance": no_better_than_chance(block),
            "warnings": training_findings(block)}


def evaluate_binary(block: Mapping[str, Any], clinical: pd.DataFrame, features: pd.DataFrame,
                    y: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Held-out metrics of every stored model, and DeLong comparisons of each model with the best one; the
    ``warnings`` say what ``train`` found the model failed to learn (:func:`training_findings`) and when one outcome
    has few patients (:func:`few_patients_warnings`)."""
    probs = predict_models(block, clinical, features)
    models = {name: binary_metrics(y, prob, block["thresholds"][name]) for name, prob in probs.items()}
    best = block["best"]
    comparisons = {name: delong_test(y, probs[name], probs[best]) for name in probs if name != best}
    return {"endpoint": block["endpoint"], "n": int(len(y)), "positives": int(y.sum()), "model_used": best,
            "models": models, "delong_vs_best": comparisons,
            "warnings": [*training_findings(block), *few_patients_warnings(y, block["endpoint"])]}, probs


def few_patients_warnings(y: np.ndarray, endpoint: str) -> list[str]:
    """What a reader of the held-out AUCs and of the models' DeLong comparisons (``delong_vs_best``,
    ``delong_vs_combined``) must know when one outcome has fewer than :data:`SMALL_CLASS` patients
    (:func:`~NPCPrognosisLib.classification.metrics.few_in_a_class`): every AUC ranks those few against the rest,
    so it moves by a large step with each of them, and a comparison's variance rests on them
    (:func:`~NPCPrognosisLib.classification.metrics.delong_test`)."""
    if not few_in_a_class(y):
        return []
    scarcer = scarcer_class(y)
    kind = "positive" if int(np.sum(y)) == scarcer else "negative"
    return [f"{endpoint}: only {scarcer} {kind} patient(s) among the {len(y)} evaluated: each AUC ranks those "
            f"{scarcer} against the others, and sensitivity or specificity moves by 1/{scarcer} with each of them; "
            "the AUC intervals are score intervals (wide by design), the DeLong comparisons between models "
            "(delong_vs_best, delong_vs_combined) have optimistic p values, and a cohort with at least "
            f"{SMALL_CLASS} patients of each outcome is needed for a validation to rely on"]


# ---------------------------------------------------------------------------------------------- cohort level
def endpoint_labels(manifest: Any, endpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Which manifest rows have a value of the binary column, and those values as 0/1 (anything else refused)."""
    table = manifest.table
    endpoint = manifest.column(endpoint)
    if endpoint not in table.columns:
        raise InputError(f"no {endpoint!r} column for the binary endpoint", path=manifest.source, column=endpoint,
                         fix="add the column (1 = response/event, 0 = none) or name another one")
    known = table[endpoint].notna().to_numpy()
    return known, read_binary(table.loc[known, endpoint].tolist(), table.loc[known, "patient_id"].tolist(), endpoint,
                              manifest.source)


def binary_block_for(manifest: Any, features: pd.DataFrame, clinical: pd.DataFrame, endpoint: str,
                     seed: int = 0, workers: int = 1, permutations: int = PERMUTATIONS) -> dict[str, Any]:
    """Fit one binary endpoint on the (training) patients of ``manifest`` (``clinical``: their encoded clinical
    covariates, same rows); patients without a value are left out."""
    known, y = endpoint_labels(manifest, endpoint)
    block = fit_binary_endpoint(clinical[known].reset_index(drop=True), features[known].reset_index(drop=True), y,
                                endpoint, seed, workers, permutations)
    block["left_out_unknown"] = int((~known).sum())
    return block


def evaluate_binary_cohort(document: Mapping[str, Any], manifest: Any, features: pd.DataFrame, endpoint: str,
                           out_dir: Path, plots: bool = True, fused: Mapping[str, Any] | None = None,
                           extras: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics (``models.<name>.auc`` ...) and per-patient probabilities of one binary endpoint of a bundle.

    ``fused`` (the fusion model's ``probability`` for every manifest row, its ``threshold`` and a ``warning``)
    adds the ``mmoe`` model, compared by DeLong's test with the ``combined`` model (Rad-score + clinical, the
    binary counterpart of the nomogram) like every other model. ``extras`` (``--extra-features`` blocks) must
    hold every block the endpoint's ridge was trained with (:func:`with_needed_extras`)."""
    block = document["binary_endpoints"][endpoint]
    table = manifest.table
    known, y = endpoint_labels(manifest, endpoint)
    known_patients = manifest.subset(known)
    clinical = known_patients.clinical_table(float(document["clinical_encoding"]["log10_ebv_dna_fill"]))
    rows = with_needed_extras([block], features[known].reset_index(drop=True), extras, known_patients.patient_ids)
    metrics, probs = evaluate_binary(block, clinical, rows, y)
    if fused is not None:
        probs["mmoe"] = np.asarray(fused["probability"], float)[known]
        metrics["models"]["mmoe"] = binary_metrics(y, probs["mmoe"], fused["threshold"])
        metrics["delong_vs_best"]["mmoe"] = delong_test(y, probs["mmoe"], probs[block["best"]])
        if fused.get("warning"):
            metrics["warnings"].append(fused["warning"])
    metrics["delong_vs_combined"] = {name: delong_test(y, prob, probs["combined"])
                                     for name, prob in probs.items() if name != "combined"}
    predictions = pd.DataFrame({"patient_id": table.loc[known, "patient_id"].to_numpy(), endpoint: y})
    for name, prob in probs.items():
        predictions[f"{name}_prob"] = prob
    if plots:
        from NPCPrognosisLib.classification.plots import plot_calibration_binary, plot_roc

        plot_roc(out_dir / f"roc_{endpoint}.png", y, probs, metrics["models"], f"{endpoint}: held-out ROC")
        best = block["best"]
        plot_calibration_binary(out_dir / f"calibration_{endpoint}_{best}.png",
                                metrics["models"][best]["calibration"], f"{endpoint}: {best} calibration")
        # the figures this run drew: the page shows these, not whatever lies in the folder
        metrics["figures"] = [f"roc_{endpoint}.png", f"calibration_{endpoint}_{best}.png"]
    return metrics, predictions
