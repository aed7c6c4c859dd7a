#!/usr/bin/env bash
# Reproduces the shipped demo network (SYNTHETIC - NOT FOR CLINICAL USE) into WORKDIR/network; it is stored once,
# inside the demo bundle: scripts/build_demo_bundle.sh WORKDIR copies it to NPCPrognosisLib/resources/DemoBundle/network.
# 120 synthetic patients (seed 31337; tests and benchmarks use other seeds; IDs DEMONET0001-0120, so that the
# network never takes another synthetic cohort's SYN0001 for its own training patient SYN0001), trained with `train-net`'s defaults as a
# user would run it (nothing pinned by a config file: data-derived working grid, Cox warm-up ramp, gradient clip,
# GTVp opening and node-piece count chosen from the training patients), 2 CPU threads, CPU only; about 32 minutes on
# 2 cores. Checkpoints stay in WORKDIR/train: re-running the script resumes where a killed run stopped and ends with
# the same weights.
#   scripts/train_demo_network.sh [WORKDIR]     (run inside the project's .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/npc_demo_network}"
[ -f "$WORK/network_cohort/manifest.csv" ] || npc-prognosis synth --n 120 --seed 31337 --id-prefix DEMONET --out "$WORK/network_cohort"
npc-prognosis train-net --manifest "$WORK/network_cohort/manifest.csv" --endpoint dmfs --out "$WORK/network" \
    --seed 20240 --device cpu --threads 2 --synthetic --work-dir "$WORK/train" --resume
