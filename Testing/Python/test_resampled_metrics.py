"""The bootstrap's fast metrics (survival/resampled.py) give exactly what the plain metric functions give."""

from __future__ import annotations

import numpy as np
import pytest

from NPCPrognosisLib.survival.metrics import (
    evaluate_risk,
    harrell_c,
    integrated_brier,
    ipcw_horizon,
    paired_c_difference,
    td_auc,
    uno_c,
)
from NPCPrognosisLib.survival.resampled import ResampledIPCW, concordance


def _cohort(seed: int, n: int = 40):
    """Whole-month times (many ties, events and censorings at the same month, the last follow-up an event or
    a censoring), risks with ties, and a survival matrix that is 1 for a few patients."""
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(30.0, n)) + 1.0
    event = rng.random(n) < 0.55
    risk = np.round(rng.normal(0.0, 1.0, n), 1)
    grid = np.array([6.0, 12.0, 18.0, 24.0])
    survival = np.exp(-np.outer(np.exp(risk), grid) / 60.0)
    survival[:3] = 1.0
    return time, event, risk, grid, survival


def _nan(value):
    return float("nan") if value is None else float(value)


def _plain_or_skip(fn, *args, **kwargs):
    """The value a bootstrap draw takes from ``fn(*args)``: NaN where it raises (the draw is skipped)."""
    try:
        return float(fn(*args, **kwargs))
    except ValueError:  # InputError is a ValueError too
        return float("nan")


def _auc(time, event, t, e, r, months):
    return _nan(td_auc(time, event, t, e, r, [months])[f"{months:g}"])


def _ibs(time, event, t, e, survival, grid):
    return _nan(integrated_brier(time, event, t, e, survival, grid))


@pytest.mark.parametrize("seed, n", [(0, 40), (1, 40), (2, 40), (3, 12), (4, 12), (5, 8)])
def test_every_resampled_metric_is_bit_identical_to_the_plain_function(seed, n):
    """Bit for bit, on small cohorts where resamples lose their cases, controls or follow-up (the plain function
    raises or gives None, the draw is skipped) as well as on ordinary ones."""
    time, event, risk, grid, survival = _cohort(seed, n)
    horizon = ipcw_horizon(time)
    late = float(np.sort(time)[-2])  # often no control, or beyond a resample's follow-up
    grid = np.array([grid[0], grid[1], late - 0.5])
    survival = survival[:, :3]
    weights = ResampledIPCW.fit(time, event, time, event, horizon, grid)
    rng = np.random.default_rng(100 + seed)
    compared = {"harrell": 0, "uno": 0, "auc": 0, "ibs": 0, "skipped": 0}
    for _ in range(150):
        rows = rng.integers(0, len(time), len(time))
        t, e, r = time[rows], event[rows], risk[rows]
        if not e.any():
            continue
        ones = np.ones(len(t))
        pairs = [
            ("harrell", (harrell_c, t, e, r), (concordance, t, e, r, ones)),
            ("uno", (uno_c, time, event, t, e, r, horizon), (weights.uno_c, rows, t, e, r)),
            ("auc", (_auc, time, event, t, e, r, 12.0), (weights.td_auc, rows, e, r, 12.0)),
            ("auc", (_auc, time, event, t, e, r, late), (weights.td_auc, rows, e, r, late)),
            ("ibs", (_ibs, time, event, t, e, survival[rows], grid),
             (weights.integrated_brier, rows, e, survival[rows])),
        ]
        for name, plain, fast in pairs:
            expected, got = _plain_or_skip(*plain), _plain_or_skip(*fast)
            if np.isnan(expected):
                assert np.isnan(got), name
                compared["skipped"] += 1
            else:
                assert got == expected, (name, got, expected)  # bit for bit, not approximately
                compared[name] += 1
    assert min(compared.values()) > 0, compared  # every metric met, and some resamples were skipped


