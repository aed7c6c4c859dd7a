"""The ridge logistic model of a binary endpoint: the clinical factors, every original-image radiomics feature and
other modalities' blocks at once, each input mapped to normal scores through its training quantiles, one L2
penalty chosen by cross-validated log-loss. Stored as plain JSON (quantiles and weights), never pickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.classification.folds import n_folds
from NPCPrognosisLib.io.clinical import CLINICAL_COVARIATES
from NPCPrognosisLib.io.extra_features import PRESENT, extra_block_name, extra_column
from NPCPrognosisLib.radiomics.features_table import feature_family, feature_matrix

#: The model a bundle uses: a ridge (L2-penalised) logistic regression of the endpoint on the clinical factors and
#: every original-image radiomics feature at once, each mapped to normal scores through its training quantiles.
RIDGE = "ridge"
#: Training quantiles kept per input (the normal-score map between them is linear): enough to follow a skewed
#: feature, few enough that a bundle stays small.
RIDGE_QUANTILES = 33
#: An input missing in more than this share of the training patients is left out (e.g. GTVn features, absent for
#: node-negative patients); below it, the missing values score as the median and the feature is kept.
RIDGE_MAX_MISSING = 0.1
#: Inverse penalties searched by the inner cross-validation (log-loss, one-standard-error rule), strongest first.
RIDGE_CS = tuple(float(c) for c in np.logspace(-6, 0, 13))


def ridge_inputs(clinical: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The ridge model's candidate inputs: the clinical factors, every original-image PyRadiomics feature, and the
    columns of other modalities joined to the table (``extra:<block>:<column>``,
    :func:`NPCPrognosisLib.io.extra_features.with_extra_columns`), e.g. a pathology slide's features.

    Why original-image features only: the wavelet and LoG versions are thousands of filtered near-copies of the
    same few tumour properties, so under one shared penalty they outweigh the ~1,000 original features by their
    number alone. On 24 re-splits of each phantom family the same ridge on every image type validated 0.855 /
    0.964 of the oracle AUC (families B / A) against 0.888 / 0.991 on the original image
    (docs/binary-endpoints.md).
    """
    radiomics = [c for c in feature_matrix(features).columns
                 if (family := feature_family(c)) is not None and family.image_type == "original"]
    extra = [c for c in features.columns if extra_block_name(str(c)) is not None]
    clin = clinical[list(CLINICAL_COVARIATES)].reset_index(drop=True).astype(float)
    return pd.concat([clin, features[radiomics + extra].reset_index(drop=True).astype(float)], axis=1)


def ridge_column_weights(columns: Sequence[str]) -> np.ndarray:
    """Each input's weight in the ridge: 1 for the clinical and image inputs, sqrt(p_main / p_block) for each of
    another modality's ``p_block`` inputs (``p_main``: the clinical and image inputs kept).

    Why: under one shared L2 penalty every input gets the same prior variance, so a block's share of the linear
    predictor's prior variance is its share of the columns: a pathology block of 13 slide measures beside ~650
    image features would get 2 % of it and the fit would hardly move its weights, however informative it is.
    Scaling a block's standardised inputs by sqrt(p_main / p_block) gives each block the same prior variance as
    the clinical and image inputs together (the sqrt(group size) balance of the group lasso, Yuan & Lin 2006).
    Penalty factors per block chosen by cross-validation (IPF-LASSO, Boulesteix et al. 2017) were tried on the
    same re-splits and chose noisily (docs/binary-endpoints.md, "Other modalities in the ridge").
    """
    blocks = [extra_block_name(str(c)) for c in columns]
    main = sum(b is None for b in blocks)
    sizes = {b: blocks.count(b) for b in set(blocks) if b is not None}
    return np.array([1.0 if b is None else float(np.sqrt(max(main, 1) / sizes[b])) for b in blocks])


