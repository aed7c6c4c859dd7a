"""Does the nomogram design choice's paired SE match the real error? Plain against corrected, on tabular cohorts.

Usage:
    python bench/bench_selection_se.py [--cohorts 30] [--scenario full --scenario rad_adds ...]
                                       [--n-train 160] [--n-held-out 1000] [--n-noise 40] [--rad-score-folds 5]
                                       [--workers 2] [--json OUT.json]

Why. :func:`NPCPrognosisLib.pipeline.selection.select_design` keeps the stacked combination of every block unless a
simpler design beats it by more than the plain paired SE ``SD / sqrt(5)`` of their per-fold C differences
(:func:`NPCPrognosisLib.pipeline.selection._stacked_unless_beaten`). The five folds share training patients, so
that SE understates the error of the mean difference; the binary endpoint's choice found it about half the real
spread (``bench/bench_binary_choice_null.py``) and took Nadeau & Bengio's corrected SE ``SD x sqrt(1/5 + 1/4)``
(1.5 times the plain one for five folds). Each cohort here is drawn by the generator the optimism tests use
(``simulate_outcomes`` and ``tabular_radiomics``: four noisy driver columns, ``--n-noise`` noise columns; the two
volume columns in mm^3 so the volume block is offered), in three scenarios:

* ``full``: as drawn (the Rad-score's drivers, the volumes and the clinical factors all carry signal);
* ``rad_adds``: a texture column (``t2_gtvp_original_glcm_Contrast``) measures, with noise SD 0.5, a driver of
  its own (standard normal, log-hazard 0.8) added to the generator's DMFS linear predictor and the DMFS times
  redrawn from its Weibull (shape 1.2, scale 120 months) and censoring (accrual 60-120 months, drop-out
  exponential 400): the Rad-score adds what no clinical factor or volume knows, so the full design should win;
* ``no_rad``: the features table's rows shuffled against the patients, so the Rad-score and the volumes carry
  nothing and a clinical design should win;
* ``null``: the outcomes shuffled against everything.

On each, ``select_design`` runs on the training patients with the product's defaults (``SignatureSettings(seed)``,
the radiomics configuration not searched, 5 folds, Cox penalizer 0.01) and its per-fold C of every design is kept
(read off the call to ``_stacked_unless_beaten``); then ``fit_models`` fits the full design on all training patients
as ``train`` does, every other design is fitted on the same inputs, and all are scored on ``--n-held-out`` new
patients of the same generator. Both rules are evaluated on the same fits: the plain one (the code's) and the
corrected one (``_stacked_unless_beaten(..., test_to_train=1/4)``).
Prints per cohort the choices, then per scenario (a) the SD across cohorts of each simpler design's paired C
difference against the full one beside its mean plain and corrected SE, (b) how often each rule replaced the full
design, (c) the held-out C of the chosen design minus the full design's. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.datasets.synth import simulate_outcomes, tabular_radiomics  # noqa: E402
from NPCPrognosisLib.io.manifest import Manifest  # noqa: E402
from NPCPrognosisLib.pipeline import selection as sel  # noqa: E402
from NPCPrognosisLib.pipeline.fit import COX_PENALIZER, ebv_fill_value, fit_models  # noqa: E402
from NPCPrognosisLib.pipeline.models import FACTOR_BLOCKS, SCORE_FACTORS  # noqa: E402
from NPCPrognosisLib.radiomics.signature import SignatureSettings  # noqa: E402
from NPCPrognosisLib.survival.metrics import harrell_c  # noqa: E402
from NPCPrognosisLib.survival.nomogram import fit_nomogram  # noqa: E402
from NPCPrognosisLib.survival.splits import event_folds  # noqa: E402

SCENARIOS = ("full", "rad_adds", "no_rad", "null")
#: Held-out to training patients of a fold of the selection's k-fold cross-validation.
TEST_TO_TRAIN = 1 / (sel.SELECTION_FOLDS - 1)
RULES = (("plain", None), ("corrected", TEST_TO_TRAIN))


def cohort(scenario: str, n: int, seed: int, n_noise: int):
    """Records (manifest columns) and features table of ``n`` patients of one scenario (module docstring)."""
    rng = np.random.default_rng(seed)
    records = simulate_outcomes(n, 5800 + seed)
    features = tabular_radiomics(records, n_noise, rng)
    # tabular_radiomics writes log volumes; the volume block reads mm^3 (log(1 + mL) of them is the noisy log)
    features["t1c_gtvp_original_shape_MeshVolume"] = 1000 * np.exp(features["t1c_gtvp_original_shape_MeshVolume"])
    features["t1c_gtvn_original_shape_MeshVolume"] = 1000 * np.clip(
        np.expm1(features["t1c_gtvn_original_shape_MeshVolume"]), 0, None)
    if scenario == "rad_adds":
        texture = rng.standard_normal(n)
        features["t2_gtvp_original_glcm_Contrast"] = texture + rng.normal(0, 0.5, n)
        lp = records["lp_dmfs"].to_numpy() + 0.8 * texture
        dmfs = 120.0 * (rng.exponential(1.0, n) * np.exp(-lp)) ** (1 / 1.2)
        censor = np.minimum(rng.uniform(60.0, 120.0, n), rng.exponential(400.0, n))
        records["dmfs_time"] = np.round(np.minimum(dmfs, censor), 2)
        records["dmfs_event"] = (dmfs <= censor).astype(int)
    elif scenario == "no_rad":
        shuffled = features.drop(columns="patient_id").sample(frac=1.0, random_state=seed).to_numpy()
        features.iloc[:, 1:] = shuffled
    elif scenario == "null":
        outcome = [c for c in records.columns if c.startswith("dmfs")]
        records[outcome] = records[outcome].sample(frac=1.0, random_state=seed).to_numpy()
    return records, features


def one_cohort(scenario: str, seed: int, n_train: int, n_held_out: int, n_noise: int, rad_score_folds: int) -> dict:
    """Every design's per-fold C inside the training patients and held-out C on the new ones."""
    records, features = cohort(scenario, n_train + n_held_out, seed, n_noise)
    parts = []
    for rows in (slice(0, n_train), slice(n_train, None)):
        parts.append((Manifest(table=records.iloc[rows].reset_index(drop=True), root=Path("."),
                               source=Path(f"{scenario}-{seed}.csv")), features.iloc[rows].reset_index(drop=True)))
    (manifest, train_features), (new_manifest, new_features) = parts
    time, event = manifest.outcome_arrays("dmfs")
    settings = SignatureSettings(seed=seed)
    clinical = manifest.clinical_table(ebv_fill_value(manifest))  # as train fills a missing EBV DNA
    seen = {}
    original = sel._stacked_unless_beaten

    def recording(rows, scores, designs, **kwargs):
        seen.update(scores={k: list(v) for k, v in scores.items()}, designs=designs)
        return original(rows, scores, designs, **kwargs)

    sel._stacked_unless_beaten = recording
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fold = event_folds(event, sel.SELECTION_FOLDS, settings.seed + 15485863)
            chosen, rows = sel.select_design(clinical, train_features, time, event, fold, settings, None,
                                             rad_score_folds=rad_score_folds, penalizer=COX_PENALIZER)
            designs, scores = seen["designs"], seen["scores"]
            rules = {label: sel._stacked_unless_beaten(
                [sel._summary(name, scores[name], len(columns)) for name, columns in designs.items()], scores,
                designs, test_to_train=t2t) for label, t2t in RULES}
            assert rules["plain"] == chosen, "the plain rule is the code's"
            full = full_design(scores, designs)
            coding = "categorical" if "categorical" in full else "ordinal"
            models = fit_models(manifest, train_features, "dmfs", settings, rad_score_folds=rad_score_folds,
                                clinical_coding=coding, nomogram_factors=designs[full])
            inputs = models.training_inputs(manifest, train_features)
            new_inputs = models.inputs(new_manifest, new_features)
            new_time, new_event = new_manifest.outcome_arrays("dmfs")
            held_out = {}
            for name, columns in designs.items():
                model = fit_nomogram(name, inputs, columns, time, event, penalizer=COX_PENALIZER, scores=SCORE_FACTORS,
                                     factor_blocks=FACTOR_BLOCKS, seed=settings.seed,
                                     groups=np.asarray(manifest.patient_ids))
                held_out[name] = harrell_c(new_time, new_event, model.risk(new_inputs))
    finally:
        sel._stacked_unless_beaten = original
    return {"scenario": scenario, "seed": seed, "events": int(event.sum()), "full": full, "chosen": rules,
            "fold_c": scores, "held_out_c": held_out}


