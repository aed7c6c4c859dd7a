"""Record the typicality reference in a network bundle trained before train-net recorded it.

`segment` warns about sequences given in the wrong places only when its bundle records how the training scans'
sequences correlate (NPCPrognosisLib/deep/typicality.py); this adds the record from the manifest the network was
trained on, without touching the weights. Run inside the project's .venv:
    python scripts/add_typicality_record.py NETWORK_BUNDLE TRAINING_MANIFEST
The shipped demo network's: scripts/train_demo_network.sh's cohort (synth --n 120 --seed 31337 --id-prefix DEMONET).
"""
from __future__ import annotations

import argparse
import json

from NPCPrognosisLib.deep.training import add_typicality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("manifest")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", default=None, help="keep the preprocessing cache here (default: temporary)")
    args = parser.parse_args()
    print(json.dumps(add_typicality(args.bundle, args.manifest, workers=args.workers, work_dir=args.work_dir),
                     indent=1))


if __name__ == "__main__":  # the patients are prepared in spawned processes, which import this file
    main()
