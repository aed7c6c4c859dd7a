"""Cox model fit, inference and persistence against independent references (lifelines, scipy, sksurv)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from lifelines.utils import concordance_index
from scipy.optimize import minimize
from sksurv.datasets import load_gbsg2

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.pipeline.cox_table import cox_table
from NPCPrognosisLib.survival.cox import CoxModel, fit_cox

ROSSI_COV = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
GBSG_COV = ["age", "tsize", "pnodes", "progrec", "estrec"]


@pytest.fixture(scope="module")
def rossi():
    return load_rossi()


@pytest.fixture(scope="module")
def gbsg():
    X, y = load_gbsg2()
    df = X[GBSG_COV].astype(float).copy()
    df["time"] = y["time"]
    df["event"] = y["cens"].astype(int)
    return df


@pytest.fixture(scope="module")
def rossi_efron(rossi):
    return fit_cox(rossi, "week", "arrest", ROSSI_COV, ties="efron")


@pytest.fixture(scope="module")
def rossi_lifelines(rossi):
    return CoxPHFitter().fit(rossi[ROSSI_COV + ["week", "arrest"]], "week", "arrest")


def _breslow_nll(beta, X, time, event):
    """Breslow partial likelihood written out patient by patient (independent of the library code)."""
    lp = X @ beta
    ll = 0.0
    for i in np.flatnonzero(event):
        at_risk = time >= time[i]
        ll += lp[i] - math.log(np.exp(lp[at_risk]).sum())
    return -ll


def _continuous_cohort(n=250, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    t_event = rng.exponential(np.exp(-(X @ np.array([0.7, -0.4, 0.0]))) * 10)
    t_cens = rng.exponential(15.0, n)
    time = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(int)
    assert len(np.unique(time)) == n  # continuous: no ties at all
    return X, time, event


# ------------------------------------------------------------------------------------------ Efron vs lifelines
def test_efron_matches_lifelines_on_rossi(rossi, rossi_efron, rossi_lifelines):
    ref = rossi_lifelines
    np.testing.assert_allclose(rossi_efron.coef, ref.params_[ROSSI_COV].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(rossi_efron.se, ref.standard_errors_[ROSSI_COV].to_numpy(), atol=1e-4)
    p = np.array([row["p"] for row in rossi_efron.summary()])
    np.testing.assert_allclose(p, ref.summary.loc[ROSSI_COV, "p"].to_numpy(), atol=1e-4)
    assert rossi_efron.log_likelihood == pytest.approx(ref.log_likelihood_, abs=1e-6)
    assert (rossi_efron.n, rossi_efron.events) == (432, 114)
    # Without a covariate list every column except the outcome (and patient_id) is a covariate.
    default = fit_cox(rossi[["week", "arrest", *ROSSI_COV]], "week", "arrest", ties="efron")
    assert default.covariates == ROSSI_COV
    np.testing.assert_allclose(default.coef, rossi_efron.coef, atol=1e-12)


def test_efron_matches_lifelines_on_gbsg2(gbsg):
    model = fit_cox(gbsg, gbsg["time"].to_numpy(), gbsg["event"].to_numpy(), GBSG_COV, ties="efron")
    ref = CoxPHFitter().fit(gbsg, "time", "event")
    np.testing.assert_allclose(model.coef, ref.params_[GBSG_COV].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(model.se, ref.standard_errors_[GBSG_COV].to_numpy(), atol=1e-4)
    p = np.array([row["p"] for row in model.summary()])
    np.testing.assert_allclose(p, ref.summary.loc[GBSG_COV, "p"].to_numpy(), atol=1e-4)
    ci = np.array([row["hr_95ci"] for row in model.summary()])
    ref_ci = np.exp(ref.confidence_intervals_.loc[GBSG_COV].to_numpy())
    np.testing.assert_allclose(ci, ref_ci, rtol=1e-4)


# ------------------------------------------------------------------------------------------ Breslow
def test_breslow_matches_direct_optimisation_and_published_values(rossi):
    X = rossi[ROSSI_COV].to_numpy(float)
    t = rossi["week"].to_numpy(float)
    e = rossi["arrest"].to_numpy().astype(bool)
    model = fit_cox(rossi, t, e, ROSSI_COV, ties="breslow")

    Xc = X - X.mean(axis=0)
    res = minimize(
        _breslow_nll, np.zeros(len(ROSSI_COV)), args=(Xc, t, e), method="BFGS", options={"gtol": 1e-7}
    )
    np.testing.assert_allclose(model.coef, res.x, atol=1e-4)
    assert model.log_likelihood == pytest.approx(-res.fun, abs=1e-6)
    # Fox & Weisberg, "Cox Proportional-Hazards Regression for Survival Data in R" (Breslow fit of the Rossi data)
    published = [-0.379, -0.0572, 0.314, -0.151, -0.433, -0.0849, 0.0911]
    np.testing.assert_allclose(model.coef, published, atol=6e-4)

    # SE from a finite-difference Hessian of the independent likelihood.
    h = 1e-4
    k = len(res.x)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            ei, ej = np.eye(k)[i] * h, np.eye(k)[j] * h
            H[i, j] = (
                _breslow_nll(model.coef + ei + ej, Xc, t, e)
                - _breslow_nll(model.coef + ei - ej, Xc, t, e)
                - _breslow_nll(model.coef - ei + ej, Xc, t, e)
                + _breslow_nll(model.coef - ei - ej, Xc, t, e)
            ) / (4 * h * h)
    np.testing.assert_allclose(model.se, np.sqrt(np.diag(np.linalg.inv(H))), rtol=1e-3)


def test_breslow_equals_efron_without_ties():
    X, t, e = _continuous_cohort()
    b = fit_cox(X, t, e, ties="breslow")
    f = fit_cox(X, t, e, ties="efron")
    np.testing.assert_allclose(b.coef, f.coef, atol=1e-10)
    np.testing.assert_allclose(b.se, f.se, atol=1e-10)
    np.testing.assert_allclose(b.baseline_cumhaz, f.baseline_cumhaz, rtol=1e-9)
    assert b.log_likelihood == pytest.approx(f.log_likelihood, abs=1e-9)
    assert not np.allclose(b.coef, 0)


def test_efron_differs_from_breslow_with_ties(rossi, rossi_efron):
    b = fit_cox(rossi, "week", "arrest", ROSSI_COV, ties="breslow")
    assert np.max(np.abs(b.coef - rossi_efron.coef)) > 1e-3


# ------------------------------------------------------------------------------------------ baseline
def test_breslow_baseline_matches_sksurv(rossi):
    from sksurv.linear_model.coxph import BreslowEstimator

    model = fit_cox(rossi, "week", "arrest", ROSSI_COV, ties="breslow")
    X = rossi[ROSSI_COV].to_numpy(float)
    ref = BreslowEstimator().fit(
        X @ model.coef, rossi["arrest"].to_numpy().astype(bool), rossi["week"].to_numpy(float)
    )
    grid = ref.cum_baseline_hazard_.x
    ev_times = np.unique(rossi.loc[rossi.arrest == 1, "week"]).astype(float)
    keep = np.isin(grid, ev_times)
    np.testing.assert_allclose(model.baseline_times, grid[keep])
    np.testing.assert_allclose(model.baseline_cumhaz, ref.cum_baseline_hazard_.y[keep], rtol=1e-9)


def test_efron_baseline_matches_independent_formula(rossi, rossi_efron):
    X = rossi[ROSSI_COV].to_numpy(float)
    t = rossi["week"].to_numpy(float)
    e = rossi["arrest"].to_numpy().astype(bool)
    w = np.exp(X @ rossi_efron.coef)
    H = 0.0
    expected = []
    for s in np.unique(t[e]):
        R = w[t >= s].sum()
        dset = e & (t == s)
        d = int(dset.sum())
        D = w[dset].sum()
        H += sum(1.0 / (R - (ell / d) * D) for ell in range(d))
        expected.append(H)
    np.testing.assert_allclose(rossi_efron.baseline_cumhaz, expected, rtol=1e-9)


def test_survival_matches_lifelines(rossi, rossi_efron, rossi_lifelines):
    """lifelines pairs the Efron fit with a Breslow-type baseline; ours is the Efron baseline (as R's survfit).

    With the Breslow baseline swapped in, predictions agree to 1e-6; the Efron baseline differs by < 2e-3.
    Time points are event times because lifelines interpolates linearly between them while S(t|x) is a step.
    """
    from sksurv.linear_model.coxph import BreslowEstimator

    X = rossi[ROSSI_COV].iloc[:25]
    times = [1.0, 8.0, 20.0, 35.0, 52.0]
    ref = rossi_lifelines.predict_survival_function(X, times=times).T.to_numpy()
    ours = rossi_efron.survival_at(X, times)
    assert ours.shape == (25, 5)
    np.testing.assert_allclose(ours, ref, atol=2e-3)

    est = BreslowEstimator().fit(
        rossi[ROSSI_COV].to_numpy(float) @ rossi_efron.coef,
        rossi["arrest"].to_numpy().astype(bool),
        rossi["week"].to_numpy(float),
    )
    swapped = CoxModel(
        **{
            **rossi_efron.__dict__,
            "baseline_times": est.cum_baseline_hazard_.x,
            "baseline_cumhaz": est.cum_baseline_hazard_.y,
        }
    )
    np.testing.assert_allclose(swapped.survival_at(X, times), ref, atol=1e-6)


def test_survival_is_right_continuous_step(rossi_efron, rossi):
    x = rossi[ROSSI_COV].iloc[[0]]
    t0 = rossi_efron.baseline_times[0]
    s = rossi_efron.survival_at(x, [0.0, t0 - 1e-9, t0, rossi_efron.baseline_times[-1], rossi_efron.max_time, 1e6])[0]
    assert s[0] == 1.0 and s[1] == 1.0
    assert s[2] < 1.0  # the jump at the first event time is included at that time
    assert s[3] == s[4]  # held constant from the last event time to the end of follow-up
    assert np.isnan(s[5])  # and unknown after it
    lp = rossi_efron.linear_predictor(x)[0]
    assert s[2] == pytest.approx(math.exp(-rossi_efron.baseline_cumhaz[0] * math.exp(lp)), rel=1e-12)


def test_linear_predictor_uses_column_names(rossi, rossi_efron):
    shuffled = rossi[list(reversed(ROSSI_COV)) + ["week"]].head(10)
    np.testing.assert_allclose(
        rossi_efron.linear_predictor(shuffled), rossi[ROSSI_COV].head(10).to_numpy(float) @ rossi_efron.coef
    )
    with pytest.raises(InputError, match="prio"):
        rossi_efron.linear_predictor(rossi[ROSSI_COV[:-1]])


def test_survival_after_the_training_follow_up_is_unknown_not_the_last_value_repeated(rossi):
    """Follow-up ending at 30 weeks: S(60) had been S(30) repeated, with a narrow interval."""
    short = rossi.assign(arrest=np.where(rossi.week > 30, 0, rossi.arrest), week=rossi.week.clip(upper=30))
    model = fit_cox(short, "week", "arrest", covariates=ROSSI_COV)
    assert model.max_time == 30.0
    x = short[ROSSI_COV].iloc[:3]
    s = model.survival_at(x, [20.0, 30.0, 30.5, 60.0])
    assert np.isfinite(s[:, :2]).all() and np.isnan(s[:, 2:]).all()
    se = model.log_cumhaz_se(x, [20.0, 60.0])
    assert np.isfinite(se[:, 0]).all() and np.isnan(se[:, 1]).all()
    back = CoxModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert back.max_time == 30.0
    # a model saved before the follow-up was stored predicts as it did
    old = CoxModel.from_dict({k: v for k, v in model.to_dict().items() if k != "max_time"})
    assert old.max_time is None and old.survival_at(x, [60.0])[0, 0] == old.survival_at(x, [30.0])[0, 0]


# ------------------------------------------------------------------------------------------ persistence
def test_json_round_trip_is_exact(rossi, rossi_efron):
    d = json.loads(json.dumps(rossi_efron.to_dict(), allow_nan=False))
    back = CoxModel.from_dict(d)
    X = rossi[ROSSI_COV]
    times = np.array([3.0, 10.0, 30.0, 52.0])
    np.testing.assert_array_equal(back.survival_at(X, times), rossi_efron.survival_at(X, times))
    np.testing.assert_array_equal(back.linear_predictor(X), rossi_efron.linear_predictor(X))
    assert back.summary() == rossi_efron.summary()
    assert back.to_dict() == rossi_efron.to_dict()
    with pytest.raises(InputError):
        CoxModel.from_dict({k: v for k, v in d.items() if k != "coef"})


# ------------------------------------------------------------------------------------------ penalizer
def test_penalized_fit_solves_penalized_score(rossi):
    X = rossi[ROSSI_COV].to_numpy(float)
    Xc = X - X.mean(axis=0)
    t = rossi["week"].to_numpy(float)
    e = rossi["arrest"].to_numpy().astype(bool)
    lam = 20.0
    model = fit_cox(rossi, t, e, ROSSI_COV, ties="breslow", penalizer=lam)
    plain = fit_cox(rossi, t, e, ROSSI_COV, ties="breslow")
    assert np.linalg.norm(model.coef) < np.linalg.norm(plain.coef)

    def pen(beta):
        return _breslow_nll(beta, Xc, t, e) + 0.5 * lam * beta @ beta

    res = minimize(pen, np.zeros(len(ROSSI_COV)), method="BFGS", options={"gtol": 1e-7})
    np.testing.assert_allclose(model.coef, res.x, atol=1e-4)
    assert model.penalizer == lam


def test_a_penalty_per_sd_shrinks_every_factor_alike_whatever_its_unit(rossi):
    """The ridge of a runaway refit acts on the log hazard ratio per SD: it solves the score of
    loglik - lam/2 * sum((beta_j sd_j)^2), with the SEs of that penalised information, and a factor given in other
    units (age in decades, prior arrests in tens) gets the same hazard ratio per SD and every patient the same
    survival, where the penalty on the covariates as given shrank the fine-grained units less."""
    X = rossi[ROSSI_COV].to_numpy(float)
    Xc, sd = X - X.mean(axis=0), X.std(axis=0)
    t = rossi["week"].to_numpy(float)
    e = rossi["arrest"].to_numpy().astype(bool)
    lam = 20.0
    model = fit_cox(rossi, t, e, ROSSI_COV, ties="breslow", penalizer=lam, penalty_per_sd=True)
    res = minimize(lambda beta: _breslow_nll(beta, Xc, t, e) + 0.5 * lam * (beta * sd) @ (beta * sd),
                   np.zeros(len(ROSSI_COV)), method="BFGS", options={"gtol": 1e-7})
    np.testing.assert_allclose(model.coef * sd, res.x * sd, atol=1e-4)
    assert model.penalty_per_sd and model.penalizer == lam
    # the ordinary ridge on the standardised covariates, carried back to the covariates' units
    standardised = fit_cox(Xc / sd, t, e, ROSSI_COV, ties="breslow", penalizer=lam)
    np.testing.assert_allclose(model.coef * sd, standardised.coef, rtol=1e-8)
    np.testing.assert_allclose(model.covariance * np.outer(sd, sd), standardised.covariance, rtol=1e-8)
    assert model.log_likelihood == pytest.approx(standardised.log_likelihood, rel=1e-10)
    assert "penalty_per_sd" not in standardised.to_dict()
    rescaled = rossi.assign(age=rossi["age"] / 10, prio=rossi["prio"] / 10)
    again = fit_cox(rescaled, t, e, ROSSI_COV, ties="breslow", penalizer=lam, penalty_per_sd=True)
    changed = [ROSSI_COV.index("age"), ROSSI_COV.index("prio")]
    factor = np.ones(len(ROSSI_COV))
    factor[changed] = 10.0
    np.testing.assert_allclose(again.coef, model.coef * factor, rtol=1e-7)
    np.testing.assert_allclose(again.se, model.se * factor, rtol=1e-6)
    np.testing.assert_allclose(again.survival_at(rescaled, [20, 52]), model.survival_at(rossi, [20, 52]), rtol=1e-7)
    # the penalty on the covariates as given depends on the units: it shrinks age per year, hardly per decade
    as_given = fit_cox(rossi, t, e, ROSSI_COV, ties="breslow", penalizer=lam)
    as_given_rescaled = fit_cox(rescaled, t, e, ROSSI_COV, ties="breslow", penalizer=lam)
    assert not np.allclose(as_given_rescaled.coef, as_given.coef * factor, rtol=1e-3)
    back = CoxModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert back.penalty_per_sd and back.to_dict() == model.to_dict()


# ------------------------------------------------------------------------------------------ cox_table
def test_cox_table(rossi, rossi_lifelines):
    table = cox_table(rossi, "week", "arrest", ROSSI_COV, ties="efron")
    assert set(table) == {"n", "events", "ties", "log_likelihood", "concordance", "coefficients"}
    json.dumps(table, allow_nan=False)
    assert [row["covariate"] for row in table["coefficients"]] == ROSSI_COV
    assert set(table["coefficients"][0]) == {"covariate", "coef", "hr", "hr_95ci", "se", "z", "p"}
    lp = rossi_lifelines.predict_partial_hazard(rossi[ROSSI_COV]).to_numpy()
    ref_c = concordance_index(rossi["week"], -lp, rossi["arrest"])
    assert table["concordance"] == pytest.approx(ref_c, abs=1e-6)
    fin = table["coefficients"][0]
    assert fin["hr"] == pytest.approx(math.exp(rossi_lifelines.params_["fin"]), rel=1e-6)


# ------------------------------------------------------------------------------------------ errors
def _small_table():
    return pd.DataFrame(
        {
            "patient_id": ["P01", "P02", "P03", "P04", "P05", "P06"],
            "age": [50.0, 61.0, 45.0, 70.0, 55.0, 66.0],
            "stage": [1.0, 2.0, 1.0, 3.0, 2.0, 3.0],
            "time": [10.0, 20.0, 30.0, 15.0, 25.0, 5.0],
            "event": [1, 0, 1, 1, 0, 1],
        }
    )


def test_error_missing_column():
    df = _small_table()
    with pytest.raises(InputError, match="'t_stage'"):
        fit_cox(df, "time", "event", ["age", "t_stage"])


def test_error_non_numeric_column_names_patient():
    df = _small_table()
    df["stage"] = ["I", "II", "I", "III", "II", "III"]
    with pytest.raises(InputError) as err:
        fit_cox(df, "time", "event", ["age", "stage"])
    assert err.value.column == "stage" and err.value.patient_id == "P01"


def test_error_nan_names_column_and_patient():
    df = _small_table()
    df.loc[3, "age"] = np.nan
    with pytest.raises(InputError) as err:
        fit_cox(df, "time", "event", ["age", "stage"])
    assert err.value.column == "age" and err.value.patient_id == "P04"
    df = _small_table()
    df.loc[2, "time"] = np.nan
    with pytest.raises(InputError) as err:
        fit_cox(df, "time", "event", ["age"])
    assert err.value.patient_id == "P03"
    df = _small_table()
    df.loc[1, "event"] = 2
    with pytest.raises(InputError, match="not 0/1"):
        fit_cox(df, "time", "event", ["age"])


def test_error_no_events():
    df = _small_table()
    df["event"] = 0
    with pytest.raises(InputError, match="no events"):
        fit_cox(df, "time", "event", ["age"])


def test_error_singular_design():
    df = _small_table()
    df["const"] = 1.0
    with pytest.raises(InputError) as err:
        fit_cox(df, "time", "event", ["age", "const"])
    assert err.value.column == "const"
    df = _small_table()
    df["age_months"] = df["age"] * 12
    with pytest.raises(InputError, match="linear combination") as err:
        fit_cox(df, "time", "event", ["age", "stage", "age_months"])
    assert err.value.column == "age_months"


def test_error_bad_ties_and_lengths():
    X, t, e = _continuous_cohort(n=30)
    with pytest.raises(InputError):
        fit_cox(X, t, e, ties="exact")
    with pytest.raises(InputError):
        fit_cox(X, t[:-1], e[:-1])
    with pytest.raises(InputError):
        fit_cox(X, -t, e)


def test_separation_is_reported_not_silent():
    # A covariate that is 1 exactly for the patients who fail first gives an infinite MLE.
    t = np.arange(1.0, 21.0)
    e = np.ones(20, dtype=int)
    x = (t <= 10).astype(float)
    with pytest.warns(RuntimeWarning, match="separation"):
        model = fit_cox(x.reshape(-1, 1), t, e, ["early"])
    assert model.se[0] > 10 * abs(model.coef[0])  # the SE, too, shows the estimate is meaningless


def test_the_command_line_prints_a_warning_as_one_line_of_text_not_the_librarys_source(tmp_path):
    """`train` printed a Cox warning four times with the library's file, line and the source line that raised it; a
    user gets the text, and --verbose still shows where it came from."""
    import subprocess
    import sys

    t = np.arange(1.0, 21.0)
    pd.DataFrame({"time": t, "event": 1, "early": (t <= 10).astype(float)}).to_csv(tmp_path / "t.csv", index=False)
    command = [sys.executable, "-m", "NPCPrognosisLib.cli", "cox", "--table", str(tmp_path / "t.csv"), "--time-col",
               "time", "--event-col", "event", "--covariates", "early"]
    quiet = subprocess.run(command, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "warning: Cox coefficient of 'early' is implausibly large" in quiet.stderr
    assert ".py:" not in quiet.stderr and "model = fit_cox(" not in quiet.stderr
    verbose = subprocess.run([sys.executable, "-m", "NPCPrognosisLib.cli", "--verbose", *command[3:]],
                             capture_output=True, text=True)
    assert "cox_table.py:" in verbose.stderr


def test_predicted_survival_intervals_cover_the_truth_as_often_as_they_say():
    """Tsiatis' SE of log H(t|x) against the spread of the estimate over 200 simulated cohorts of 200 patients
    (true model known): the mean SE is the empirical SD within 10 %, the 95 % intervals cover the true value
    90-99 % of the time, and they have width for a patient at the covariate means (the risk score's SE alone,
    measured from a reference patient, had given such a patient a zero-width interval)."""
    rng = np.random.default_rng(0)
    beta, t_eval = np.array([0.7, -0.5]), np.array([10.0, 30.0])
    points = np.array([[0.0, 0.0], [2.0, -1.5]])
    estimates, ses = [], []
    for _ in range(200):
        x = rng.normal(size=(200, 2))
        time, censor = rng.exponential(30 * np.exp(-x @ beta)), rng.uniform(5, 80, 200)
        model = fit_cox(x, np.minimum(time, censor), time <= censor, ["a", "b"], ties="efron")
        estimates.append(np.log(model.cumulative_hazard_at(points, t_eval)))
        ses.append(model.log_cumhaz_se(points, t_eval))
    estimates, ses = np.array(estimates), np.array(ses)
    np.testing.assert_allclose(ses.mean(axis=0), estimates.std(axis=0), rtol=0.10)
    truth = np.log(np.exp(points @ beta)[:, None] * (t_eval / 30.0)[None, :])
    coverage = (np.abs(estimates - truth) <= 1.96 * ses).mean(axis=0)
    assert (coverage >= 0.90).all() and (coverage <= 0.99).all()
    assert (ses[:, 0] > 0.05).all()
    # stored in the model's JSON, so a bundle predicts the same intervals
    again = CoxModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(again.log_cumhaz_se(points, t_eval), model.log_cumhaz_se(points, t_eval))
    broken = {**model.to_dict(), "baseline_var": model.to_dict()["baseline_var"][:-1]}
    with pytest.raises(InputError, match="inconsistent"):
        CoxModel.from_dict(broken)
