#!/usr/bin/env bash
# Reproduces the shipped demo network Resources/DemoNetwork/ (SYNTHETIC - NOT FOR CLINICAL USE).
# 100 synthetic patients (seed 31337; the tests and benchmarks use other seeds), 2 CPU threads, CPU only.
# Usage: scripts/train_demo_network.sh [work_dir]   (run from the repository root with the venv active)
set -euo pipefail
WORK="${1:-/tmp/npc_demo_network}"
EPOCHS="${EPOCHS:-30}"
mkdir -p "$WORK"
python - "$WORK" "$EPOCHS" <<'PY'
import sys, time
import torch
torch.set_num_threads(2)
from NPCPrognosisLib.synth import synthesize_cohort
from NPCPrognosisLib.net_training import train_network

work, epochs = sys.argv[1], int(sys.argv[2])
start = time.time()
cohort = synthesize_cohort(100, 31337, f"{work}/cohort", progress=True)
print(f"cohort synthesised in {time.time() - start:.0f} s", flush=True)
start = time.time()
train_network(cohort.manifest_path, "dmfs", "Resources/DemoNetwork", epochs=epochs, batch_size=4, device="cpu",
              seed=20240, val_fraction=0.2, progress=True, synthetic_demo=True, work_dir=f"{work}/train",
              config={"lr": 2e-3, "ce_weights": [1.0, 2.0, 5.0], "dice_include_background": False})
print(f"demo network trained in {time.time() - start:.0f} s (2 CPU threads)", flush=True)
PY
