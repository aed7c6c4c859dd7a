#!/usr/bin/env bash
# Reproduces the shipped demo network (SYNTHETIC - NOT FOR CLINICAL USE) into WORKDIR/network; it is stored once,
# inside the demo bundle: scripts/build_demo_bundle.sh WORKDIR copies it to NPCPrognosisLib/resources/DemoBundle/network.
# 120 synthetic patients (seed 31337; tests and benchmarks use other seeds), 30 epochs, 2 CPU threads, CPU only;
# about 12 minutes on 2 cores (1 min synthesis, 1.5 min preprocessing, 30 x 17 s epochs).
#   scripts/train_demo_network.sh [WORKDIR]     (run inside the project's .venv)
# The shipped demo network predates the Cox warm-up ramp, the gradient clip and the data-derived working grid:
# scripts/demo_network_config.json pins what it was trained with (fixed 64 x 64 x 32 grid at 3 x 3 x 4 mm). Checkpoints stay in
# WORKDIR/train: re-running the script resumes where a killed run stopped and ends with the same weights.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/npc_demo_network}"
[ -f "$WORK/cohort/manifest.csv" ] || npc-prognosis synth --n 120 --seed 31337 --out "$WORK/cohort"
npc-prognosis train-net --manifest "$WORK/cohort/manifest.csv" --endpoint dmfs --out "$WORK/network" \
    --epochs 30 --batch-size 4 --seed 20240 --val-fraction 0.2 --device cpu --threads 2 --synthetic \
    --config scripts/demo_network_config.json --work-dir "$WORK/train" --resume