def test_concordance_refuses_where_sksurv_does_and_gives_nan_where_it_divides_zero_by_zero():
    from sksurv.metrics import concordance_index_censored

    one = np.ones(3)
    # the only event is the last follow-up: no comparable pair (sksurv raises NoComparablePairException)
    with pytest.raises(ValueError, match="no comparable pairs"):
        concordance(np.array([1.0, 2.0, 3.0]), np.array([False, False, True]), np.array([0.1, 0.2, 0.3]), one)
    with pytest.raises(ValueError):
        concordance_index_censored(np.array([False, False, True]), np.array([1.0, 2.0, 3.0]), np.array([.1, .2, .3]))
    # events tied at the last time: visited, but no pair
    t, e, r = np.array([1.0, 3.0, 3.0]), np.array([False, True, True]), np.array([0.1, 0.2, 0.3])
    with np.errstate(invalid="ignore"):
        assert np.isnan(concordance(t, e, r, one)) and np.isnan(concordance_index_censored(e, t, r)[0])


def test_evaluate_risk_intervals_equal_a_plain_loop_of_the_metric_functions():
    """The intervals evaluate_risk reports are the percentiles of the plain functions on its resamples."""
    time, event, risk, grid, _ = _cohort(11, n=60)
    months = np.array([12.0, 24.0])

    def survival_at(ts):
        return np.exp(-np.outer(np.exp(risk), np.asarray(ts, float)) / 60.0)

    out = evaluate_risk(risk, time, event, time, event, cutoff=0.0, survival_at=survival_at, n_boot=80, seed=3,
                        times=months, ipcw_intervals=True)
    horizon = out["ipcw_horizon_months"]
    start, end = out["integrated_brier_months"]
    brier_grid = np.unique(np.percentile(time, np.linspace(10, 90, 17)))
    brier_grid = brier_grid[brier_grid < min(time.max(), horizon)]
    assert brier_grid[0] == start and brier_grid[-1] == end
    matrix = survival_at(brier_grid)
    draws = {"c_index": [], "uno_c": [], "12": [], "24": [], "integrated_brier": []}
    rng = np.random.default_rng(3)
    for _ in range(80):
        rows = rng.integers(0, len(time), len(time))
        t, e, r = time[rows], event[rows], risk[rows]
        if not e.any():
            continue
        values = {"c_index": _plain_or_skip(harrell_c, t, e, r),
                  "uno_c": _plain_or_skip(uno_c, time, event, t, e, r, tau=horizon),
                  "12": _auc(time, event, t, e, r, 12.0),
                  "24": _auc(time, event, t, e, r, 24.0),
                  "integrated_brier": (_ibs(time, event, t, e, matrix[rows], brier_grid)
                                       if t.min() <= brier_grid[0] and brier_grid[-1] < t.max() else np.nan)}
        for name, v in values.items():
            if np.isfinite(v):
                draws[name].append(v)
    for name in ("c_index", "uno_c", "integrated_brier"):
        assert out[f"{name}_95ci"] == list(np.percentile(draws[name], [2.5, 97.5])), name
    for months in ("12", "24"):
        assert out["td_auc_95ci"][months] == list(np.percentile(draws[months], [2.5, 97.5])), months


def test_paired_c_difference_draws_are_harrell_c_differences():
    time, event, risk, _, _ = _cohort(5, n=50)
    reference = risk + np.random.default_rng(1).normal(0.0, 0.5, len(risk))
    out = paired_c_difference(time, event, risk, reference, n_boot=120, seed=2)
    rng = np.random.default_rng(2)
    draws = []
    for _ in range(120):
        rows = rng.integers(0, len(time), len(time))
        if event[rows].any():
            draws.append(harrell_c(time[rows], event[rows], risk[rows])
                         - harrell_c(time[rows], event[rows], reference[rows]))
    assert out["replicates"] == len(draws)
    assert out["ci95"] == list(np.percentile(draws, [2.5, 97.5]))
