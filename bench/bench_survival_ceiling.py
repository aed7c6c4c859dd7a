"""How close to the oracle C can any Cox model get from 160 training patients? A sample-size ceiling for issue 9.

Usage:
    python bench/bench_survival_ceiling.py [--family gradient_echo|relaxometry|synth] [--n-train 160]
                                           [--n-test 200] [--repeats 100] [--seed 1]
                                           [--optimism-replicates 40] [--bench-seeds 31 32 33]
                                           [--json OUT.json]

Why. Issue 9 asks that the nomogram reach >= 0.95 of the oracle C (the C of the generator's true DMFS log hazard)
on 200 held-out patients after training on 160. A model fitted on images can hardly do better, on average, than a
Cox model handed the generator's *own* latent quantities as exact numbers: the true tumour volumes, heterogeneity,
necrosis fraction and node count (which the images only show with noise) beside the clinical factors, with nothing
to select. Its only losses are estimating a dozen coefficients from the training events and the generator's
functional form (thresholds, powers, the treatment effect the oracle includes), which no method is told. This
script draws independent train / test cohorts from the generator's tabular shortcut (no images) and prints, over
``--repeats`` draws, the held-out C / oracle C on the same test patients of two reference models:

* ``clinical + true volumes``: the clinical factors as the nomogram codes them (T and N ordinal, rENE, sex, log10
  EBV DNA with the training median for a missing value, age, LDH) and the two true log tumour volumes: what the
  nomogram amounts to when the radiomics add nothing beyond size;
* ``every latent driver``: the same plus heterogeneity, necrosis fraction and node count, all linear.

``--optimism-replicates`` adds Harrell's bootstrap of the first reference (corrected minus held-out C).
``--bench-seeds`` also scores the very cohorts ``bench_generalise.py --seeds`` draws (training patients from seed
``1000 s + 1``, test patients from ``1000 s + 2``), so each seed's nomogram / oracle reads against what these
references reach on the same patients. What the ceiling loses is the price of 160 patients and an unknown
functional form; what the product loses beyond it is the price of measuring the drivers from images and finding
them among thousands of features. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.datasets import FAMILY_MODULES, phantom_family  # noqa: E402
from NPCPrognosisLib.survival.metrics import harrell_c  # noqa: E402

REFERENCES = ("clinical + true volumes", "every latent driver")
RIDGE = 0.1  # a touch of ridge on standardised columns, so a rare category cannot make the fit diverge


def design(table: pd.DataFrame, reference: str, ebv_fill: float) -> pd.DataFrame:
    """The reference model's columns, from the manifest's clinical fields and the generator's truth columns."""
    ebv = table["ebv_dna"].astype(float)
    columns = {
        "t_stage": table["t_stage"].str[1].astype(float), "n_stage": table["n_stage"].str[1].astype(float),
        "rene": table["rene"].astype(float), "male": (table["sex"] == "M").astype(float),
        "log10_ebv_dna": np.log10(ebv + 1.0).fillna(ebv_fill), "age": table["age"].astype(float),
        "ldh": table["ldh"].astype(float), "log_gtvp_ml": np.log(table["gtvp_volume_ml"].astype(float)),
        "log1p_gtvn_ml": np.log1p(table["gtvn_volume_ml"].astype(float)),
    }
    if reference == "every latent driver":
        columns |= {"heterogeneity": table["heterogeneity"].astype(float),
                    "necrosis_fraction": table["necrosis_fraction"].astype(float),
                    "n_nodes": table["n_nodes"].astype(float)}
    return pd.DataFrame(columns)


