"""Evaluation metrics, risk groups and plots against lifelines / scikit-survival references."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.cox import fit_cox
from NPCPrognosisLib.survival.metrics import (
    bootstrap_ci,
    calibration,
    evaluate_risk,
    harrell_c,
    harrell_c_columns,
    hazard_ratio,
    integrated_brier,
    kaplan_meier,
    logrank,
    paired_c_difference,
    td_auc,
    uno_c,
)
from NPCPrognosisLib.survival.plots import plot_calibration, plot_km_by_group
from NPCPrognosisLib.survival.risk_groups import assign_groups, max_logrank_cutoff

ROSSI_COV = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


def _rossi():
    r = load_rossi()
    return r["week"].to_numpy(float), r["arrest"].to_numpy(int), r


def _veterans():
    X, y = load_veterans_lung_cancer()
    return y["Survival_in_days"].astype(float), y["Status"].astype(int), X


def _gbsg():
    X, y = load_gbsg2()
    return y["time"].astype(float), y["cens"].astype(int), X


@pytest.fixture(scope="module")
def rossi_split():
    """Train/test halves of rossi with an Efron Cox model fitted on the training half."""
    _t, _e, df = _rossi()
    idx = np.random.default_rng(0).permutation(len(df))
    tr, te = df.iloc[idx[:250]], df.iloc[idx[250:]]
    model = fit_cox(tr, "week", "arrest", ROSSI_COV, ties="efron")
    return tr, te, model


def _synthetic(n=300, seed=1, censor_scale=1e6, step_at=None, hr=1.0):
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0, 1, n)
    rate = np.exp(2.0 * risk) if step_at is None else np.where(risk > step_at, hr, 1.0)
    t_event = rng.exponential(1.0 / rate) * 20
    t_cens = rng.exponential(censor_scale, n)
    return risk, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)


# ------------------------------------------------------------------------------------------ concordance
@pytest.mark.parametrize("loader", ["rossi", "veterans", "gbsg2"])
def test_harrell_c_matches_lifelines(loader):
    if loader == "rossi":
        t, e, df = _rossi()
        # Integer-valued on purpose: sksurv counts risks within 1e-8 as tied, lifelines needs exact equality,
        # so rounding noise such as 3 - 0.05 * 27 would make the references disagree in the 5th decimal.
        risk = 20 * df["prio"].to_numpy(float) - df["age"].to_numpy(float)
    elif loader == "veterans":
        t, e, X = _veterans()
        risk = -X["Karnofsky_score"].to_numpy(float)  # integer scores: many tied predictions
    else:
        t, e, X = _gbsg()
        risk = X["pnodes"].to_numpy(float) + 0.01 * X["tsize"].to_numpy(float)
    ours = harrell_c(t, e, risk)
    ref = concordance_index(t, -risk, e)  # lifelines scores predicted survival times: higher = better
    assert ours == pytest.approx(ref, abs=1e-6)
    assert 0.55 < ours < 0.8


def test_harrell_c_columns_equals_lifelines_column_by_column():
    """The vectorised C of a LASSO path: tied times (events and censored at one time) and tied risks (integer
    scores, and a constant column) as lifelines counts them, and NaN when no pair is comparable."""
    t, e, X = _veterans()
    rng = np.random.default_rng(0)
    risks = np.column_stack([-X["Karnofsky_score"].to_numpy(float), X["Age_in_years"].to_numpy(float),
                             rng.normal(size=len(t)), rng.integers(0, 3, len(t)).astype(float), np.zeros(len(t))])
    assert len(np.unique(t)) < len(t)  # the veterans' times are tied
    expected = [concordance_index(t, -risks[:, j], e) for j in range(risks.shape[1])]
    np.testing.assert_allclose(harrell_c_columns(t, e, risks), expected, atol=1e-12)
    assert np.isnan(harrell_c_columns(np.array([5.0, 3.0]), np.array([False, False]), risks[:2])).all()


def test_uno_c_close_to_harrell_without_censoring_and_handles_long_test_follow_up():
    risk, t, e = _synthetic(n=400, seed=2, censor_scale=1e6)
    assert e.mean() > 0.99
    half = slice(0, 200), slice(200, 400)
    h = harrell_c(t[half[1]], e[half[1]], risk[half[1]])
    u = uno_c(t[half[0]], e[half[0]], t[half[1]], e[half[1]], risk[half[1]])
    assert abs(u - h) < 0.02
    # Test follow-up longer than training follow-up: tau is capped instead of sksurv raising.
    u_short = uno_c(t[half[0]] / 3, e[half[0]], t[half[1]], e[half[1]], risk[half[1]])
    assert 0.5 < u_short < 1.0
    with pytest.raises(InputError):
        uno_c(t, e, t, np.zeros_like(e), risk)


def test_bootstrap_ci_brackets_estimate_and_is_reproducible():
    t, e, df = _rossi()
    risk = df["prio"].to_numpy(float)
    c = harrell_c(t, e, risk)
    ci1 = bootstrap_ci(harrell_c, t, e, risk, n_boot=200, seed=5)
    ci2 = bootstrap_ci(harrell_c, t, e, risk, n_boot=200, seed=5)
    assert ci1 == ci2
    assert ci1[0] < c < ci1[1] and ci1[1] - ci1[0] < 0.2
    # One event among 40 patients: most resamples have no event and are skipped, not fatal.
    e_rare = np.zeros(40, dtype=int)
    e_rare[3] = 1
    calls = []

    def stat(tt, ee, rr):
        calls.append(int(ee.sum()))
        return harrell_c(tt, ee, rr)

    lo, hi = bootstrap_ci(stat, t[:40], e_rare, risk[:40], n_boot=100, seed=0)
    assert calls and min(calls) >= 1 and len(calls) < 100
    assert lo <= hi


def test_td_auc_against_sksurv_and_none_outside_follow_up(rossi_split):
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    tr, te, model = rossi_split
    risk = model.linear_predictor(te)
    out = td_auc(tr.week, tr.arrest, te.week, te.arrest, risk, times=(12, 36, 60))
    assert set(out) == {"12", "36", "60"}
    assert out["60"] is None  # rossi follow-up ends at week 52
    # Events at week 52 (the last training time, where the censoring KM is 0) make sksurv itself raise.
    # Those patients are controls at 12 and 36 weeks whatever their exact time, so moving them anywhere
    # between 36 and 52 must leave the AUC unchanged: the reference moves them to 50, the library to 52-eps.
    te_time = np.minimum(te.week.to_numpy(float), 50.0)
    ref, _ = cumulative_dynamic_auc(
        Surv.from_arrays(tr.arrest.astype(bool), tr.week.astype(float)),
        Surv.from_arrays(te.arrest.astype(bool), te_time),
        risk,
        [12.0, 36.0],
    )
    assert out["12"] == pytest.approx(ref[0], abs=1e-12)
    assert out["36"] == pytest.approx(ref[1], abs=1e-12)


# ------------------------------------------------------------------------------------------ KM / log-rank / HR
@pytest.mark.parametrize("loader", ["rossi", "veterans"])
def test_kaplan_meier_matches_lifelines(loader):
    t, e, _ = _rossi() if loader == "rossi" else _veterans()
    x, s = kaplan_meier(t, e)
    kmf = KaplanMeierFitter().fit(t, e)
    ev = np.unique(t[e == 1])
    ours = s[np.searchsorted(x, ev)]
    ref = kmf.survival_function_at_times(ev).to_numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("loader", ["rossi", "gbsg2"])
def test_logrank_matches_lifelines(loader):
    if loader == "rossi":
        t, e, df = _rossi()
        g = df["fin"].to_numpy(int)
    else:
        t, e, X = _gbsg()
        g = (X["horTh"] == "yes").to_numpy(int)
    chi2, p = logrank(t, e, g)
    ref = logrank_test(t[g == 1], t[g == 0], e[g == 1], e[g == 0])
    assert chi2 == pytest.approx(ref.test_statistic, abs=1e-6)
    assert p == pytest.approx(ref.p_value, abs=1e-6)


def test_logrank_with_a_group_never_at_risk_at_an_event_says_so_and_the_subgroup_table_records_it():
    """Three small arms, one censored before the first event (what a T1-2N1 risk-group subgroup of 200 held-out
    patients can hold): the variance matrix is singular; ``evaluate`` must record why, not stop."""
    from NPCPrognosisLib.survival.benefit_evaluation import three_arm_logrank

    t = np.array([5.0, 6, 7, 8, 9, 10, 1, 1.5])
    e = np.array([1, 0, 1, 1, 0, 1, 0, 0], bool)
    g = np.array(["a", "a", "b", "b", "a", "b", "c", "c"])
    with pytest.raises(InputError, match=r"\['c'\] have no patient at risk"):
        logrank(t, e, g)
    block = three_arm_logrank(t, e, g)
    assert block["p"] is None and "no patient at risk" in block["reason"] and block["arms"]["c"]["n"] == 2
    # the two arms that are at risk: the ordinary test, as lifelines computes it
    keep = g != "c"
    chi2, p = three_arm_logrank(t[keep], e[keep], g[keep])["chi2"], three_arm_logrank(t[keep], e[keep], g[keep])["p"]
    ref = logrank_test(t[g == "a"], t[g == "b"], e[g == "a"], e[g == "b"])
    assert chi2 == pytest.approx(ref.test_statistic, abs=1e-6) and p == pytest.approx(ref.p_value, abs=1e-6)


def test_hazard_ratio_matches_lifelines():
    t, e, df = _rossi()
    g = np.where(df["fin"].to_numpy() == 1, "high", "low")
    hr, lo, hi = hazard_ratio(t, e, g)
    ref = CoxPHFitter().fit(pd.DataFrame({"t": t, "e": e, "g": (g == "high").astype(int)}), "t", "e")
    assert hr == pytest.approx(math.exp(ref.params_["g"]), rel=1e-5)
    lo_ref, hi_ref = np.exp(ref.confidence_intervals_.loc["g"].to_numpy())
    assert (lo, hi) == (pytest.approx(lo_ref, rel=1e-5), pytest.approx(hi_ref, rel=1e-5))
    with pytest.raises(InputError):
        hazard_ratio(t, e, np.where(g == "high", "hi", "lo"))


# ------------------------------------------------------------------------------------------ calibration / Brier
def test_calibration_groups_and_km_observed(rossi_split):
    _tr, te, model = rossi_split
    s36 = model.survival_at(te, [36.0])[:, 0]
    rows = calibration(s36, te.week, te.arrest, 36.0, n_groups=4)
    assert [r["group"] for r in rows] == [1, 2, 3, 4]
    assert sum(r["n"] for r in rows) == len(te)
    preds = [r["predicted"] for r in rows]
    assert preds == sorted(preds)
    # Observed of the lowest-prediction group equals lifelines' KM of exactly those patients.
    order = np.argsort(s36, kind="mergesort")[: rows[0]["n"]]
    kmf = KaplanMeierFitter().fit(te.week.to_numpy()[order], te.arrest.to_numpy()[order])
    assert rows[0]["observed"] == pytest.approx(float(kmf.survival_function_at_times(36.0).iloc[0]), abs=1e-9)
    lo, hi = rows[0]["observed_95ci"]
    assert lo < rows[0]["observed"] < hi
    assert all(r["observed"] is None for r in calibration(s36, te.week, te.arrest, 60.0))


def test_calibration_group_whose_every_patient_had_the_event_observes_zero_not_unknown():
    # the worst-prognosis group (lowest predicted survival) all had the event by month 5, the other group's
    # follow-up ends censored: survival at 12 is known to be 0 in the first and unknown in a censored tail
    t = np.array([2, 3, 4, 5, 20, 30, 40, 50.0])
    e = np.array([1, 1, 1, 1, 0, 1, 0, 0])
    rows = calibration(np.array([0.1, 0.1, 0.2, 0.2, 0.7, 0.8, 0.8, 0.9]), t, e, 12.0, n_groups=2)
    assert rows[0]["observed"] == pytest.approx(float(KaplanMeierFitter().fit(t[:4], e[:4]).predict(12.0)))
    assert rows[0]["observed"] == 0.0 and rows[1]["observed"] == 1.0
    censored_tail = calibration(np.array([0.1, 0.1, 0.2, 0.2]), np.array([2, 3, 4, 5.0]), np.array([1, 0, 1, 0]),
                                12.0, n_groups=1)
    assert censored_tail[0]["observed"] is None


def test_calibration_group_without_an_event_has_an_exact_lower_bound_not_a_zero_width_interval():
    # Greenwood's variance is 0 when nobody has had the event, and the log-log interval collapses to [1, 1]; four
    # patients followed past month 12 without an event bound survival at 12 from below as a binomial 4 of 4 does
    from scipy.stats import binomtest

    t = np.array([2, 3, 4, 5, 20, 30, 40, 50.0])
    e = np.array([1, 1, 1, 1, 0, 1, 0, 0])
    rows = calibration(np.array([0.1, 0.1, 0.2, 0.2, 0.7, 0.8, 0.8, 0.9]), t, e, 12.0, n_groups=2)
    exact = binomtest(4, 4).proportion_ci(confidence_level=0.95, method="exact")
    assert rows[1]["observed"] == 1.0
    assert rows[1]["observed_95ci"] == [pytest.approx(exact.low, rel=1e-9), 1.0]
    # only the patients followed to t count: one censored at month 10 is not evidence about month 12
    early = calibration(np.full(5, 0.9), np.array([10, 20, 30, 40, 50.0]), np.zeros(5), 12.0, n_groups=1)
    assert early[0]["observed_95ci"][0] == pytest.approx(binomtest(4, 4).proportion_ci(method="exact").low)
    # before the first observed time every patient counts
    first = calibration(np.full(5, 0.9), np.array([10, 20, 30, 40, 50.0]), np.ones(5), 5.0, n_groups=1)
    assert first[0]["observed_95ci"][0] == pytest.approx(binomtest(5, 5).proportion_ci(method="exact").low)


def test_hazard_ratio_of_groups_whose_event_times_do_not_overlap_is_refused_and_reported():
    # the low group's events (months 5 and 8) come after every high-risk patient has left: lifelines and sksurv
    # stop at an arbitrary huge coefficient; the report must say the ratio is undefined instead of printing it
    t = np.array([1, 1, 2, 2, 3, 5, 8, 9.0])
    e = np.array([1, 0, 1, 0, 0, 1, 1, 0])
    r = np.array([3, 3, 2, 2, 0, 0, -1, -1.0])
    with pytest.raises(InputError, match="do not overlap"):
        hazard_ratio(t, e, (r > 1).astype(int))
    out = evaluate_risk(r, t, e, t, e, cutoff=1.0, n_boot=20, times=(4.0,))
    assert out["hr_high_vs_low"] is None and out["hr_high_vs_low_95ci"] == [None, None]
    assert any("do not overlap" in w for w in out["warnings"])
    assert out["logrank_p"] is not None  # the groups are still compared



def test_a_non_finite_predicted_survival_costs_the_calibration_not_every_metric():
    t = np.array([1, 2, 3, 4, 5, 6, 7, 8.0])
    e = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    r = np.array([3, 2, 2.5, 1, 0, 0.5, -1, 1.5])

    def survival_at(times):
        surv = np.exp(-np.outer(np.exp(r), np.asarray(times)) / 10)
        surv[2] = np.nan  # a linear predictor that overflowed
        return surv

    out = evaluate_risk(r, t, e, t, e, cutoff=1.0, n_boot=20, times=(4.0,), survival_at=survival_at)
    assert out["calibration"] == {} and any(w.startswith("calibration at 4 months:") for w in out["warnings"])
    assert out["c_index"] is not None and out["logrank_p"] is not None


def test_integrated_brier_against_sksurv(rossi_split):
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    tr, te, model = rossi_split
    grid = np.arange(4.0, 50.0, 4.0)
    S = model.survival_at(te, grid)
    ours = integrated_brier(tr.week, tr.arrest, te.week, te.arrest, S, grid)
    ref = integrated_brier_score(
        Surv.from_arrays(tr.arrest.astype(bool), tr.week.astype(float)),
        Surv.from_arrays(te.arrest.astype(bool), te.week.astype(float)),
        S,
        grid,
    )
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0 < ours < 0.25
    far = np.array([100.0, 200.0])
    assert integrated_brier(tr.week, tr.arrest, te.week, te.arrest, model.survival_at(te, far), far) is None


# ------------------------------------------------------------------------------------------ evaluate_risk
EXPECTED_KEYS = {
    "c_index",
    "c_index_95ci",
    "uno_c",
    "td_auc",
    "logrank_p",
    "logrank_chi2",
    "hr_high_vs_low",
    "hr_high_vs_low_95ci",
    "n_high",
    "n_low",
    "calibration",
    "integrated_brier",
    "integrated_brier_months",
    "warnings",
}


def test_evaluate_risk_on_rossi(rossi_split):
    tr, te, model = rossi_split
    cut = max_logrank_cutoff(model.linear_predictor(tr), tr.week, tr.arrest)["cutoff"]
    risk = model.linear_predictor(te)
    out = evaluate_risk(
        risk,
        te.week,
        te.arrest,
        tr.week,
        tr.arrest,
        cutoff=cut,
        survival_at=lambda ts: model.survival_at(te, ts),
        n_boot=100,
        times=(20, 40),
    )
    assert EXPECTED_KEYS <= set(out)
    json.dumps(out, allow_nan=False)  # JSON-able, no NaN
    scalars = ["c_index", "uno_c", "logrank_p", "logrank_chi2", "hr_high_vs_low", "integrated_brier"]
    assert all(isinstance(out[k], float) and math.isfinite(out[k]) for k in scalars)
    assert all(isinstance(v, float) for v in out["c_index_95ci"] + out["hr_high_vs_low_95ci"])
    assert set(out["td_auc"]) == {"20", "40"} and all(0 < v < 1 for v in out["td_auc"].values())
    assert set(out["calibration"]) == {"20", "40"}
    assert out["c_index"] == pytest.approx(harrell_c(te.week, te.arrest, risk))
    assert out["n_high"] + out["n_low"] == len(te) and out["n_high"] == int((risk > cut).sum())
    assert out["c_index_95ci"][0] < out["c_index"] < out["c_index_95ci"][1]
    assert out["warnings"] == []
    # the integrated Brier score says over which months it was integrated, and is sksurv's over exactly those
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    start, end = out["integrated_brier_months"]
    grid = np.unique(np.percentile(te.week, np.linspace(10, 90, 17)))
    grid = grid[(grid >= start) & (grid <= end)]
    assert start == pytest.approx(np.percentile(te.week, 10)) and len(grid) >= 2
    reference = integrated_brier_score(Surv.from_arrays(tr.arrest.astype(bool), tr.week),
                                       Surv.from_arrays(te.arrest.astype(bool), te.week),
                                       model.survival_at(te, grid), grid)
    assert out["integrated_brier"] == pytest.approx(reference, rel=1e-9)


def test_censoring_weights_from_the_scored_cohort_recover_the_uncensored_truth():
    """An external cohort lost to follow-up early (median ~30 months) scored with the training cohort's censoring
    (administrative at 100 months only) is misweighted: the reviewer measured Brier 0.116 vs 0.202 at 36 months.
    With the cohort's own censoring, the integrated Brier score and Uno's C are those of the uncensored event times
    (true model, known survival), and evaluate_risk reports the months it used."""
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(5)
    n = 2000
    x_train, x = rng.normal(size=n), rng.normal(size=n)
    t_train_true = rng.exponential(60 * np.exp(-0.8 * x_train))
    train_time, train_event = np.minimum(t_train_true, 100.0), t_train_true <= 100.0
    true_time = rng.exponential(60 * np.exp(-0.8 * x))
    censor = np.minimum(rng.exponential(45, n), 99.0)
    time, event = np.minimum(true_time, censor), true_time <= censor

    def survival_at(months):
        return np.exp(-np.asarray(months, float)[None, :] / (60 * np.exp(-0.8 * x))[:, None])

    out = evaluate_risk(x, time, event, time, event, cutoff=0.0, survival_at=survival_at, n_boot=10)
    start, end = out["integrated_brier_months"]
    grid = np.unique(np.percentile(time, np.linspace(10, 90, 17)))
    grid = grid[(grid >= start) & (grid <= end)]
    brier = np.mean(((true_time[:, None] > grid[None, :]) - survival_at(grid)) ** 2, axis=0)
    truth = np.trapezoid(brier, grid) / (grid[-1] - grid[0])
    assert out["integrated_brier"] == pytest.approx(truth, abs=0.01)
    assert integrated_brier(train_time, train_event, time, event, survival_at(grid), grid) < truth - 0.04
    # Uno's C to tau: the uncensored C of the patients' true times truncated at tau
    assert out["uno_c_tau"] == out["ipcw_horizon_months"] == pytest.approx(time.max())
    truncated = np.minimum(true_time, out["uno_c_tau"])
    expected = concordance_index_censored(true_time < out["uno_c_tau"], truncated, x)[0]
    assert out["uno_c"] == pytest.approx(expected, abs=0.02)


def test_ipcw_intervals_come_from_the_c_index_resamples(rossi_split):
    """With ipcw_intervals, Uno's C, the td-AUCs and the integrated Brier score get percentile intervals from the
    very resamples of the C-index's (whose interval does not move), the censoring weights those of the whole cohort:
    checked against sksurv on the same resamples."""
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    _tr, te, model = rossi_split
    t, e = te.week.to_numpy(float), te.arrest.to_numpy(bool)
    risk = model.linear_predictor(te)
    out = evaluate_risk(risk, t, e, t, e, cutoff=float(np.median(risk)), n_boot=60, seed=4, times=(20, 40),
                        survival_at=lambda ts: model.survival_at(te, ts), ipcw_intervals=True)
    plain = evaluate_risk(risk, t, e, t, e, cutoff=float(np.median(risk)), n_boot=60, seed=4, times=(20, 40))
    assert out["c_index_95ci"] == plain["c_index_95ci"] and plain["uno_c_95ci"] == [None, None]
    whole = Surv.from_arrays(e, t)
    tau, horizon = out["uno_c_tau"], out["ipcw_horizon_months"]
    start, end = out["integrated_brier_months"]
    grid = np.unique(np.percentile(t, np.linspace(10, 90, 17)))
    grid = grid[(grid >= start) & (grid <= end)]
    S = model.survival_at(te, grid)
    draws = {"uno": [], "20": [], "40": [], "ibs": []}
    rng = np.random.default_rng(4)
    for _ in range(60):
        idx = rng.integers(0, len(t), len(t))
        if not e[idx].any():
            continue
        sample = Surv.from_arrays(e[idx], np.minimum(t[idx], horizon))
        draws["uno"].append(concordance_index_ipcw(whole, Surv.from_arrays(e[idx], t[idx]), risk[idx], tau=tau)[0])
        for months in (20, 40):
            if (e[idx] & (t[idx] <= months)).any() and months < t[idx].max():
                draws[str(months)].append(cumulative_dynamic_auc(whole, sample, risk[idx], [float(months)])[0][0])
        if t[idx].min() <= grid[0] and grid[-1] < t[idx].max():
            draws["ibs"].append(integrated_brier_score(whole, sample, S[idx], grid))
    np.testing.assert_allclose(out["uno_c_95ci"], np.percentile(draws["uno"], [2.5, 97.5]), atol=1e-10)
    for months in ("20", "40"):
        np.testing.assert_allclose(out["td_auc_95ci"][months], np.percentile(draws[months], [2.5, 97.5]), atol=1e-10)
    np.testing.assert_allclose(out["integrated_brier_95ci"], np.percentile(draws["ibs"], [2.5, 97.5]), atol=1e-10)
    assert out["uno_c_95ci"][0] < out["uno_c"] < out["uno_c_95ci"][1]


def test_a_hazard_ratio_that_cannot_be_estimated_is_said_in_words_with_its_reason():
    """evaluate printed 'warning: hr_high_vs_low: one risk group has no events', a metrics.json key a clinician
    cannot read, and metrics.json kept no reason the cohort page could show beside the missing ratio."""
    t = np.array([2, 4, 6, 8, 10, 12, 14, 16.0])
    e = np.array([1, 0, 1, 0, 1, 0, 0, 0])  # every event in the high-risk group
    r = np.array([3, -1, 2.5, -0.5, 2, 0, 1.5, -1.5])  # the groups alternate in time
    out = evaluate_risk(r, t, e, t, e, cutoff=1.0, n_boot=20, times=(6.0,))
    assert out["hr_high_vs_low"] is None and out["logrank_p"] is not None
    assert out["hr_high_vs_low_not_estimable"] == "one risk group has no events"
    assert "hazard ratio of high vs low risk: not estimable, one risk group has no events (the ratio would be " \
        "infinite or zero)" in out["warnings"]
    assert not any("hr_high_vs_low" in w or w.startswith("logrank") for w in out["warnings"])
    every_patient_low = evaluate_risk(r, t, e, t, e, cutoff=10.0, n_boot=0, times=(6.0,))
    assert every_patient_low["hr_high_vs_low_not_estimable"] == "every patient falls in one risk group"
    separated = evaluate_risk(np.array([3, 3, 2, 2, 0, 0, -1, -1.0]), np.array([1, 1, 2, 2, 3, 5, 8, 9.0]),
                              np.array([1, 0, 1, 0, 0, 1, 1, 0]), t, e, cutoff=1.0, n_boot=0, times=(4.0,))
    assert separated["hr_high_vs_low_not_estimable"] == "no finite estimate, see the warnings"
    assert any(w.startswith("hazard ratio of high vs low risk: ") and "do not overlap" in w
               for w in separated["warnings"])
    estimable = evaluate_risk(r, t, np.array([1, 1, 1, 0, 0, 1, 1, 0]), t, e, cutoff=1.0, n_boot=0, times=(6.0,))
    assert estimable["hr_high_vs_low"] is not None and "hr_high_vs_low_not_estimable" not in estimable


def test_paired_c_difference_refuses_a_cohort_without_a_pair():
    with pytest.raises(InputError, match="1 patient"):
        paired_c_difference([12.0], [1], [0.3], [0.1])
    with pytest.raises(InputError, match="0 event"):
        paired_c_difference([12.0, 30.0, 40.0], [0, 0, 0], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3])


def test_evaluate_risk_degenerate_cases_warn_instead_of_crashing(rossi_split):
    tr, te, model = rossi_split
    risk = model.linear_predictor(te)
    out = evaluate_risk(risk, te.week, te.arrest, tr.week, tr.arrest, cutoff=risk.max() + 1, n_boot=20)
    assert out["n_high"] == 0 and out["logrank_p"] is None and out["hr_high_vs_low"] is None
    assert out["td_auc"]["60"] is None  # default time points (36, 60); rossi ends at week 52
    assert any("low-risk group" in w for w in out["warnings"])
    # said in words: "time-dependent AUC at 60 months: ..." (was "td_auc at 60: ..."), no metrics.json key
    assert "time-dependent AUC at 60 months: time point outside follow-up or without cases/controls" in out["warnings"]
    assert not any(w.split(":")[0].split(" at ")[0] in out for w in out["warnings"]), out["warnings"]
    json.dumps(out, allow_nan=False)

    none = evaluate_risk(risk, te.week, np.zeros(len(te)), tr.week, tr.arrest, cutoff=0.0, n_boot=20)
    assert none["c_index"] is None and none["events"] == 0 and none["warnings"]
    json.dumps(none, allow_nan=False)


def test_evaluate_risk_rejects_bad_input(rossi_split):
    tr, te, model = rossi_split
    risk = model.linear_predictor(te)
    with pytest.raises(InputError):
        evaluate_risk(risk[:-1], te.week, te.arrest, tr.week, tr.arrest, cutoff=0.0)
    bad_t = te.week.to_numpy(float).copy()
    bad_t[4] = np.nan
    with pytest.raises(InputError, match="follow-up time"):
        evaluate_risk(risk, bad_t, te.arrest, tr.week, tr.arrest, cutoff=0.0)
    with pytest.raises(InputError, match="0/1"):
        evaluate_risk(risk, te.week, te.arrest.to_numpy() * 2, tr.week, tr.arrest, cutoff=0.0)
    bad_r = risk.copy()
    bad_r[0] = np.inf
    with pytest.raises(InputError, match="risk"):
        evaluate_risk(bad_r, te.week, te.arrest, tr.week, tr.arrest, cutoff=0.0)


# ------------------------------------------------------------------------------------------ risk groups
def test_max_logrank_cutoff_recovers_planted_step():
    risk, t, e = _synthetic(n=600, seed=4, censor_scale=40.0, step_at=0.6, hr=5.0)
    res = max_logrank_cutoff(risk, t, e)
    assert set(res) == {"cutoff", "chi2", "n_high", "n_low", "min_share"}
    assert abs(res["cutoff"] - 0.6) < 0.05
    assert res["n_high"] == int((risk > res["cutoff"]).sum()) and res["n_high"] + res["n_low"] == 600


def test_max_logrank_cutoff_is_the_brute_force_maximum_and_respects_min_share():
    risk, t, e = _synthetic(n=120, seed=7, censor_scale=30.0, step_at=0.93, hr=6.0)
    res = max_logrank_cutoff(risk, t, e, min_share=0.25)
    assert res["n_high"] >= 30 and res["n_low"] >= 30
    rs = np.sort(risk)
    best = -1.0
    for a, b in zip(rs[:-1], rs[1:]):
        c = (a + b) / 2
        high = risk > c
        if high.sum() < 30 or (~high).sum() < 30:
            continue
        best = max(best, logrank_test(t[high], t[~high], e[high], e[~high]).test_statistic)
    assert res["chi2"] == pytest.approx(best, rel=1e-9)
    # The planted step (top 7 %) is unreachable with min_share 0.25, so the cut sits at the allowed edge.
    assert res["n_high"] <= 45
    with pytest.raises(InputError):
        max_logrank_cutoff(np.ones(50), t[:50], e[:50])


def test_max_logrank_cutoff_keeps_risks_a_rounding_apart_in_one_group():
    # patients with identical factors get linear predictors an ulp apart from the BLAS: they are one risk value,
    # so no cut falls between them (a midpoint of two neighbouring floats can round onto the upper one)
    a = 0.3
    r = np.r_[np.full(30, a), np.full(10, np.nextafter(a, 1.0)), np.linspace(1.0, 2.0, 20)]
    rng = np.random.default_rng(3)
    t = np.r_[rng.uniform(5, 60, 40), rng.uniform(1, 10, 20)]
    e = np.ones(60, dtype=bool)
    res = max_logrank_cutoff(r, t, e)
    high = r > res["cutoff"]
    assert high[:40].sum() in (0, 40)
    assert res["n_high"] == int(high.sum()) == 20
    with pytest.raises(InputError, match="no cut-off"):
        max_logrank_cutoff(r[:40], t[:40], e[:40])


def test_assign_groups():
    groups = assign_groups([0.1, 0.5, 0.9, 0.5], 0.5)
    assert groups.tolist() == ["low", "low", "high", "low"]


# ------------------------------------------------------------------------------------------ plots
def test_plots_write_png_that_reopen(tmp_path, rossi_split):
    import matplotlib
    import matplotlib.image as mpimg

    backend_before = matplotlib.get_backend()
    _tr, te, model = rossi_split
    risk = model.linear_predictor(te)
    groups = assign_groups(risk, np.median(risk))
    km = plot_km_by_group(
        tmp_path / "km" / "km.png",
        te.week,
        te.arrest,
        groups,
        "Test cohort",
        logrank_p=0.012,
        hr=(2.1, 1.2, 3.5),
    )
    s = model.survival_at(te, [36.0])[:, 0]
    rows = calibration(s, te.week, te.arrest, 36.0)
    rows.append(
        {"group": 5, "n": 3, "events": 0, "predicted": 0.9, "observed": None, "observed_95ci": [None, None]}
    )
    cal = plot_calibration(tmp_path / "cal.png", rows, 36.0, "Calibration at 36 weeks")
    for path in (km, cal):
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].std() > 0.01  # something was drawn
    assert matplotlib.get_backend() == backend_before
    with pytest.raises(InputError):
        plot_km_by_group(tmp_path / "x.png", te.week, te.arrest, groups[:-1], "bad")
