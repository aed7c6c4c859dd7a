"""Binary-endpoint classifiers and metrics: JSON models predict as scikit-learn does; DeLong against the
textbook pairwise formulas; calibration against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from NPCPrognosisLib.classification import metrics as bm
from NPCPrognosisLib.classification.models import FAMILIES, fit_classifier, make_estimator, predict_proba
from NPCPrognosisLib.errors import InputError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 5)) * [1, 2, 0.5, 10, 1] + [0, 1, 0, 50, 0]
    logit = 1.2 * X[:, 0] - 0.6 * X[:, 1] + 0.1 * (X[:, 3] - 50)
    y = (rng.random(160) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y, rng.normal(size=(60, 5)) * [1, 2, 0.5, 10, 1] + [0, 1, 0, 50, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_json_classifier_predicts_as_scikit_learn(data, family):
    X, y, new = data
    model = json.loads(json.dumps(fit_classifier(family, X, y, [f"x{i}" for i in range(5)], seed=1)))
    mean, scale = X.mean(0), X.std(0)
    reference = make_estimator(family, seed=1).fit((X - mean) / scale, y).predict_proba((new - mean) / scale)[:, 1]
    np.testing.assert_allclose(predict_proba(model, new), reference, atol=1e-10)


def test_classifier_needs_both_outcomes(data):
    X, _, _ = data
    with pytest.raises(InputError, match="both outcomes"):
        fit_classifier("logistic", X, np.ones(len(X)), ["a"] * 5)


def _pairwise_auc_and_components(y, s):
    """DeLong's definitions written out pair by pair (O(m n)), independent of the mid-rank shortcut."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def test_delong_matches_the_pairwise_definition_and_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(120) < 0.4
    a = np.round(y * 0.8 + rng.normal(size=120), 1)  # ties on purpose
    b = y * 0.3 + rng.normal(size=120)
    auc_a, v10a, v01a = _pairwise_auc_and_components(y, a)
    auc_b, v10b, v01b = _pairwise_auc_and_components(y, b)
    m, n = y.sum(), (~y).sum()
    var_a = v10a.var(ddof=1) / m + v01a.var(ddof=1) / n
    cov_ab = np.cov(v10a, v10b)[0, 1] / m + np.cov(v01a, v01b)[0, 1] / n
    var_b = v10b.var(ddof=1) / m + v01b.var(ddof=1) / n
    ours = bm.delong_auc(y, a)
    assert ours["auc"] == pytest.approx(auc_a) == pytest.approx(roc_auc_score(y, a))
    assert ours["se"] == pytest.approx(np.sqrt(var_a))
    test = bm.delong_test(y, a, b)
    z = (auc_a - auc_b) / np.sqrt(var_a + var_b - 2 * cov_ab)
    from scipy.stats import norm
    assert test["auc_difference"] == pytest.approx(auc_a - auc_b)
    assert test["p"] == pytest.approx(2 * norm.sf(abs(z)))


def test_threshold_metrics_and_youden():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    assert bm.youden_threshold(y, p) == pytest.approx(0.7) or bm.youden_threshold(y, p) == pytest.approx(0.4)
    got = bm.threshold_metrics(y, p, 0.5)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 1, 2)
    assert got["sensitivity"] == pytest.approx(2 / 3) and got["ppv"] == pytest.approx(2 / 3)


def test_calibration_of_true_probabilities_is_near_perfect():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 20000)
    y = rng.random(20000) < p
    cal = bm.calibration_binary(y, p)
    assert cal["slope"] == pytest.approx(1.0, abs=0.06) and cal["intercept"] == pytest.approx(0.0, abs=0.05)
    too_extreme = 1 / (1 + np.exp(-2 * np.log(p / (1 - p))))
    assert bm.calibration_binary(y, too_extreme)["slope"] == pytest.approx(0.5, abs=0.04)