def _normal_scores(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Each column through its training quantiles to a normal score (ties averaged both ways, as scikit-learn's
    QuantileTransformer does); values outside the training range take the outermost score, missing (or infinite)
    ones 0, the median's."""
    from scipy.stats import norm

    levels = np.linspace(0.0, 1.0, quantiles.shape[0])
    out = np.empty_like(values, dtype=float)
    for j in range(values.shape[1]):
        q, x = quantiles[:, j], values[:, j]
        u = 0.5 * (np.interp(x, q, levels) - np.interp(-x, -q[::-1], -levels[::-1]))
        out[:, j] = np.where(np.isfinite(x), u, 0.5)
    edge = 0.5 / quantiles.shape[0]
    return norm.ppf(np.clip(out, edge, 1.0 - edge))


def fit_ridge(clinical: pd.DataFrame, features: pd.DataFrame, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Ridge logistic regression on the clinical factors and every original-image feature (normal scores).

    Why a ridge rather than a selected signature: when the endpoint depends weakly on a few tumour properties
    that hundreds of correlated features each measure with noise (the size, the necrotic share, the texture),
    160 yes/no answers cannot tell which dozen features to keep, and a LASSO path picks a different handful on
    every split. A ridge keeps all of them with small weights, which averages their noise instead of betting on
    some; the penalty comes from a cross-validated log-loss inside the training patients (one-standard-error
    rule, :func:`_ridge_penalty`). Rank-based normal scores keep one extreme tumour from steering a weight.
    Measured on 24 random 160 / 200 re-splits of each phantom family (docs/binary-endpoints.md; penalty at the
    lowest loss, as it was then): held-out AUC / oracle 0.884 / 0.992 (families B / A) against
    0.855 / 0.985 for the super learner fitted beside it (paired +0.030 +- 0.023 and +0.007 +- 0.014), and 0.853
    / 0.969 for the super learner without it, the model used before.

    Parameters
    ----------
    clinical, features : DataFrame
        Encoded clinical covariates and radiomics features of the training patients (same rows).
    y : array of 0/1
        The endpoint.
    seed : int
        Folds of the penalty search.

    Returns
    -------
    model : dict
        JSON-able: ``columns``, per column its ``quantiles`` (:data:`RIDGE_QUANTILES` values), the normal
        scores' training ``mean`` and ``scale``, ``coef``, ``intercept``, the inverse penalty ``C`` and the
        ``calibration`` of its log-odds (:func:`ridge_calibration`); with other
        modalities' columns in ``features`` (``extra:<block>:<column>``) also ``column_weight``
        (:func:`ridge_column_weights`) and per block its ``inputs`` and ``weight``.
    """
    inputs = ridge_inputs(clinical, features)
    values = inputs.to_numpy(float)
    values[~np.isfinite(values)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-missing columns
        spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    usable = (_observed_share(inputs, values) >= 1.0 - RIDGE_MAX_MISSING) & (spread > 0)
    values = values[:, usable]
    columns = list(inputs.columns[usable])
    quantiles = np.nanquantile(values, np.linspace(0.0, 1.0, RIDGE_QUANTILES), axis=0)
    scores = _normal_scores(values, quantiles)
    mean, scale = scores.mean(axis=0), scores.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    weight = ridge_column_weights(columns)
    S = (scores - mean) / scale * weight  # what ridge_scores gives for these patients
    C = _ridge_penalty(S, y, seed)
    coef, intercept = ridge_weights(S, y, C)
    model = {"family": "ridge_logistic", "columns": columns, "quantiles": quantiles.T.tolist(),
             "mean": mean.tolist(), "scale": scale.tolist(), "coef": coef, "intercept": intercept, "C": C,
             "calibration": ridge_calibration(S, y, C, seed, S @ np.asarray(coef) + intercept),
             "transform": "per column linear between its training quantiles to a normal score, then standardised"}
    blocks = sorted({b for c in columns if (b := extra_block_name(c)) is not None})
    if blocks:
        model["column_weight"] = weight.tolist()
        model["blocks"] = {b: {"inputs": int(sum(extra_block_name(c) == b for c in columns)),
                               "weight": float(weight[[extra_block_name(c) == b for c in columns]][0])}
                           for b in blocks}
        model["transform"] += ("; another modality's inputs weighted by sqrt(clinical and image inputs / the "
                               "block's inputs); a patient without the block scores its median")
    return model


def _observed_share(inputs: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Each input's share of observed values: over every patient, and for another modality's input over the
    patients who have that modality (a fifth without a slide is a missing modality, which the block's presence
    column carries, not a column too incomplete to use)."""
    observed = np.isfinite(values)
    share = observed.mean(axis=0)
    for j, column in enumerate(inputs.columns):
        block = extra_block_name(str(column))
        if block is not None:
            has = inputs[extra_column(block, PRESENT)].to_numpy(float) > 0
            share[j] = observed[has, j].mean() if has.any() else 0.0
    return share


def ridge_weights(S: np.ndarray, y: np.ndarray, C: float) -> tuple[list[float], float]:
    """Weights and intercept of the L2-penalised logistic regression at inverse penalty ``C`` on standardised
    scores ``S`` (:func:`ridge_scores`): the training fit, and each bootstrap refit at the training penalty."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter at the weakest penalties
        fit = LogisticRegression(C=C, max_iter=3000).fit(S, y)
    return [float(v) for v in fit.coef_[0]], float(fit.intercept_[0])


def ridge_calibration(S: np.ndarray, y: np.ndarray, C: float, seed: int, training_lp: np.ndarray) -> dict[str, Any]:
    """The logistic recalibration of the ridge's log-odds (:func:`~NPCPrognosisLib.classification.metrics.
    recalibration`), fitted on its out-of-fold log-odds at the chosen penalty ``C`` (the folds of the penalty
    search) and expressed on the final model's own log-odds (``training_lp``: the training patients').

    Why: the one-standard-error rule picks a strong penalty, which keeps the ranking but shrinks every weight, so
    the raw probability of every patient lies near the training prevalence (on a 30-patient cohort: 0.533 to
    0.534 for everyone, with a held-out calibration slope of 19); shown as a patient's probability of response
    that is a wrong number. A fold's model and the final model are fitted on different numbers of patients, and
    under a strong penalty the spread of the log-odds grows with that number, so each model's log-odds are first
    centred and scaled by their own spread over their own training patients; the slope and intercept fitted on
    the folds are then carried over to the final model's log-odds.

    Returns
    -------
    calibration : dict
        ``intercept`` and ``slope`` applied to the final model's log-odds, ``validated`` (and a ``note`` when the
        out-of-fold log-odds did not rank the patients: the probability is then the training prevalence).
    """
    from sklearn.model_selection import StratifiedKFold

    from NPCPrognosisLib.classification.metrics import recalibration

    def standardised(lp: np.ndarray, reference: np.ndarray) -> np.ndarray:
        spread = reference.std()
        return (lp - reference.mean()) / (spread if spread > 0 else 1.0)

    held_out = np.empty(len(y))
    for tr, va in StratifiedKFold(n_folds(y), shuffle=True, random_state=seed).split(S, y):
        coef, intercept = ridge_weights(S[tr], y[tr], C)
        held_out[va] = standardised(S[va] @ np.asarray(coef) + intercept, S[tr] @ np.asarray(coef) + intercept)
    calibration = recalibration(y, held_out, model="the ridge")
    if calibration["validated"]:
        spread = training_lp.std() if training_lp.std() > 0 else 1.0
        calibration["intercept"] -= calibration["slope"] * training_lp.mean() / spread
        calibration["slope"] /= spread
    return calibration


def ridge_warning(model: Mapping[str, Any], prevalence: float) -> str | None:
    """What a user of :func:`fit_ridge`'s probabilities must know when the training patients confirmed nothing it
    learned, or None.

    Why: the training printout showed the ridge's cross-validated AUC with "<- used" in every case, also when the
    ridge (a) predicts the training rate for everyone (its out-of-fold log-odds did not rank the patients, so its
    calibration is the prevalence; or a bundle from before the calibration at the strongest penalty, whose
    weights are all but zero), or (b) sits at the strongest penalty of :data:`RIDGE_CS`: no weaker penalty's
    held-out log-loss beat the training rate's by a standard error, and its spread of probabilities comes only
    from the recalibration fitted on the same patients. Measured with the weak-signal generator of the tests
    (ten cohorts each): labels independent of the features put the penalty at the strongest in 29 of 30 cohorts
    (30, 60 and 160 patients), and the calibration still validated in 13 of those 29; labels that follow the
    features did so in 3 of 10 cohorts of 30 patients and none of 60 or 160.

    Parameters
    ----------
    model : dict
        The ridge (:func:`fit_ridge`).
    prevalence : float
        The training patients' rate of the endpoint.

    Returns
    -------
    warning : str or None
    """
    calibration = model.get("calibration")
    everyone = (f"it predicts the training rate ({prevalence:.2f}) for every patient, so its probability tells "
                "a patient nothing beyond the training cohort's rate")
    if calibration is not None and not calibration["validated"]:
        # the evidence alone: the note repeats "learned nothing that validates" (bundles before it have only that)
        return f"the ridge learned nothing that validates ({calibration.get('evidence', calibration['note'])}): " \
               f"{everyone}"
    if model["C"] > RIDGE_CS[0]:
        return None
    if calibration is None:
        return f"the ridge sits at the strongest penalty ({model['C']:g}), its weights all but zero: {everyone}"
    return (f"the ridge sits at the strongest penalty searched ({model['C']:g}): in its cross-validation no "
            f"weaker penalty predicted held-out patients better than the training rate ({prevalence:.2f}) for "
            "everyone, and its probabilities spread only through the recalibration fitted on these same patients "
            f"(slope {calibration['slope']:.3g} on its log-odds); treat them as unproven, like a model that "
            "learned nothing (with labels independent of the features this happens in most cohorts)")


def _ridge_penalty(S: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The strongest penalty of :data:`RIDGE_CS` whose mean held-out log-loss over stratified folds is within one
    standard error of the lowest (the one-standard-error rule of Breiman et al. 1984; Hastie, Tibshirani & Friedman
    2009, section 7.10).

    Why not the lowest loss itself: with a weak signal the loss curve is flat near its minimum and where the
    minimum falls is noise of the folds, while a stronger penalty keeps every weight nearer its feature's own
    association with the endpoint, which ranks new patients at least as well. Measured on 24 random 160 / 200
    re-splits of each of six new cohorts (docs/binary-endpoints.md), held-out AUC / oracle AUC with the rule
    against the lowest loss, paired on the same folds: family B 0.916 vs 0.904 (+0.011 +- 0.011, 95 % interval;
    the cohort the rule was chosen on), 0.852 vs 0.852 (+0.000 +- 0.009), and on three more -0.001 to +0.003;
    family A 0.989 vs 0.980 (+0.009 +- 0.006). The folds' losses are computed as scikit-learn's
    LogisticRegressionCV does with ``scoring="neg_log_loss"``, written out so that its changing defaults cannot
    change the model.
    """
    return float(RIDGE_CS[one_standard_error_choice(ridge_fold_losses(S, y, seed))])


def ridge_fold_losses(S: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Held-out log-loss of each penalty of :data:`RIDGE_CS` (rows, strongest first) in each stratified fold
    (columns) at ``seed``: the table :func:`_ridge_penalty` chooses from."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(n_folds(y), shuffle=True, random_state=seed).split(S, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter at the weakest penalties
        return np.array([[log_loss(y[va], LogisticRegression(C=C, max_iter=3000).fit(S[tr], y[tr])
                                   .predict_proba(S[va])[:, 1], labels=[0, 1]) for tr, va in folds]
                         for C in RIDGE_CS])


def one_standard_error_choice(losses: np.ndarray) -> int:
    """The one-standard-error rule on a table of cross-validated losses.

    Parameters
    ----------
    losses : array, shape (n_penalties, n_folds)
        Held-out loss of each penalty (rows, strongest first) in each fold (columns).

    Returns
    -------
    index : int
        The first row whose mean loss is within one standard error (the lowest-mean row's, over its folds) of the
        lowest mean.
    """
    mean = losses.mean(axis=1)
    best = int(np.argmin(mean))
    se = losses[best].std(ddof=1) / np.sqrt(losses.shape[1])
    return int(np.flatnonzero(mean <= mean[best] + se)[0])


def ridge_scores(model: Mapping[str, Any], inputs: pd.DataFrame) -> np.ndarray:
    """The standardised normal scores of the model's columns, another modality's weighted by
    :func:`ridge_column_weights` (a column the table lacks counts as missing: callers join the blocks the model
    needs first, :func:`with_needed_extras`)."""
    values = inputs.reindex(columns=model["columns"]).to_numpy(float)
    scores = _normal_scores(values, np.asarray(model["quantiles"], float).T)
    weight = np.asarray(model.get("column_weight", np.ones(len(model["columns"]))), float)
    return (scores - np.asarray(model["mean"])) / np.asarray(model["scale"]) * weight


def ridge_log_odds(model: Mapping[str, Any], clinical: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
    """The log-odds of :func:`fit_ridge`'s model before its ``calibration``: the ranking it learned.

    Why apart from the probability: the calibration is fitted on the same training patients and turns a ranking
    it cannot confirm into one probability for everyone, so a check of what the ridge learned (the permutation
    test, :func:`NPCPrognosisLib.pipeline.binary.ranking_auc`) reads the log-odds, not the probability.
    """
    return ridge_scores(model, ridge_inputs(clinical, features)) @ np.asarray(model["coef"]) + model["intercept"]


def predict_ridge(model: Mapping[str, Any], clinical: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
    """Probability of the endpoint from :func:`fit_ridge`'s model: its log-odds (:func:`ridge_log_odds`) through
    its ``calibration`` (bundles written before the calibration: the log-odds as they are)."""
    from scipy.special import expit

    calibration = model.get("calibration") or {"intercept": 0.0, "slope": 1.0}
    return expit(calibration["intercept"] + calibration["slope"] * ridge_log_odds(model, clinical, features))
