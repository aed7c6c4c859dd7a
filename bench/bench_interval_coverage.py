"""Do the survival intervals a patient is given hold the truth? Coverage on SYNTHETIC tabular cohorts.

    python bench/bench_interval_coverage.py [--family synth|relaxometry] [--n-total 230] [--seeds 1 ... 10]
                                            [--n-new 200] [--model nomogram] [--reference-n 8000]

Why. ``predict`` prints "36-month DMFS 40 % (95 % interval a-b)" from ``Nomogram.survival_interval``. Each seed
draws ``simulate_outcomes(n_total, seed)`` of the family, splits it as ``train --seed 1`` does (``split_cohort``,
30 % held out: 40 -> 28, 80 -> 56, 230 -> 161 training patients), fits it with ``fit_models`` (as ``train``) and
scores ``--n-new`` fresh patients of the same generator (``simulate_outcomes(n_new, 100000 + seed)``). Against two
truths:

* the patient's own: their outcomes re-simulated 4,000 times from the stored true linear predictors (the hidden
  copula draw, frailty and noise drawn afresh), deaths censoring metastasis as in the cohort; the product-limit
  estimate of that is what a Cox fit censoring deaths estimates for a patient whose tumour is known exactly;
* the estimator's limit: the same pipeline fitted on ``--reference-n`` patients of the family, given the new
  patient's same (noisy) features. What these factors can know; the interval, which describes how the fit varies
  between training cohorts, should hold it 95 % of the time.

Prints coverage of both, mean width, and the point estimate's calibration (mean predicted against mean true
survival) by decile of predicted survival. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.special import ndtr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.datasets import relaxometry_phantom, synth  # noqa: E402
from NPCPrognosisLib.datasets.synth import tabular_radiomics  # noqa: E402
from NPCPrognosisLib.io.manifest import Manifest  # noqa: E402
from NPCPrognosisLib.pipeline.fit import fit_models  # noqa: E402
from NPCPrognosisLib.pipeline.train import split_cohort  # noqa: E402
from NPCPrognosisLib.radiomics.signature import SignatureSettings  # noqa: E402

FAMILIES = {"synth": synth, "relaxometry": relaxometry_phantom}
MONTHS = np.array([36.0, 60.0])
DRAWS = 4000
N_NOISE = 150


def _manifest(table):
    return Manifest(table=table.reset_index(drop=True), root=Path("."), source=Path("cohort.csv"))


def _event_times(family: str, lp_dm: np.ndarray, lp_os: np.ndarray, rng: np.random.Generator):
    """DRAWS metastasis and death times per patient from the generator's outcome model (its private constants)."""
    shape = (len(lp_dm), DRAWS)
    if family == "synth":
        shared, rho, times = rng.standard_normal(shape), synth._ENDPOINT_CORRELATION, []
        for name, lp in (("dmfs", lp_dm), ("os", lp_os)):
            z = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal(shape)
            k, scale = synth._WEIBULL[name]
            times.append(scale * (-np.log(np.clip(ndtr(z), 1e-12, 1.0)) * np.exp(-lp[:, None])) ** (1.0 / k))
        return times
    frailty = relaxometry_phantom._FRAILTY_SD * rng.standard_normal(shape)
    (i_dm, s_dm), (i_os, s_os) = relaxometry_phantom._AFT["dmfs"], relaxometry_phantom._AFT["os"]
    t_dm = np.exp(np.minimum(i_dm - lp_dm[:, None] + frailty + s_dm * rng.logistic(size=shape), 12.0))
    t_os = np.exp(np.minimum(i_os - lp_os[:, None] + frailty + s_os * rng.standard_normal(shape), 12.0))
    return [t_dm, t_os]


