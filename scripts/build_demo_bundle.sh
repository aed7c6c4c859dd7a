#!/usr/bin/env bash
# Reproduces Resources/DemoBundle, the statistical demo model shipped with NPCPrognosis.
# It is trained on a SYNTHETIC cohort (npc-prognosis synth): a software demonstration, NOT for clinical use.
#   scripts/build_demo_bundle.sh [WORKDIR]        (run inside the project's .venv; about 20 minutes on 2 cores)
# Radiomics come from the cohort's own contours (as from a radiologist); the shipped demo network
# (Resources/DemoNetwork, build it first with scripts/train_demo_network.sh) adds each patient's deep score and is
# copied into the bundle, so `predict` works without contours and the nomogram combines deep score, Rad-score
# and clinical factors. The last step prints the held-out evaluation (deep, radiomics-only and combined nomograms).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d)}"
npc-prognosis --quiet synth --n 200 --seed 101 --out "$WORK/cohort" --workers 2
npc-prognosis --quiet extract --manifest "$WORK/cohort/manifest.csv" --out "$WORK/features.csv" --workers 2 \
    --network Resources/DemoNetwork
npc-prognosis --quiet train --manifest "$WORK/cohort/manifest.csv" --features "$WORK/features.csv" \
    --endpoint dmfs --out Resources/DemoBundle --test-fraction 0.3 --seed 101 --synthetic --network Resources/DemoNetwork
npc-prognosis --quiet evaluate --bundle Resources/DemoBundle --manifest "$WORK/cohort/manifest.csv" \
    --features "$WORK/features.csv" --endpoint dmfs --out "$WORK/evaluation"
python - "$WORK/evaluation/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(f"held-out n={metrics['n']} events={metrics['events']}")
for name, block in metrics["models"].items():
    lo, hi = block["c_index_95ci"]
    print(f"  {name:20s} C-index {block['c_index']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
PY
