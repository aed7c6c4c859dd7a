#!/usr/bin/env bash
# Reproduces NPCPrognosisLib/resources/DemoBundle, the statistical demo model shipped with NPCPrognosis.
# It is trained on a SYNTHETIC cohort (npc-prognosis synth): a software demonstration, NOT for clinical use.
#   scripts/build_demo_bundle.sh [WORKDIR]        (run inside the project's .venv; about 23 minutes on 2 cores)
# Radiomics come from the cohort's own contours (as from a radiologist); the demo network (WORKDIR/network from
# scripts/train_demo_network.sh WORKDIR, or else the one the shipped bundle holds now) adds each patient's deep
# score and deep features and is copied into the bundle, so `predict` works without contours; `train` at its
# defaults chooses by cross-validation which of deep score, Rad-score and clinical factors the nomogram combines.
# Induction-chemotherapy response rides along as a binary endpoint, so the Slicer panel and `predict` show its
# probability with the shipped bundle. The last steps print the held-out evaluation of both endpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d)}"
BUNDLE=NPCPrognosisLib/resources/DemoBundle
# the network is stored once, inside the bundle that is about to be replaced: take a copy first
[ -f "$WORK/network/bundle.json" ] || cp -r "$BUNDLE/network" "$WORK/network"
npc-prognosis --quiet synth --n 200 --seed 101 --out "$WORK/cohort" --workers 2
npc-prognosis --quiet extract --manifest "$WORK/cohort/manifest.csv" --out "$WORK/features.csv" --workers 2 \
    --network "$WORK/network"
npc-prognosis --quiet train --manifest "$WORK/cohort/manifest.csv" --features "$WORK/features.csv" \
    --endpoint dmfs --binary-endpoint ic_response --out "$BUNDLE" --test-fraction 0.3 --seed 101 --synthetic \
    --network "$WORK/network"
npc-prognosis --quiet evaluate --bundle "$BUNDLE" --manifest "$WORK/cohort/manifest.csv" \
    --features "$WORK/features.csv" --endpoint dmfs --out "$WORK/evaluation"
npc-prognosis --quiet evaluate --bundle "$BUNDLE" --manifest "$WORK/cohort/manifest.csv" \
    --features "$WORK/features.csv" --endpoint ic_response --out "$WORK/evaluation_ic_response"
python - "$WORK/evaluation/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(f"held-out n={metrics['n']} events={metrics['events']}")
for name, block in metrics["models"].items():
    lo, hi = block["c_index_95ci"]
    print(f"  {name:20s} C-index {block['c_index']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
PY
python - "$WORK/evaluation_ic_response/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(f"ic_response held-out n={metrics['n']} responders={metrics['positives']} (model used: {metrics['model_used']})")
for name, block in metrics["models"].items():
    lo, hi = block["auc_95ci"]
    print(f"  {name:20s} AUC {block['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), Brier {block['brier']:.3f}")
for warning in metrics.get("warnings", []):
    print(f"  warning: {warning}")
PY

