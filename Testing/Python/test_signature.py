"""The radiomics signature: score-test filter, redundancy filter, LASSO-Cox selection and the Rad-score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test

from NPCPrognosisLib.radiomics.signature import (
    RadiomicsSignature,
    SignatureSettings,
    cox_score_test,
    fit_signature,
    path_to,
    redundancy_filter,
)
from NPCPrognosisLib.survival.metrics import harrell_c


def _survival(rng, lp):
    time = rng.exponential(30 * np.exp(-lp))
    censor = rng.uniform(10, 90, len(lp))
    return np.minimum(time, censor), time <= censor


def test_score_test_of_binary_covariate_equals_logrank_without_ties():
    rng = np.random.default_rng(1)
    group = (rng.random(150) < 0.4).astype(float)
    time, event = _survival(rng, 0.7 * group)
    # Untied times: with ties the log-rank's hypergeometric variance has an extra (n-d)/(n-1) factor.
    z, p = cox_score_test(group[:, None], time, event)
    reference = logrank_test(time[group == 1], time[group == 0], event[group == 1], event[group == 0])
    assert z[0] ** 2 == pytest.approx(reference.test_statistic, rel=1e-6)
    assert p[0] == pytest.approx(reference.p_value, rel=1e-6)


def test_score_test_agrees_with_lifelines_for_continuous_covariates():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    time, event = _survival(rng, 0.5 * x[:, 0])
    _, p = cox_score_test(x, time, event)
    for j in range(3):
        fitter = CoxPHFitter().fit(pd.DataFrame({"x": x[:, j], "T": time, "E": event}), "T", "E")
        # Wald (lifelines) and score tests are asymptotically equal; close for small effects
        assert abs(np.log10(p[j]) - np.log10(fitter.summary["p"].iloc[0])) < 0.3
    assert p[0] < 1e-4 and p[1] > 0.01 and p[2] > 0.01


def test_redundancy_filter_keeps_lower_p_of_correlated_pair():
    rng = np.random.default_rng(3)
    a = rng.normal(size=100)
    z = np.column_stack([a, a + 0.05 * rng.normal(size=100), rng.normal(size=100)])
    kept = redundancy_filter(z, ["a", "a_copy", "other"], np.array([0.02, 0.001, 0.03]), 0.85)
    assert kept == ["a_copy", "other"]


def test_warm_started_penalty_path_reaches_the_single_penalty_optimum():
    """Fits at one penalty go down the path (``path_to``): the penalised partial likelihood is as low as a fit
    started at that penalty from zero (which can take minutes, or fail, at a small penalty)."""
    import warnings

    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    from NPCPrognosisLib.survival.cox import _partial_likelihood

    rng = np.random.default_rng(0)
    for n, p in ((64, 150), (128, 200)):  # more features than patients, as after the radiomics filters
        z = rng.normal(size=(n, p))
        z[:, 1:40] += 0.8 * z[:, :1]
        time, event = _survival(rng, 0.8 * z[:, 0] + 0.5 * z[:, 5])
        y = Surv.from_arrays(event, time)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alphas = CoxnetSurvivalAnalysis(n_alphas=50, alpha_min_ratio=0.02).fit(z, y).alphas_
            for alpha in alphas[[10, 30]]:
                path = path_to(alphas, alpha)
                assert path[-1] == alpha and np.all(np.diff(path) < 0)
                objective = []
                for grid in ([alpha], path):
                    beta = CoxnetSurvivalAnalysis(alphas=grid).fit(z, y).coef_[:, -1]
                    objective.append(-_partial_likelihood(z, time, event, beta, "breslow")[0] / n
                                     + alpha * np.abs(beta).sum())
                assert objective[1] <= objective[0] * (1 + 1e-4)  # no worse, to the solver tolerance (often lower)
    beta = CoxnetSurvivalAnalysis(alphas=path_to(alphas, alphas[-1])).fit(z, y).coef_[:, -1]
    assert np.all(np.isfinite(beta)) and 0 < np.count_nonzero(beta) < p


def test_lasso_signature_finds_the_signal_and_scores_new_patients():
    rng = np.random.default_rng(4)
    n, p = 160, 60
    base = rng.normal(size=(n, p))
    base[:, 1] = base[:, 0] * 0.98 + 0.02 * rng.normal(size=n)  # redundant twin of the signal
    lp = 0.9 * base[:, 0] - 0.6 * base[:, 5]
    time, event = _survival(rng, lp)
    table = pd.DataFrame(base * 10 + 50, columns=[f"f{i}" for i in range(p)])
    table.iloc[3, 7] = np.nan  # a missing value is imputed, not fatal
    signature = fit_signature(table, time, event, SignatureSettings(seed=0))
    assert {"f5"} <= set(signature.features)
    assert len({"f0", "f1"} & set(signature.features)) == 1
    assert signature.diagnostics["n_after_redundancy"] < signature.diagnostics["n_univariate"] + 1
    score = signature.rad_score(table)
    assert np.corrcoef(score, lp)[0, 1] > 0.8
    restored = RadiomicsSignature.from_dict(json.loads(json.dumps(signature.to_dict())))
    np.testing.assert_array_equal(restored.rad_score(table), score)
    with pytest.raises(ValueError, match="lacks"):
        signature.rad_score(table.drop(columns=signature.features[:1]))


def _noise_cohort(seed: int, n: int = 120, p: int = 2000):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"original_firstorder_f{i}" for i in range(p)])
    time, event = _survival(rng, np.zeros(n))
    return table, time, event


def test_the_lasso_cross_validation_screens_inside_each_fold_so_noise_does_not_validate():
    """On pure noise a CV run after a whole-cohort screen reported C 0.68-0.77 for about 60 selected features
    (the features were kept because they ranked those very patients). Screening again in each fold gives the
    chance level it should, and the 1-SE rule then keeps a sparse model."""
    cv, selected = [], []
    for seed in range(1, 5):
        signature = fit_signature(*_noise_cohort(seed), SignatureSettings(seed=seed))
        cv.append(signature.diagnostics["cv_c_index"])
        selected.append(signature.diagnostics["n_selected"])
    assert max(cv) < 0.65 and np.mean(cv) < 0.6
    assert sum(k <= 5 for k in selected) >= 3


def test_the_cross_validated_c_of_a_real_signal_matches_new_patients():
    rng = np.random.default_rng(11)
    n, p = 320, 400
    x = rng.normal(size=(n, p))
    time, event = _survival(rng, 0.8 * x[:, 0] - 0.6 * x[:, 3])
    table = pd.DataFrame(x, columns=[f"original_firstorder_f{i}" for i in range(p)])
    signature = fit_signature(table.iloc[:160], time[:160], event[:160], SignatureSettings(seed=0))
    held_out = harrell_c(time[160:], event[160:], signature.rad_score(table.iloc[160:]))
    assert {"original_firstorder_f0", "original_firstorder_f3"} <= set(signature.features)
    assert abs(signature.diagnostics["cv_c_index"] - held_out) < 0.05
