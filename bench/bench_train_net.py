"""Time the demo network's training configuration on CPU and extrapolate to the full run.

Usage: python bench/bench_train_net.py [--n 100] [--epochs 1] [--full-epochs 14] [--threads 2]

Runs what ``train-net`` runs at its defaults (data-derived working grid, default architecture and batch size) on the
demo cohort recipe, but for ``--epochs`` epochs into a temporary folder, and reports: cohort
synthesis time, preprocessing time (N4 + resampling, done once per patient and cached), seconds per epoch
(training + validation) and the EXTRAPOLATED wall time of the full ``--full-epochs`` run
= preprocessing + full_epochs x measured seconds per epoch. The extrapolation is linear because every epoch does
the same work. The machine's load is printed too: on a shared machine the numbers are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--full-epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from NPCPrognosisLib.datasets.synth import synthesize_cohort
    from NPCPrognosisLib.deep.training import train_network

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = synthesize_cohort(args.n, 31337, f"{tmp}/cohort", progress=False)
        synth_s = time.perf_counter() - start
        start = time.perf_counter()
        out = train_network(cohort.manifest_path, "dmfs", f"{tmp}/bundle", epochs=args.epochs,
                            seed=20240, val_fraction=0.2, progress=False, synthetic_demo=True,
                            work_dir=f"{tmp}/work", force=True)  # a 1-epoch timing run cannot pass the gate
        total_s = time.perf_counter() - start
        history = json.loads((Path(out) / "bundle.json").read_text(encoding="utf-8"))["network"]["history"]
    epoch_s = sum(h["seconds"] for h in history) / len(history)
    prep_s = total_s - sum(h["seconds"] for h in history)
    result = {
        "n_patients": args.n, "threads": args.threads, "epochs_run": args.epochs,
        "synthesis_s": round(synth_s, 1), "preprocess_and_finalise_s": round(prep_s, 1),
        "seconds_per_epoch": round(epoch_s, 1),
        "extrapolated_full_run_s": round(prep_s + args.full_epochs * epoch_s, 1),
        "full_epochs": args.full_epochs, "load_average_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
