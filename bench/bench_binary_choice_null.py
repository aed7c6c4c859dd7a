"""How often the binary endpoint's model choice replaces the ridge, on generated cohorts with and without signal.

Usage:
    python bench/bench_binary_choice_null.py [--null-cohorts 40] [--signal-cohorts 10] [--n-train 160]
                                             [--n-held-out 1000] [--nested 0] [--ridge-penalty-step 1]
                                             [--workers 1] [--json OUT.json]

Why. ``train`` uses the ridge unless the tumour volume or the clinical model beats it on the same 2 x 5 folds by
a margin (:func:`NPCPrognosisLib.pipeline.binary_choice.choose_model`). A margin too small lets noise replace the
ridge when nothing is learnable; one too large keeps a ridge that a simpler model out-validates. Each cohort here
is drawn by the tests' generators (``Testing/Python/test_binary_endpoint.py``: seven independent clinical factors,
a GTVp volume and noise image features), in four scenarios:

* ``null``: coin-toss labels, independent of everything;
* ``volume``: the tests' volume cohort (true log-odds 1.2 x standardised log volume, 30 noise features);
* ``clinical``: log-odds 1.0 x standardised EBV DNA + 0.6 x standardised N stage, the image features noise;
* ``weak_volume``: the same with log-odds 0.6 x standardised log volume;
* ``ridge``: the tests' weak-signal cohort (20 of 60 features noisy copies of the latent the label follows) with
  a volume column that is noise: the ridge is the better model and any replacement is wrong;
* ``weak_ridge``: the same with half the labels replaced by coin tosses: the ridge learns a little, the simpler
  models nothing, and a replacement costs what the ridge learned.

On each, :func:`NPCPrognosisLib.pipeline.binary.cross_validate` scores the ridge, the volume and the clinical
model on the training patients (the other models are left out: the choice reads only these three), each is
fitted on all of them and scored on ``--n-held-out`` new patients of the same generator. The per-fold AUCs are
kept, so every rule of :func:`choose_model` (its ``z`` and ``corrected`` margins) is evaluated on the same fits
without refitting; ``--nested K`` also runs :func:`NPCPrognosisLib.pipeline.binary.nested_choice` (the rule in the
code) on the first K cohorts per scenario where the code's rule replaced the ridge (about 90 s each).
``--ridge-penalty-step 3`` searches every third of the ridge's penalties (as the tests do for time): the penalty
search is most of a cohort's ~30 s.
Prints per scenario and rule the replacement rate and the held-out AUC of the chosen model minus the ridge's.
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))  # the tests' cohort generators, one version of each

from test_binary_endpoint import _volume_cohort, _weak_signal_cohort  # noqa: E402

from NPCPrognosisLib.classification import ridge as rg  # noqa: E402
from NPCPrognosisLib.pipeline import binary as bn  # noqa: E402
from NPCPrognosisLib.pipeline.binary_choice import choose_model  # noqa: E402

SCENARIOS = ("null", "volume", "weak_volume", "clinical", "ridge", "weak_ridge")
THREE = ("clinical", bn.VOLUME, bn.RIDGE)
#: The rules compared: (label, keyword arguments of choose_model).
RULES = (("1 SE (naive)", {"z": 1.0, "corrected": False}), ("2 SE (naive)", {"z": 2.0, "corrected": False}),
         ("1 SE (corrected)", {"z": 1.0, "corrected": True}), ("1.64 SE (corrected)", {"z": 1.64, "corrected": True}))
NOISE_FEATURES = 30
RIDGE_CS = rg.RIDGE_CS


def cohort(scenario: str, n: int, seed: int):
    """Clinical table, features and labels of ``n`` patients of one scenario (module docstring)."""
    rng = np.random.default_rng(seed)
    if scenario in ("ridge", "weak_ridge"):
        clinical, features, y = _weak_signal_cohort(n, rng)
        features["t1c_gtvp_original_shape_MeshVolume"] = 1000 * np.exp(rng.normal(2.5, 0.8, n))
        coin = rng.random(n) < (0.5 if scenario == "weak_ridge" else 0.0)
        return clinical, features, np.where(coin, rng.integers(0, 2, n), y)
    clinical, features, y = _volume_cohort(n, NOISE_FEATURES, rng)
    if scenario == "null":
        y = rng.integers(0, 2, n)
    elif scenario == "weak_volume":
        log_ml = np.log(features["t1c_gtvp_original_shape_MeshVolume"].to_numpy() / 1000)
        y = (rng.random(n) < 1 / (1 + np.exp(-0.6 * (log_ml - 2.5) / 0.8))).astype(int)
    elif scenario == "clinical":
        ebv, n_stage = clinical["log10_ebv_dna"], clinical["n_stage"]
        logit = 1.0 * (ebv - ebv.mean()) / ebv.std() + 0.6 * (n_stage - n_stage.mean()) / n_stage.std()
        y = (rng.random(n) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(int)
    return clinical, features, y


def one_cohort(scenario: str, seed: int, n_train: int, n_held_out: int, nested: bool, penalty_step: int) -> dict:
    """The three models' per-fold AUCs on the training patients and held-out AUCs on the new ones."""
    bn.MODELS = THREE  # the choice reads only these
    rg.RIDGE_CS = RIDGE_CS[::penalty_step]
    clinical, features, y = cohort(scenario, n_train + n_held_out, seed)
    tr, te = np.arange(n_train), np.arange(n_train, n_train + n_held_out)
    train = (clinical.iloc[tr].reset_index(drop=True), features.iloc[tr].reset_index(drop=True), y[tr])
    test = (clinical.iloc[te].reset_index(drop=True), features.iloc[te].reset_index(drop=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv, _ = bn.cross_validate(*train, seed)
        signature, models = bn._fit_all(*train, seed)
        probs = bn.predict_models({"signature": signature, "models": models}, *test, list(THREE))
        row = {"scenario": scenario, "seed": seed, "positives": int(y[tr].sum()),
               "fold_aucs": {name: cv[name]["fold_aucs"] for name in THREE},
               "cv_auc": {name: cv[name]["auc"] for name in THREE},
               "held_out_auc": {name: float(roc_auc_score(y[te], probs[name])) for name in THREE}}
        if nested:
            row["nested"] = bn.nested_choice(*train, seed, cv)
    return row


def choices(row: dict) -> dict:
    """The model each rule of :data:`RULES` chooses on one cohort's fold AUCs."""
    return {label: choose_model(row["fold_aucs"], bn.DEFAULT, bn.CHALLENGERS, **rule)[0] for label, rule in RULES}


def summary(rows: list[dict]) -> dict:
    """Per rule: how often each model was chosen and the held-out AUC of the chosen model minus the ridge's (mean
    over all cohorts, and over those where the ridge was replaced)."""
    result = {}
    for label, _ in RULES:
        chosen = [choices(row)[label] for row in rows]
        gain = np.array([row["held_out_auc"][c] - row["held_out_auc"][bn.RIDGE] for row, c in zip(rows, chosen)])
        flipped = np.array([c != bn.RIDGE for c in chosen])
        result[label] = {"replaced": int(flipped.sum()), "of": len(rows),
                         "chosen": {name: chosen.count(name) for name in THREE if chosen.count(name)},
                         "held_out_gain_mean": float(gain.mean()),
                         "held_out_gain_when_replaced": float(gain[flipped].mean()) if flipped.any() else None,
                         "held_out_gain_min": float(gain.min())}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-cohorts", type=int, default=40)
    parser.add_argument("--signal-cohorts", type=int, default=10, help="per signal scenario")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all four")
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-held-out", type=int, default=1000)
    parser.add_argument("--nested", type=int, default=0, help="nested CV AUC of the first K replacements per scenario")
    parser.add_argument("--ridge-penalty-step", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    jobs = [(scenario, 5800 + k) for scenario in (args.scenario or SCENARIOS)
            for k in range(args.null_cohorts if scenario == "null" else args.signal_cohorts)]
    rows = []
    fixed = (args.n_train, args.n_held_out, False, args.ridge_penalty_step)
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(one_cohort, *zip(*jobs), *([x] * len(jobs) for x in fixed)):
            rows.append(row)
            print(json.dumps({"scenario": row["scenario"], "seed": row["seed"], **choices(row),
                              **{f"cv_{k}": round(v, 3) for k, v in row["cv_auc"].items()},
                              **{f"held_out_{k}": round(v, 3) for k, v in row["held_out_auc"].items()}}), flush=True)
    if args.nested:  # the code's rule, on the first cohorts it made replace the ridge
        wanted = [(r["scenario"], r["seed"]) for r in rows
                  if choose_model(r["fold_aucs"], bn.DEFAULT, bn.CHALLENGERS)[0] != bn.RIDGE]
        wanted = [w for scenario in dict.fromkeys(s for s, _ in wanted)
                  for w in [x for x in wanted if x[0] == scenario][:args.nested]]
        with ProcessPoolExecutor(args.workers) as pool:
            nested = list(pool.map(one_cohort, *zip(*wanted), *([x] * len(wanted) for x in
                                                                  (args.n_train, args.n_held_out, True,
                                                                   args.ridge_penalty_step))))
        for row in nested:
            chosen = choose_model(row["fold_aucs"], bn.DEFAULT, bn.CHALLENGERS)[0]
            print(f"nested {row['scenario']} {row['seed']}: chosen {chosen} (CV {row['cv_auc'][chosen]:.3f}), nested "
                  f"CV AUC {row['nested']['auc']:.3f} ({', '.join(row['nested']['chosen_per_fold'])}), held-out "
                  f"{row['held_out_auc'][chosen]:.3f} against the ridge's {row['held_out_auc'][bn.RIDGE]:.3f}")
        rows = [next((n for n in nested if (n["scenario"], n["seed"]) == (r["scenario"], r["seed"])), r) for r in rows]
    result = {scenario: summary([r for r in rows if r["scenario"] == scenario])
              for scenario in dict.fromkeys(r["scenario"] for r in rows)}
    for scenario, rules in result.items():
        for label, res in rules.items():
            when, worst = res["held_out_gain_when_replaced"], res["held_out_gain_min"]
            print(f"SYNTHETIC {scenario}, {label}: ridge replaced in {res['replaced']}/{res['of']} {res['chosen']}; "
                  f"held-out AUC chosen - ridge {res['held_out_gain_mean']:+.3f} on average"
                  + (f", {when:+.3f} where replaced, worst {worst:+.3f}" if when is not None else ""),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
