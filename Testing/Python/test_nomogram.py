"""Nomogram points, centring and survival agree with the underlying Cox model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.nomogram import COMBINED_RISK, STACKING_FOLDS, Nomogram, fit_nomogram
from NPCPrognosisLib.survival.risk_groups import max_logrank_cutoff, training_cutoff
from NPCPrognosisLib.survival.splits import event_folds


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 300
    table = pd.DataFrame({"age": rng.uniform(30, 70, n), "t_stage": rng.integers(1, 5, n).astype(float),
                          "rad_score": rng.normal(size=n)})
    lp = 0.03 * (table["age"] - 50) + 0.4 * table["t_stage"] + 0.8 * table["rad_score"]
    time = rng.exponential(60 * np.exp(-lp))
    censor = rng.uniform(20, 100, n)
    return table, np.minimum(time, censor), time <= censor


def _lifelines_clinical_score(table, time, event, seed):
    """The stacking's first stage replicated with lifelines: the clinical Cox fit on age and T stage, and each
    patient's clinical score from a fit without its fold (the same folds as the product's)."""
    frame = table.assign(T=time, E=event)
    clinical = CoxPHFitter().fit(frame[["age", "t_stage", "T", "E"]], "T", "E")
    fold = event_folds(event, STACKING_FOLDS, seed)
    oof = np.zeros(len(time))
    for k in np.unique(fold):
        part = CoxPHFitter().fit(frame.loc[fold != k, ["age", "t_stage", "T", "E"]], "T", "E")
        oof[fold == k] = table.loc[fold == k, ["age", "t_stage"]].to_numpy() @ part.params_.to_numpy()
    return clinical, oof


def test_coefficients_match_lifelines_and_risk_is_centred(data):
    table, time, event = data
    nomogram = fit_nomogram("nomogram", table, ["age", "t_stage", "rad_score"], time, event)
    reference = CoxPHFitter().fit(table.assign(T=time, E=event), "T", "E").params_
    np.testing.assert_allclose(nomogram.model.coef, reference[["age", "t_stage", "rad_score"]], atol=1e-4)
    assert abs(nomogram.risk(table).mean()) < 1e-9
    restored = Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    np.testing.assert_allclose(restored.risk(table), nomogram.risk(table))


def test_a_score_that_ranks_the_wrong_way_round_out_of_fold_gets_no_weight(data):
    """A Rad-score whose (out-of-fold) values are associated with *better* survival did not validate: left to a
    negative weight, the full signature would rank new patients upside down. It gets weight 0 (Breiman's
    non-negative stacking); the rest is refitted without it, checked against lifelines."""
    table, time, event = data
    inverted = table.assign(rad_score=-table["rad_score"])
    lone = fit_nomogram("radiomics", inverted, ["rad_score"], time, event, scores=["rad_score"])
    assert lone.model.coef.tolist() == [0.0] and lone.construction["no_weight"] == ["rad_score"]
    assert np.ptp(lone.risk(inverted)) == 0
    cutoff = training_cutoff(lone.risk(inverted), time, event)
    assert cutoff["n_high"] == 0 and "no_groups" in cutoff
    with pytest.raises(InputError, match="no cut-off"):  # what a constant risk met before
        max_logrank_cutoff(lone.risk(inverted), time, event)

    stacked = fit_nomogram("nomogram", inverted, ["rad_score", "age", "t_stage"], time, event, scores=["rad_score"],
                           seed=3)
    assert stacked.construction["no_weight"] == ["rad_score"]
    assert stacked.construction["weights"]["rad_score"] == 0.0 and stacked.model.coef[0] == 0.0
    clinical, oof = _lifelines_clinical_score(table, time, event, seed=3)
    weight = CoxPHFitter().fit(pd.DataFrame({"clin": oof, "T": time, "E": event}), "T", "E").params_["clin"]
    np.testing.assert_allclose(stacked.model.coef[1:], weight * clinical.params_[["age", "t_stage"]], rtol=1e-4)
    assert stacked.model.se[0] == 0.0
    # the same data the right way round: nothing dropped
    assert fit_nomogram("nomogram", table, ["rad_score", "age", "t_stage"], time, event, scores=["rad_score"],
                        seed=3).construction["no_weight"] == []


def _lifelines_oof(table, columns, time, event, seed):
    """A block's Cox fit with lifelines and each patient's score from a fit without its fold."""
    frame = table[columns].assign(T=time, E=event)
    whole = CoxPHFitter().fit(frame, "T", "E")
    fold = event_folds(event, STACKING_FOLDS, seed)
    oof = np.zeros(len(time))
    for k in np.unique(fold):
        part = CoxPHFitter().fit(frame[fold != k], "T", "E")
        oof[fold == k] = table.loc[fold == k, columns].to_numpy() @ part.params_[columns].to_numpy()
    return whole, oof


def test_a_named_factor_block_gets_its_own_out_of_fold_score_and_weight(data):
    """The tumour volumes as a block of their own (``factor_blocks``): each block (clinical, volume) is one Cox fit
    scored out of fold over the same folds, and the stack weighs the Rad-score, the clinical score and the volume
    score; replicated with lifelines, with the delta-method standard error of a volume coefficient. Two blocks
    without any score are stacked too."""
    table, time, event = data
    rng = np.random.default_rng(11)
    volume = np.log1p(np.exp(rng.normal(np.log(15.0), 0.7, len(time))))
    table = table.assign(log_volume_gtvp_ml=volume)
    lp = 0.03 * (table["age"] - 50) + 0.4 * table["t_stage"] + 0.8 * table["rad_score"] + 0.9 * volume
    true_time, censor = rng.exponential(60 * np.exp(-(lp - lp.mean()).to_numpy())), rng.uniform(20, 100, len(lp))
    time, event = np.minimum(true_time, censor), true_time <= censor
    factors = ["rad_score", "age", "t_stage", "log_volume_gtvp_ml"]
    blocks = {"volume": ["log_volume_gtvp_ml"]}
    nomogram = fit_nomogram("nomogram", table, factors, time, event, scores=["rad_score"], factor_blocks=blocks,
                            seed=3)
    clinical, clinical_oof = _lifelines_oof(table, ["age", "t_stage"], time, event, seed=3)
    vol, vol_oof = _lifelines_oof(table, ["log_volume_gtvp_ml"], time, event, seed=3)
    stack = CoxPHFitter().fit(pd.DataFrame({"rad": table["rad_score"], "clin": clinical_oof, "vol": vol_oof,
                                            "T": time, "E": event}), "T", "E")
    w = stack.params_
    assert (w > 0).all()
    expected = [w["rad"], *(w["clin"] * clinical.params_[["age", "t_stage"]]),
                w["vol"] * vol.params_["log_volume_gtvp_ml"]]
    np.testing.assert_allclose(nomogram.model.coef, expected, rtol=1e-4, atol=1e-6)
    assert nomogram.construction["weights"] == pytest.approx(
        {"rad_score": w["rad"], "clinical_score": w["clin"], "volume_score": w["vol"]}, rel=1e-4)
    beta, var_beta = vol.params_["log_volume_gtvp_ml"], vol.variance_matrix_.iloc[0, 0]
    se = np.sqrt(w["vol"] ** 2 * var_beta + beta ** 2 * stack.variance_matrix_.loc["vol", "vol"])
    assert nomogram.model.se[3] == pytest.approx(se, rel=1e-3)

    two = fit_nomogram("clinical + volume", table, factors[1:], time, event, scores=["rad_score"],
                       factor_blocks=blocks, seed=3)
    stack = CoxPHFitter().fit(pd.DataFrame({"clin": clinical_oof, "vol": vol_oof, "T": time, "E": event}), "T", "E")
    assert two.construction["weights"] == pytest.approx(
        {"clinical_score": stack.params_["clin"], "volume_score": stack.params_["vol"]}, rel=1e-4)
    # the volume block alone is one plain Cox fit
    alone = fit_nomogram("volume", table, ["log_volume_gtvp_ml"], time, event, factor_blocks=blocks)
    assert alone.construction is None and alone.model.coef[0] == pytest.approx(beta, rel=1e-4)


def test_points_are_linear_in_the_risk_score(data):
    table, time, event = data
    nomogram = fit_nomogram("nomogram", table, ["age", "t_stage", "rad_score"], time, event)
    rows = [table.iloc[i].to_dict() for i in range(5)]
    points = [nomogram.points(r) for r in rows]
    risks = nomogram.risk(pd.DataFrame(rows))
    scale = points[0]["points_per_unit_log_hazard"]
    for p, r in zip(points, risks):
        assert all(v >= -1e-9 for v in p["per_factor"].values())
        assert p["total"] - points[0]["total"] == pytest.approx(scale * (r - risks[0]), abs=1e-9)
    spans = [100 * abs(c) * (hi - lo) / 100 for c, lo, hi in zip(nomogram.model.coef, nomogram.low, nomogram.high)]
    assert max(spans) * scale == pytest.approx(100)


def test_survival_for_a_risk_equals_the_patients_curve(data):
    table, time, event = data
    nomogram = fit_nomogram("nomogram", table, ["age", "t_stage", "rad_score"], time, event)
    row = table.iloc[[7]]
    months = [12, 36, 60]
    np.testing.assert_allclose(nomogram.survival_for_risk(nomogram.risk(row)[0], months),
                               nomogram.survival(row, months)[0], rtol=1e-10)
    assert nomogram.out_of_range({"age": 95, "t_stage": 2, "rad_score": 0})[0]["factor"] == "age"


def test_a_patient_whose_factors_together_give_a_risk_beyond_every_training_patient_is_extrapolated(data):
    """Each factor inside its training range, all at their worst end together: no training patient had that risk
    (on a 28-patient cohort such combinations got 36-month survival 1e-9), and the per-factor check said nothing.
    Plain and stacked models keep the training risk range; a bundle saved before it was kept still loads."""
    table, time, event = data
    for scores in ((), ("rad_score",)):
        nomogram = fit_nomogram("nomogram", table, ["age", "t_stage", "rad_score"], time, event, scores=scores)
        worst = {f: (hi if c > 0 else lo)
                 for f, c, lo, hi in zip(nomogram.factors, nomogram.model.coef, nomogram.low, nomogram.high)}
        training = nomogram.risk(table)
        risk = float(nomogram.risk(worst)[0])
        assert risk > training.max() + 0.5
        assert nomogram.out_of_range(worst) == [{"factor": COMBINED_RISK, "value": pytest.approx(risk),
                                                 "low": pytest.approx(training.min()),
                                                 "high": pytest.approx(training.max())}]
        # every training patient, the extremes included, lies within the range
        assert not any(nomogram.out_of_range(row) for row in table.to_dict("records"))
        restored = Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
        assert restored.out_of_range(worst) == nomogram.out_of_range(worst)
    old = nomogram.to_dict()
    del old["risk_range"]
    restored = Nomogram.from_dict(json.loads(json.dumps(old)))
    assert restored.risk_range is None and restored.out_of_range(worst) == []
    assert [item["factor"] for item in restored.out_of_range({**worst, "age": 95.0})] == ["age"]


def test_stacked_nomogram_weighs_the_out_of_fold_clinical_score_against_the_rad_score(data):
    """Independent replication with lifelines: the clinical Cox fit, its out-of-fold scores over the same folds,
    the two-weight stack; the nomogram's coefficients are the weights times the clinical coefficients, its
    baseline the Breslow estimator at those coefficients (no tied times here, so Efron = Breslow)."""
    table, time, event = data
    factors = ["rad_score", "age", "t_stage"]
    nomogram = fit_nomogram("nomogram", table, factors, time, event, scores=["rad_score"], seed=3)

    clinical, oof = _lifelines_clinical_score(table, time, event, seed=3)
    stack = CoxPHFitter().fit(pd.DataFrame({"rad": table["rad_score"], "clin": oof, "T": time, "E": event}), "T", "E")
    weight = stack.params_["clin"]
    expected = [stack.params_["rad"], *(weight * clinical.params_[["age", "t_stage"]])]
    np.testing.assert_allclose(nomogram.model.coef, expected, rtol=1e-4, atol=1e-6)
    assert nomogram.construction["weights"]["clinical_score"] == pytest.approx(weight, rel=1e-4)

    # delta-method standard error of a clinical coefficient: w^2 var(beta) + beta^2 var(w)
    beta, var_beta = clinical.params_["age"], clinical.variance_matrix_.loc["age", "age"]
    se = np.sqrt(weight ** 2 * var_beta + beta ** 2 * stack.variance_matrix_.loc["clin", "clin"])
    assert nomogram.model.se[1] == pytest.approx(se, rel=1e-3)

    # baseline cumulative hazard at x = 0 for these fixed coefficients (Breslow)
    x = table[factors].to_numpy() @ nomogram.model.coef
    order = np.argsort(time)
    t_sorted, e_sorted = np.asarray(time)[order], np.asarray(event)[order]
    at_risk = np.cumsum(np.exp(x[order])[::-1])[::-1]
    h0 = np.cumsum(np.where(e_sorted, 1.0 / at_risk, 0.0))
    months = [12.0, 36.0, 60.0]
    expected_h0 = [h0[np.searchsorted(t_sorted, m, side="right") - 1] for m in months]
    np.testing.assert_allclose(nomogram.model.cumulative_hazard_at(np.zeros((1, 3)), months)[0], expected_h0,
                               rtol=1e-8)

    restored = Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    np.testing.assert_allclose(restored.risk(table), nomogram.risk(table))
    assert restored.construction == nomogram.construction
    # scores only, or clinical factors only: one Cox fit as before
    assert fit_nomogram("r", table, ["rad_score"], time, event, scores=["rad_score"]).construction is None


def _separated_cohort(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A factor whose high level has every early event (monotone likelihood), beside two ordinary factors."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"stage": rng.integers(1, 5, n).astype(float), "age": rng.normal(50, 10, n),
                          "marker": (np.arange(n) % 4 == 0).astype(float)})
    time = np.where(table["marker"] == 1, rng.uniform(1, 10, n), rng.uniform(20, 60, n))
    event = (table["marker"] == 1).to_numpy() | (rng.random(n) < 0.1)
    time = np.where(event & (table["marker"] == 0), rng.uniform(40, 60, n), time)  # others' events come later
    return table, time, event.astype(bool)


def test_a_cox_fit_that_runs_away_is_refitted_with_a_ridge_penalty_and_says_so():
    """The marker's patients have every early event: the likelihood rises for ever with its coefficient, which only
    the bundle's 0.01 ridge stopped, at 3.5 log hazard ratio per SD (HR 3,300 for a marker patient; the old code
    stored it silently); refitted with the smallest ridge at which no factor exceeds 2 per SD, survival stays
    finite and the model records which factor and what was done."""
    table, time, event = _separated_cohort()
    factors = ["stage", "age", "marker"]
    model = fit_nomogram("clinical", table, factors, time, event, penalizer=0.01)
    new = pd.DataFrame({"stage": [4.0], "age": [50.0], "marker": [1.0]})
    survival = model.survival(new, [36])[0, 0]
    assert 1e-3 < survival < 0.9, survival
    sd = table[factors].to_numpy(float).std(axis=0)
    assert np.all(np.abs(model.model.coef) * sd <= 2.0)
    record = model.runaway["clinical"]
    assert "marker" in record["factors"] and record["penalizer"] > 0.01 and not record["factors_after"]
    assert model.model.penalizer == record["penalizer"] and model.model.penalty_per_sd and record["penalty_per_sd"]
    # the penalty acts per SD, so age in decades gives the same refit and every patient the same survival (on the
    # ages as given, one ridge shrank age per year, hardly per decade)
    decades = fit_nomogram("clinical", table.assign(age=table["age"] / 10), factors, time, event, penalizer=0.01)
    assert decades.runaway["clinical"]["penalizer"] == record["penalizer"]
    np.testing.assert_allclose(decades.survival(table.assign(age=table["age"] / 10), [12, 36]),
                               model.survival(table, [12, 36]), rtol=1e-6)
    assert "the clinical model's Cox fit ran away (log hazard ratio per SD: marker " in record["warning"]
    assert "standardised to SD 1" in record["warning"]
    assert "more events, or fewer factors" in record["warning"]
    # the bundle keeps it, and every result repeats it
    from NPCPrognosisLib.pipeline.fit import training_findings

    again = Nomogram.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.runaway == model.runaway
    assert training_findings({"models": {"clinical": model.to_dict()}}) == [record["warning"]]
    # a stacked model's clinical block gets the same penalty and its own finding
    stacked = fit_nomogram("nomogram", table.assign(rad_score=np.random.default_rng(1).normal(size=len(table))),
                           ["rad_score", *factors], time, event, penalizer=0.01, scores=["rad_score"])
    assert stacked.runaway["clinical"]["penalizer"] == record["penalizer"]
    assert "the nomogram (clinical block) model's Cox fit ran away" in stacked.runaway["clinical"]["warning"]


def test_a_sound_cox_fit_is_fitted_exactly_as_before():
    """160 patients with 60-odd events: no factor runs away, so the model is the plain fit at the bundle's ridge,
    coefficient for coefficient, and records nothing."""
    from NPCPrognosisLib.datasets.synth import simulate_outcomes
    from NPCPrognosisLib.io.manifest import Manifest
    from NPCPrognosisLib.survival.cox import fit_cox

    records = simulate_outcomes(160, 1)
    manifest = Manifest(table=records, root=Path("."), source=Path("train.csv"))
    table = manifest.clinical_table(0.0)
    factors = ["t_stage", "n_stage", "rene", "male", "log10_ebv_dna", "age", "ldh"]
    time, event = manifest.outcome_arrays("dmfs")
    model = fit_nomogram("clinical", table, factors, time, event, penalizer=0.01)
    plain = fit_cox(table[factors].to_numpy(float), time, event, factors, ties="efron", penalizer=0.01)
    assert model.runaway is None and "runaway" not in model.to_dict()
    np.testing.assert_array_equal(model.model.coef, plain.coef)