def full_design(scores: dict, designs: dict) -> str:
    """The stacked combination the rule compares against, picked as :func:`_stacked_unless_beaten` picks it."""
    widest = max(_blocks(designs, name) for name in designs)
    return sel._best([sel._summary(name, scores[name], len(columns)) for name, columns in designs.items()
                      if _blocks(designs, name) == widest])["name"]


def _blocks(designs: dict, name: str) -> int:
    from NPCPrognosisLib.survival.nomogram import stacking_blocks

    score_blocks, others = stacking_blocks(designs[name], SCORE_FACTORS, FACTOR_BLOCKS)
    return len(score_blocks) + len(others)


def paired(row: dict, name: str) -> tuple[float, float, float] | None:
    """Mean per-fold C difference of ``name`` against the full design, with its plain and corrected SE."""
    plain = sel.paired_gain(row["fold_c"][name], row["fold_c"][row["full"]])
    corrected = sel.paired_gain(row["fold_c"][name], row["fold_c"][row["full"]], test_to_train=TEST_TO_TRAIN)
    return None if plain is None else (plain[0], plain[1], corrected[1])


def summary(rows: list[dict]) -> dict:
    """(a) per simpler design the spread of its paired difference and the mean SEs; (b, c) per rule the
    replacements and the held-out C of the chosen design minus the full one's."""
    designs = [n for n in rows[0]["held_out_c"] if all(n in r["held_out_c"] for r in rows)]
    spread = {}
    for name in designs:
        values = [p for r in rows if r["full"] != name and (p := paired(r, name)) is not None]
        if len(values) < 3:
            continue
        diff, plain, corrected = np.array(values).T
        held = np.array([r["held_out_c"][name] - r["held_out_c"][r["full"]] for r in rows if r["full"] != name])
        spread[name] = {"cohorts": len(values), "paired_difference_mean": float(diff.mean()),
                        "paired_difference_sd": float(diff.std(ddof=1)), "plain_se_mean": float(plain.mean()),
                        "corrected_se_mean": float(corrected.mean()),
                        "held_out_difference_mean": float(held.mean())}
    rules = {}
    for label, _ in RULES:
        gain = np.array([r["held_out_c"][r["chosen"][label]] - r["held_out_c"][r["full"]] for r in rows])
        replaced = np.array([r["chosen"][label] != r["full"] for r in rows])
        chosen = [r["chosen"][label] for r in rows if r["chosen"][label] != r["full"]]
        rules[label] = {"replaced": int(replaced.sum()), "of": len(rows),
                        "replaced_by": {n: chosen.count(n) for n in dict.fromkeys(chosen)},
                        "held_out_gain_mean": float(gain.mean()),
                        "held_out_gain_when_replaced": float(gain[replaced].mean()) if replaced.any() else None,
                        "held_out_gain_min": float(gain.min()), "held_out_gain_max": float(gain.max())}
    best = max(designs, key=lambda n: np.mean([r["held_out_c"][n] for r in rows]))
    full_c = float(np.mean([r["held_out_c"][r["full"]] for r in rows]))
    return {"cohorts": len(rows), "events_mean": float(np.mean([r["events"] for r in rows])),
            "held_out_c_full_mean": full_c, "best_design_on_average": best,
            "held_out_c_best_mean": float(np.mean([r["held_out_c"][best] for r in rows])),
            "paired": spread, "rules": rules}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=30, help="per scenario")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all four")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-held-out", type=int, default=1000)
    parser.add_argument("--n-noise", type=int, default=40)
    parser.add_argument("--rad-score-folds", type=int, default=5, help="train's default: 5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the per-fold filter notes, hundreds per cohort
    jobs = [(scenario, args.first_seed + k) for scenario in (args.scenario or SCENARIOS) for k in range(args.cohorts)]
    fixed = (args.n_train, args.n_held_out, args.n_noise, args.rad_score_folds)
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(one_cohort, *zip(*jobs), *([x] * len(jobs) for x in fixed)):
            rows.append(row)
            print(json.dumps({"scenario": row["scenario"], "seed": row["seed"], "events": row["events"],
                              "full": row["full"], **row["chosen"],
                              **{f"held_out_{k}": round(v, 3) for k, v in row["held_out_c"].items()}}), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    result = {scenario: summary([r for r in rows if r["scenario"] == scenario])
              for scenario in dict.fromkeys(r["scenario"] for r in rows)}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