def fitted_risk(train: pd.DataFrame, scored: list[pd.DataFrame], reference: str, endpoint: str) -> list[np.ndarray]:
    """The reference Cox model fitted on ``train`` (columns standardised on it), its risk on each of ``scored``."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    fill = float(np.nanmedian(np.log10(train["ebv_dna"].astype(float) + 1.0)))
    x_train = design(train, reference, fill)
    mean, sd = x_train.mean(), x_train.std().replace(0.0, 1.0)
    y = np.array(list(zip(train[f"{endpoint}_event"].astype(bool), train[f"{endpoint}_time"].astype(float))),
                 dtype=[("event", bool), ("time", float)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoxPHSurvivalAnalysis(alpha=RIDGE).fit(((x_train - mean) / sd).to_numpy(), y)
    return [model.predict(((design(t, reference, fill) - mean) / sd).to_numpy()) for t in scored]


def c_of(table: pd.DataFrame, risk: np.ndarray, endpoint: str) -> float:
    return harrell_c(table[f"{endpoint}_time"].to_numpy(float), table[f"{endpoint}_event"].to_numpy(int), risk)


def held_out_ratio(train: pd.DataFrame, test: pd.DataFrame, reference: str, endpoint: str = "dmfs") -> float:
    """Held-out Harrell C of the reference Cox model fitted on ``train``, over the oracle C on ``test``: both
    tables hold the manifest's clinical and outcome columns and the generator's truth columns."""
    (risk,) = fitted_risk(train, [test], reference, endpoint)
    return c_of(test, risk, endpoint) / c_of(test, test[f"lp_{endpoint}"].to_numpy(float), endpoint)


def corrected_minus_held_out(train: pd.DataFrame, test: pd.DataFrame, reference: str, replicates: int,
                             rng: np.random.Generator, endpoint: str = "dmfs") -> float:
    """Harrell's optimism-corrected training C of the reference model minus its C on ``test``.

    Why: issue 9 asks the corrected C to land within 0.04 of the held-out C. The reference model has nothing to
    select, so its bootstrap repeats every modelling step exactly; the spread of this difference over independent
    cohorts is what the two estimates' own noise allows, before any selection adds to it.
    """
    apparent_risk, test_risk = fitted_risk(train, [train, test], reference, endpoint)
    optimism = []
    for _ in range(replicates):
        boot = train.iloc[rng.integers(0, len(train), len(train))]
        in_boot, in_train = fitted_risk(boot, [boot, train], reference, endpoint)
        optimism.append(c_of(boot, in_boot, endpoint) - c_of(train, in_train, endpoint))
    return c_of(train, apparent_risk, endpoint) - float(np.mean(optimism)) - c_of(test, test_risk, endpoint)


def summary(values: np.ndarray) -> dict:
    return {"draws": int(values.size), "mean": float(values.mean()),
            "se": float(values.std(ddof=1) / math.sqrt(values.size)), "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10)), "p90": float(np.percentile(values, 90)),
            "share_ge_0.95": float((values >= 0.95).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gradient_echo", choices=sorted(FAMILY_MODULES))
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bench-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--optimism-replicates", type=int, default=0,
                        help="also Harrell's optimism-corrected C minus the held-out C of the first reference at "
                             "--n-train, with this many bootstrap replicates per draw (0: not run)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    family = phantom_family(args.family)
    result: dict = {"family": args.family, "n_test": args.n_test, "by_n_train": {}, "bench_seeds": {}}
    sizes = sorted({args.n_train, 320, 640})
    block = sizes[-1] + args.n_test
    pool = family.simulate_outcomes(args.repeats * block, args.seed)
    for n_train in sizes:
        result["by_n_train"][n_train] = {}
        for reference in REFERENCES:
            values = np.asarray([held_out_ratio(pool.iloc[s:s + n_train], pool.iloc[s + sizes[-1]:s + block],
                                                reference) for s in range(0, len(pool), block)])
            s = summary(values)
            result["by_n_train"][n_train][reference] = s
            print(f"{args.family}, {n_train} training / {args.n_test} test patients, {s['draws']} draws, "
                  f"{reference}: C / oracle mean {s['mean']:.3f} (SE {s['se']:.3f}), median {s['median']:.3f} "
                  f"(10th-90th {s['p10']:.3f}-{s['p90']:.3f}), share >= 0.95: {s['share_ge_0.95']:.2f}", flush=True)
    if args.optimism_replicates:
        rng = np.random.default_rng(args.seed)
        gaps = np.asarray([corrected_minus_held_out(pool.iloc[s:s + args.n_train], pool.iloc[s + sizes[-1]:s + block],
                                                    REFERENCES[0], args.optimism_replicates, rng)
                           for s in range(0, len(pool), block)])
        triples = np.abs(gaps[: gaps.size // 3 * 3].reshape(-1, 3).mean(axis=1))
        result["optimism"] = {"reference": REFERENCES[0], "replicates": args.optimism_replicates,
                              "mean": float(gaps.mean()), "sd": float(gaps.std(ddof=1)),
                              "share_within_0.04": float((np.abs(gaps) <= 0.04).mean()),
                              "triples_mean_within_0.04": float((triples <= 0.04).mean())}
        o = result["optimism"]
        print(f"{args.family}, {args.n_train} training patients, {REFERENCES[0]}: optimism-corrected minus held-out C "
              f"mean {o['mean']:+.3f}, SD {o['sd']:.3f} over {gaps.size} draws; within 0.04: "
              f"{o['share_within_0.04']:.2f} of single cohorts, {o['triples_mean_within_0.04']:.2f} of "
              f"three-cohort means", flush=True)
    for seed in args.bench_seeds:
        train = family.simulate_outcomes(args.n_train, seed * 1000 + 1)
        test = family.simulate_outcomes(args.n_test, seed * 1000 + 2)
        row = {reference: held_out_ratio(train, test, reference) for reference in REFERENCES}
        result["bench_seeds"][seed] = row
        print(f"bench_generalise seed {seed} ({args.family}): "
              + ", ".join(f"{reference} {value:.3f}" for reference, value in row.items()), flush=True)
    if args.bench_seeds:
        means = {r: float(np.mean([v[r] for v in result["bench_seeds"].values()])) for r in REFERENCES}
        print("bench seeds' mean: " + ", ".join(f"{r} {v:.3f}" for r, v in means.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if all(math.isfinite(v["mean"]) for by in result["by_n_train"].values() for v in by.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
