"""Cost of evaluate's bootstrap intervals: the censoring weights looked up once vs sksurv called on every resample.

    python bench/bench_evaluate.py [--sizes 57 200 500] [--n-boot 1000] [--seed 0]

Why. ``evaluate`` bootstraps Harrell's C, Uno's C, the td-AUC at 36 and 60 months and the integrated Brier score
of every model on the same 1000 resamples (``evaluate_risk(..., ipcw_intervals=True)``). Called through
scikit-survival, every resample re-validates its inputs and refits the censoring Kaplan-Meier, which never changes
(the censoring distribution is the whole evaluated cohort's). For each cohort size this prints the seconds of the
product's bootstrap (survival/resampled.py) and of the plain loop of the metric functions on the same resamples
(``bootstrap_cis`` with ``harrell_c``, ``uno_c``, ``td_auc``, ``integrated_brier``), their ratio, and whether the
intervals are identical (they must be, bit for bit). One model; ``evaluate`` scores four. SYNTHETIC DATA.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.survival.metrics import (  # noqa: E402
    bootstrap_cis,
    evaluate_risk,
    harrell_c,
    integrated_brier,
    ipcw_horizon,
    td_auc,
    uno_c,
)

TIMES = (36.0, 60.0)


def cohort(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Risk score, follow-up in months (uniform censoring to 120) and events; survival from the true model."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(0.0, 1.0, n)
    true_time = rng.exponential(60.0 * np.exp(-0.8 * risk))
    censor = rng.uniform(12.0, 120.0, n)
    return risk, np.round(np.minimum(true_time, censor), 1), true_time <= censor


def plain_stats(time_, event, risk, out: dict, grid: np.ndarray, matrix: np.ndarray) -> dict:
    """The straightforward bootstrap statistics: each metric function called on the resample."""
    horizon = ipcw_horizon(time_)

    def brier(t, e, r, rows):
        if not (t.min() <= grid[0] and grid[-1] < t.max()):
            return float("nan")
        value = integrated_brier(time_, event, t, e, matrix[rows], grid)
        return float("nan") if value is None else value

    def auc(tp):
        def stat(t, e, r, rows):
            value = td_auc(time_, event, t, e, r, [tp])[f"{tp:g}"]
            return float("nan") if value is None else value
        return stat

    stats = {"c_index": lambda t, e, r, rows: harrell_c(t, e, r),
             "uno_c": lambda t, e, r, rows: uno_c(time_, event, t, e, r, tau=horizon)}
    stats.update({f"td_auc {tp:g}": auc(tp) for tp in TIMES if out["td_auc"][f"{tp:g}"] is not None})
    if out.get("integrated_brier") is not None:
        stats["integrated_brier"] = brier
    return stats


def one_size(n: int, n_boot: int, seed: int) -> tuple[float, float, bool]:
    risk, time_, event = cohort(n, seed)

    def survival_at(months):
        return np.exp(-np.outer(np.exp(0.8 * risk), np.asarray(months, float)) / 60.0)

    start = time.perf_counter()
    out = evaluate_risk(risk, time_, event, time_, event, cutoff=0.0, survival_at=survival_at, n_boot=n_boot,
                        seed=seed, times=TIMES, ipcw_intervals=True)
    fast = time.perf_counter() - start
    grid = np.unique(np.percentile(time_, np.linspace(10, 90, 17)))
    grid = grid[grid < min(time_.max(), out["ipcw_horizon_months"])]
    start = time.perf_counter()
    cis = bootstrap_cis(plain_stats(time_, event, risk, out, grid, survival_at(grid)), time_, event, risk,
                        np.arange(n), n_boot=n_boot, seed=seed)
    plain = time.perf_counter() - start
    same = all((out["td_auc_95ci"][name.split()[1]] if name.startswith("td_auc") else out[f"{name}_95ci"])
               == list(ci) for name, ci in cis.items())
    return fast, plain, same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[57, 200, 500])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"SYNTHETIC cohorts, {args.n_boot} resamples, one model (evaluate scores four)")
    ok = True
    one_size(30, 20, args.seed)  # imports and first calls, outside the timings
    for n in args.sizes:
        fast, plain, same = one_size(n, args.n_boot, args.seed)
        ok &= same
        print(f"  n={n:4d}: evaluate_risk with intervals {fast:6.2f} s, plain loop of the metric functions "
              f"{plain:6.2f} s, ratio {plain / fast:5.1f}x; intervals identical: {same}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