def true_survival(family: str, records, rng: np.random.Generator) -> np.ndarray:
    """Product-limit DMFS (deaths censoring) of each patient's re-simulated outcomes at MONTHS."""
    t_dm, t_os = _event_times(family, records["lp_dmfs"].to_numpy(float), records["lp_os"].to_numpy(float), rng)
    time, event = np.minimum(t_dm, t_os), t_dm <= t_os
    order = np.argsort(time, axis=1)
    time, event = np.take_along_axis(time, order, 1), np.take_along_axis(event, order, 1)
    log_s = np.cumsum(np.where(event, np.log1p(-1.0 / (DRAWS - np.arange(DRAWS))), 0.0), axis=1)
    log_s = np.concatenate([np.zeros((len(time), 1)), log_s], axis=1)
    return np.stack([np.exp(np.take_along_axis(log_s, (time <= m).sum(axis=1)[:, None], 1)[:, 0])
                     for m in MONTHS], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="synth")
    parser.add_argument("--n-total", type=int, default=230)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--n-new", type=int, default=200)
    parser.add_argument("--model", default="nomogram")
    parser.add_argument("--reference-n", type=int, default=8000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    generator = FAMILIES[args.family]
    big = generator.simulate_outcomes(args.reference_n, 900001, id_prefix="REF")
    big_features = tabular_radiomics(big, N_NOISE, np.random.default_rng(900001))
    reference = fit_models(_manifest(big), big_features, "dmfs", SignatureSettings(seed=1))
    rows = {k: [] for k in ("s", "lo", "hi", "truth", "limit", "decile")}
    events = []
    for seed in args.seeds:
        records = generator.simulate_outcomes(args.n_total, seed)
        features = tabular_radiomics(records, N_NOISE, np.random.default_rng(seed))
        train, _ = split_cohort(_manifest(records), "dmfs", seed=1)
        keep = records.patient_id.isin(train).to_numpy()
        models = fit_models(_manifest(records[keep]), features[keep].reset_index(drop=True), "dmfs",
                            SignatureSettings(seed=1))
        events.append(sum(models.train_event))
        new = generator.simulate_outcomes(args.n_new, 100000 + seed, id_prefix="NEW")
        new_features = tabular_radiomics(new, N_NOISE, np.random.default_rng(100000 + seed))
        nomogram = models.nomograms[args.model]
        factors = models.inputs(_manifest(new), new_features)
        survival = nomogram.survival(factors, MONTHS)
        lower, upper = nomogram.survival_interval(factors, MONTHS)
        rows["s"].append(survival), rows["lo"].append(lower), rows["hi"].append(upper)
        rows["truth"].append(true_survival(args.family, new, np.random.default_rng(7 + seed)))
        rows["limit"].append(reference.nomograms[args.model].survival(reference.inputs(_manifest(new), new_features),
                                                                      MONTHS))
        rank = np.argsort(np.argsort(-survival, axis=0, kind="stable"), axis=0, kind="stable")
        rows["decile"].append(rank * 10 // len(new))
    s, lo, hi, truth, limit, decile = (np.concatenate(rows[k]) for k in rows)
    print(f"{args.family}, {args.model}: {int(keep.sum())} training patients ({min(events)}-{max(events)} events), "
          f"{len(args.seeds)} cohorts x {args.n_new} new patients")
    for j, month in enumerate(MONTHS):
        known = np.isfinite(lo[:, j])
        inside = {name: float(np.mean((v[known, j] >= lo[known, j]) & (v[known, j] <= hi[known, j])))
                  for name, v in (("own", truth), ("limit", limit))}
        width = float(np.mean(hi[known, j] - lo[known, j]))
        print(f"  {month:.0f} months: 95 % interval holds the patient's own truth {inside['own']:.1%}, the "
              f"{args.reference_n}-patient fit {inside['limit']:.1%}; mean width {width:.3f}")
        print("    by decile of predicted survival (best first), predicted / true: " + " ".join(
            f"{np.mean(s[decile[:, j] == d, j]):.2f}/{np.mean(truth[decile[:, j] == d, j]):.2f}" for d in range(10)))


if __name__ == "__main__":
    main()
