"""Evaluating a bundle on a cohort: discrimination, risk groups, calibration, plots.

Honest by default: patients the bundle was trained on are left out unless the user asks for them, because a
C-index on training patients says how well the model memorised, not how well it predicts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import write_json_atomic, write_text_atomic
from NPCPrognosisLib.io.clinical import parse_clinical
from NPCPrognosisLib.io.manifest import CLINICAL_FIELDS, Manifest, check_outcomes
from NPCPrognosisLib.pipeline.models import load_bundle
from NPCPrognosisLib.pipeline.train import hash_id
from NPCPrognosisLib.radiomics.features_table import read_features, read_manifest_features

log = logging.getLogger(__name__)


def evaluate_cohort(
    bundle_path: str | Path,
    manifest: Manifest,
    features_path: str | Path,
    endpoint: str,
    out_dir: str | Path,
    *,
    subset: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv`` and PNG plots to ``out_dir``; returns the metrics."""
    from NPCPrognosisLib.survival.metrics import evaluate_risk
    from NPCPrognosisLib.survival.plots import plot_calibration, plot_km_by_group
    from NPCPrognosisLib.survival.risk_groups import assign_groups

    bundle = load_bundle(bundle_path)
    if endpoint != bundle.endpoint:
        raise InputError(f"the bundle was trained for {bundle.endpoint}, not {endpoint}", column="--endpoint",
                         fix=f"evaluate with --endpoint {bundle.endpoint} or train a bundle for {endpoint}")
    table, meta = read_features(features_path)
    bundle.check_features(meta, features_path)
    manifest, features, lacking = read_manifest_features(manifest, table)
    if lacking:
        log.warning("%d patient(s) without features are not evaluated: %s", len(lacking), lacking[:10])
    excluded = 0
    if subset == "auto":
        trained = set(bundle.document["training"]["patient_id_hashes"])
        keep = ~manifest.table["patient_id"].map(hash_id).isin(trained).to_numpy()
        excluded = int((~keep).sum())
        manifest = Manifest(table=manifest.table[keep].reset_index(drop=True), root=manifest.root,
                            source=manifest.source)
        features = features[keep].reset_index(drop=True)
    elif subset != "all":
        raise InputError(f"unknown subset {subset!r}", column="--subset", fix="use auto or all")
    if len(manifest.table) == 0:
        raise InputError("no patient left to evaluate (all were used for training)", path=manifest.source,
                         fix="evaluate on other patients, or pass --subset all to see (optimistic) training metrics")
    check_outcomes(manifest, endpoint)
    time, event = manifest.outcome_arrays(endpoint)
    records = [parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"])
               for _, row in manifest.table.iterrows()]
    factors = bundle.factors(records, features)
    train_time, train_event = bundle.training_outcomes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = pd.DataFrame({"patient_id": manifest.table["patient_id"]})
    metrics: dict[str, Any] = {"endpoint": endpoint, "n": int(len(time)), "events": int(event.sum()),
                               "excluded_training_patients": excluded, "models": {}}
    for name, nomogram in bundle.nomograms.items():
        risk = nomogram.risk(factors)
        cutoff = bundle.cutoffs[name]
        block = evaluate_risk(risk, time, event, train_time, train_event, cutoff=cutoff,
                              survival_at=lambda months, n=nomogram: n.survival(factors, months),
                              n_boot=n_boot, seed=seed)
        metrics["models"][name] = block
        predictions[f"{name}_risk"] = risk
        groups = assign_groups(risk, cutoff)
        if plots:
            plot_km_by_group(out_dir / f"km_{name}.png", time, event, groups,
                             f"{endpoint.upper()} by {name} risk group (cut-off from training)",
                             logrank_p=block.get("logrank_p"), hr=block.get("hr_high_vs_low"))
            for months, rows in (block.get("calibration") or {}).items():
                if rows:
                    plot_calibration(out_dir / f"calibration_{name}_{months}m.png", rows, float(months),
                                     f"{name}: {endpoint.upper()} at {months} months")
    nomogram = bundle.nomograms["nomogram"]
    predictions["risk_group"] = assign_groups(predictions["nomogram_risk"].to_numpy(), bundle.cutoffs["nomogram"])
    survival = nomogram.survival(factors, [12, 36, 60])
    for j, months in enumerate((12, 36, 60)):
        predictions[f"nomogram_survival_{months}m"] = survival[:, j]
    predictions[f"{endpoint}_time"] = time
    predictions[f"{endpoint}_event"] = event.astype(int)
    write_text_atomic(out_dir / "predictions.csv", predictions.to_csv(index=False))
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
