"""Nomogram points, centring and survival agree with the underlying Cox model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from NPCPrognosisLib.survival.nomogram import Nomogram, fit_nomogram


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


def test_coefficients_match_lifelines_and_risk_is_centred(data):
    table, time, event = data
    nomogram = fit_nomogram("nomogram", table, ["age", "t_stage", "rad_score"], time, event)
    reference = CoxPHFitter().fit(table.assign(T=time, E=event), "T", "E").params_
    np.testing.assert_allclose(nomogram.model.coef, reference[["age", "t_stage", "rad_score"]], atol=1e-4)
    assert abs(nomogram.risk(table).mean()) < 1e-9
    restored = Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    np.testing.assert_allclose(restored.risk(table), nomogram.risk(table))


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
    assert nomogram.out_of_range({"age": 95, "t_stage": 2, "rad_score": 0})[0].startswith("age")
