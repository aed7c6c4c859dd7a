"""Add a network's deep score and deep radiomic features to an existing features table (benchmark helper).

Usage:
    python bench/add_deep_features.py --manifest M --features F --out F_DEEP.csv [--network DIR] [--workers 2]

``extract --network`` computes the same columns together with PyRadiomics; on a cohort whose radiomics were
already extracted (hours on 2 cores), this computes only the network's part, with the same functions
(``segment_preprocessed`` for the deep score, ``deep_features`` on the manifest's contours) and writes the joined
table with metadata naming the network, exactly as ``extract --network`` would, so ``train --network`` accepts it.
Default network: the shipped SYNTHETIC demo network. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.contract import SEQUENCES  # noqa: E402
from NPCPrognosisLib.io.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from NPCPrognosisLib.io.bundle import network_checksum  # noqa: E402
from NPCPrognosisLib.io.manifest import read_manifest  # noqa: E402
from NPCPrognosisLib.radiomics.features_table import DEEP_SCORE, meta_path_for, read_features  # noqa: E402
from NPCPrognosisLib.resources import DEMO_NETWORK  # noqa: E402


def deep_row(entry, network: str) -> dict:
    from NPCPrognosisLib.deep.features import deep_features
    from NPCPrognosisLib.deep.segmentation import cached_network, segment_preprocessed
    from NPCPrognosisLib.imaging.preprocess import preprocess_images
    from NPCPrognosisLib.io.images import load_patient

    model = cached_network(network)
    patient = load_patient(entry.patient_id, {c: entry.images[c] for c in SEQUENCES}, entry.mask)
    prepared = preprocess_images(patient.images, model.preprocess)
    result = segment_preprocessed(model, prepared, patient_id=entry.patient_id)
    return {"patient_id": entry.patient_id, DEEP_SCORE: float(result.deep_score),
            **deep_features(model, prepared, patient.mask)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--network", default=str(DEMO_NETWORK))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from NPCPrognosisLib.processes import worker_pool

    table, meta = read_features(args.features)
    entries = [e for e in read_manifest(args.manifest).entries() if e.patient_id in set(table["patient_id"])]
    with worker_pool(args.workers) as pool:
        rows = list(pool.map(deep_row, entries, [args.network] * len(entries)))
    joined = table.merge(pd.DataFrame(rows), on="patient_id", how="inner")
    out = Path(args.out)
    write_text_atomic(out, joined.to_csv(index=False))
    write_json_atomic(meta_path_for(out), {**meta, "network": args.network,
                                           "network_sha256": network_checksum(args.network),
                                           "deep_columns_added_by": "bench/add_deep_features.py"})
    print(json.dumps({"patients": len(joined), "columns": joined.shape[1], "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