def test_the_auc_interval_does_not_collapse_with_three_cases_and_keeps_its_coverage():
    """Three responders ranked above every non-responder gave 'AUC 1.000 (95% CI 1.000-1.000)': DeLong's variance
    comes from the three cases' placements, and is 0 when they all rank first. With fewer than SMALL_CLASS patients
    in a class the interval is the score interval, checked here against Hanley & McNeil's variance written in its
    own Q1/Q2 form and, by simulation, against the true AUC it should hold 95 % of the time."""
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    y = np.r_[np.ones(3), np.zeros(37)].astype(int)
    perfect = bm.delong_auc(y, np.r_[0.9, 0.8, 0.7, rng.uniform(0, 0.65, 37)])
    assert perfect["auc"] == 1.0 and perfect["se"] == 0.0
    low, high = perfect["auc_95ci"]
    assert high == 1.0 and 0.55 < low < 0.8, perfect["auc_95ci"]
    assert "score interval" in perfect["ci_method"]

    def hanley_mcneil(theta, m, n):  # Hanley & McNeil (1982), both sample sizes set to their mean (Newcombe 2006)
        q1, q2, half = theta / (2 - theta), 2 * theta ** 2 / (1 + theta), (m + n) / 2
        return (theta * (1 - theta) + (half - 1) * (q1 - theta ** 2) + (half - 1) * (q2 - theta ** 2)) / (m * n)

    for auc, m, n in ((1.0, 3, 37), (0.7, 3, 37), (0.85, 6, 60)):
        for bound in bm.auc_score_interval(auc, m, n):
            if 0 < bound < 1:
                assert (auc - bound) ** 2 == pytest.approx(1.959964 ** 2 * hanley_mcneil(bound, m, n), rel=1e-6)

    # coverage of the true AUC over simulated 3-case cohorts (binormal, separation 1.8: AUC 0.898)
    true_auc, held, held_delong = norm.cdf(1.8 / np.sqrt(2)), 0, 0
    for _ in range(400):
        scores = np.r_[rng.normal(1.8, 1, 3), rng.normal(0, 1, 37)]
        result = bm.delong_auc(y, scores)
        low, high = result["auc_95ci"]
        held += low <= true_auc <= high
        a, se = result["auc"], result["se"]
        held_delong += a - 1.96 * se <= true_auc <= a + 1.96 * se
    assert held / 400 >= 0.82 and held_delong / 400 <= 0.75, (held, held_delong)
    # with enough patients of each outcome the interval stays DeLong's
    many = rng.random(200) < 0.4
    assert bm.delong_auc(many, many + rng.normal(size=200))["ci_method"] == "DeLong"


def test_a_delong_comparison_resting_on_few_patients_says_its_p_is_optimistic():
    """Two models compared on 3 non-responders and 17 responders: DeLong's test gave its p value as if it were as
    sure as with 20 of each. Simulated here with two models of equal true AUC (correlated through a shared score),
    p < 0.05 comes out more often than 5 % of the time with 3 cases, and about 5 % with 20 of each; the comparison
    now carries a note under the same rule as the AUC's score interval (fewer than SMALL_CLASS in a class)."""
    rng = np.random.default_rng(11)

    def false_alarms(cases, controls, cohorts=1500):
        y = np.r_[np.ones(cases), np.zeros(controls)].astype(int)
        alarms = 0
        for _ in range(cohorts):
            shared = rng.normal(size=len(y)) + y
            alarms += bm.delong_test(y, shared + rng.normal(size=len(y)), shared + rng.normal(size=len(y)))["p"] < 0.05
        return alarms / cohorts

    few, enough = false_alarms(3, 17), false_alarms(20, 20)
    assert few > 0.06 and enough < 0.06 and few > enough + 0.01, (few, enough)

    y = np.r_[np.zeros(3), np.ones(17)].astype(int)
    a, b = rng.normal(size=20) + y, rng.normal(size=20) + y
    assert "only 3 patient(s) in the scarcer class" in bm.delong_test(y, a, b)["note"]
    assert bm.few_in_a_class(y) and bm.scarcer_class(y) == 3
    y = np.r_[np.zeros(10), np.ones(12)].astype(int)
    assert "note" not in bm.delong_test(y, rng.normal(size=22), rng.normal(size=22))
    assert not bm.few_in_a_class(y)
