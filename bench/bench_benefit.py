"""Chemotherapy benefit on large synthetic cohorts: does the arm x risk model recover the generator's effect?

Usage:
    python bench/bench_benefit.py [--n 4000] [--seed 11] [--endpoint dmfs] [--json OUT.json]

The project's generator (``simulate_outcomes``, the tabular shortcut of ``synth``: same patients, no images) gives
CCND > 160 mg/m2 a DMFS hazard ratio of exp(-0.6) = 0.549 in the true high-risk half and none elsewhere, while
doctors give chemotherapy more often to advanced stages (confounding). Half the cohort trains, half is held out.

1. **Recovery** (the estimator): ``fit_benefit`` with the generator's true risk halves as the groups, adjusted for
   the clinical confounders; target: the high-risk HR of high vs low dose within 0.1 of 0.549 and the low-risk
   HR's 95% CI including 1.
2. **Product path**: the risk groups come from a clinical + tumour-volume Cox model fitted on the training half
   and its median cut-off (as ``train`` learns the cut-off on training data only); the same model on held-out
   patients gives predicted benefit, the C-for-benefit and benefit calibration.
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.datasets.synth import CHEMO_LOG_HR, simulate_outcomes  # noqa: E402
from NPCPrognosisLib.io.clinical import CLINICAL_FIELDS, encode_clinical, parse_clinical  # noqa: E402
from NPCPrognosisLib.survival.benefit import CONFOUNDERS, assign_arms, fit_benefit, predicted_benefit  # noqa: E402
from NPCPrognosisLib.survival.benefit_evaluation import benefit_calibration, c_for_benefit  # noqa: E402
from NPCPrognosisLib.survival.cox import fit_cox  # noqa: E402


def encoded(table: pd.DataFrame) -> pd.DataFrame:
    rows = [encode_clinical(parse_clinical({c: r.get(c) for c in CLINICAL_FIELDS}, r["patient_id"]), None)
            for _, r in table.iterrows()]
    out = pd.DataFrame(rows)[list(CONFOUNDERS)]
    return out.fillna(out["log10_ebv_dna"].median())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--endpoint", default="dmfs")
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    table = simulate_outcomes(args.n, args.seed)
    conf = encoded(table)
    conf["log_gtvp_ml"] = np.log(table["gtvp_volume_ml"].to_numpy(float))
    t, e = table[f"{args.endpoint}_time"].to_numpy(float), table[f"{args.endpoint}_event"].to_numpy(bool)
    train = np.arange(args.n) < args.n // 2
    test = ~train
    truth_hr = math.exp(CHEMO_LOG_HR)
    true_group = np.where(table["high_risk"].astype(bool), "high", "low")
    base = conf[list(CONFOUNDERS)]

    recovery = fit_benefit(t[train], e[train], table["chemo"][train], table["ccnd"][train], true_group[train],
                           base[train], n_bootstrap=args.bootstrap, seed=args.seed)
    eff = {g: {x["arm"]: x for x in recovery["effects"][g]} for g in ("low", "high")}
    high, low = eff["high"]["high_dose"], eff["low"]["high_dose"]

    # Product path: learned risk score and median cut-off on the training half only.
    cols = list(CONFOUNDERS) + ["log_gtvp_ml"]
    risk_model = fit_cox(conf[train].reset_index(drop=True), t[train], e[train], cols, ties="efron")
    score = risk_model.linear_predictor(conf)
    cut = float(np.median(score[train]))
    groups = np.where(score > cut, "high", "low")
    product = fit_benefit(t[train], e[train], table["chemo"][train], table["ccnd"][train], groups[train],
                          base[train], score=score[train], n_bootstrap=args.bootstrap, seed=args.seed)
    agree = float(np.mean(groups[test] == true_group[test]))
    arm = assign_arms(table["chemo"], table["ccnd"])
    pb = predicted_benefit(product, base[test], groups[test], 60.0)
    cfb = c_for_benefit(pb, arm[test], t[test], e[test], 60.0)
    calib = benefit_calibration(pb, arm[test], t[test], e[test], 60.0)
    peff = {g: {x["arm"]: x for x in product["effects"][g]} for g in ("low", "high")}
    result = {
        "n": args.n, "n_train": int(train.sum()), "endpoint": args.endpoint, "true_high_risk_hr": truth_hr,
        "recovery": {"high_risk_hr": high["hr"], "high_risk_95ci": high["hr_95ci"], "low_risk_hr": low["hr"],
                     "low_risk_95ci": low["hr_95ci"], "interaction_lrt_p": recovery["interaction_lrt"]["p"],
                     "targets_met": {"high_within_0.1": abs(high["hr"] - truth_hr) <= 0.1,
                                     "low_ci_includes_1": low["hr_95ci"][0] <= 1.0 <= low["hr_95ci"][1]}},
        "product": {"group_agreement_with_truth_test": agree,
                    "high_risk_hr": peff["high"]["high_dose"]["hr"],
                    "high_risk_95ci": peff["high"]["high_dose"]["hr_95ci"],
                    "low_risk_hr": peff["low"]["high_dose"]["hr"], "low_risk_95ci": peff["low"]["high_dose"]["hr_95ci"],
                    "interaction_lrt_p": product["interaction_lrt"]["p"],
                    "score_interaction_p": (product.get("score_interaction") or {}).get("p"),
                    "iptw_logrank_high": product["iptw"]["high"]["logrank"],
                    "c_for_benefit_test": cfb, "benefit_calibration_test": calib},
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(result, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
