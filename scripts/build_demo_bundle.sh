#!/usr/bin/env bash
# Reproduces Resources/DemoBundle, the statistical demo model shipped with NPCPrognosis.
# It is trained on a SYNTHETIC cohort (npc-prognosis synth): a software demonstration, NOT for clinical use.
#   scripts/build_demo_bundle.sh [WORKDIR]        (run inside the project's .venv; about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d)}"
npc-prognosis --quiet synth --n 200 --seed 101 --out "$WORK/cohort" --workers 2
npc-prognosis --quiet extract --manifest "$WORK/cohort/manifest.csv" --out "$WORK/features.csv" --workers 2
npc-prognosis --quiet train --manifest "$WORK/cohort/manifest.csv" --features "$WORK/features.csv" \
    --endpoint dmfs --out Resources/DemoBundle --test-fraction 0.3 --seed 101 --synthetic
npc-prognosis --quiet evaluate --bundle Resources/DemoBundle --manifest "$WORK/cohort/manifest.csv" \
    --features "$WORK/features.csv" --endpoint dmfs --out "$WORK/evaluation"
