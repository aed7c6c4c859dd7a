"""Evaluating a bundle on a cohort: discrimination, risk groups, calibration, plots.

Honest by default: patients the bundle was trained on are left out unless the user asks for them, because a
C-index on training patients says how well the model memorised, not how well it predicts (which patients are
held out, and the cohort-size floors: :mod:`NPCPrognosisLib.pipeline.evaluated_patients`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import write_json_atomic, write_text_atomic
from NPCPrognosisLib.io.bundle import read_bundle
from NPCPrognosisLib.io.clinical import ClinicalRecord, encode_clinical, imputed_covariates, parse_clinical
from NPCPrognosisLib.io.extra_features import unmatched_rows_warnings
from NPCPrognosisLib.io.manifest import CLINICAL_FIELDS, Manifest, check_outcomes, endpoint_name, follow_up_warning
from NPCPrognosisLib.pipeline.evaluated_patients import (
    check_binary_cohort,
    check_cohort_size,
    held_out,
    included_warning,
    trained_mask,
    training_included,
    untrained,
)
from NPCPrognosisLib.pipeline.fit import clinical_gaps, training_findings
from NPCPrognosisLib.pipeline.fusion import MMOE, contribution_shares, gate_findings, gate_warnings
from NPCPrognosisLib.pipeline.models import LoadedBundle, load_bundle
from NPCPrognosisLib.pipeline.predict import unproven_nomogram, unproven_warnings
from NPCPrognosisLib.radiomics.features_table import (
    check_settings,
    image_warnings_note,
    read_features,
    read_manifest_features,
    respelled_ids_note,
)
from NPCPrognosisLib.reporting.labels import GROUP_NOT_DETERMINED, factor_label, out_of_range_value_text
from NPCPrognosisLib.survival.nomogram import REPORT_MONTHS, Nomogram

log = logging.getLogger(__name__)


def leave_one_centre_out(document: dict[str, Any], manifest: Manifest, features: pd.DataFrame,
                         endpoint: str) -> dict[str, Any] | None:
    """Internal-external cross-validation: the bundle's procedure refitted without each centre, scored on it.

    What a new hospital should expect is best seen by leaving whole hospitals out. For every centre of the
    manifest, the bundle's recorded choices (radiomics configuration, robustness threshold, clinical coding,
    nomogram factors) are refitted on all patients of the other centres and the left-out centre is scored.
    ComBat is not used in these refits (a left-out centre's scanner effect is unknown by construction).
    None when the manifest names fewer than two centres.

    Parameters
    ----------
    document : dict
        The bundle document.
    manifest, features : Manifest, pandas.DataFrame
        Every patient with features and outcomes (training and held-out), aligned row by row.
    endpoint : str
        The bundle's endpoint.

    Returns
    -------
    report : dict or None
        Per centre ``n``, ``events`` and ``c_index`` of the nomogram (and every other model), and the
        event-weighted mean C.
    """
    import numpy as np

    from NPCPrognosisLib.pipeline.fit import fit_models
    from NPCPrognosisLib.pipeline.train import recorded_choices
    from NPCPrognosisLib.survival.metrics import harrell_c

    labels = manifest.centres
    if labels is None:
        return None
    settings, choices = recorded_choices(document)
    labels = np.array([label or "(none)" for label in labels], dtype=object)
    centres: dict[str, Any] = {}
    for centre in sorted(set(labels)):
        held = labels == centre
        rest, left = manifest.subset(~held), manifest.subset(held)
        time, event = left.outcome_arrays(endpoint)
        block: dict[str, Any] = {"n": int(held.sum()), "events": int(event.sum())}
        try:
            models = fit_models(rest, features[~held].reset_index(drop=True), endpoint, settings, **choices)
            risks = models.risks(left, features[held].reset_index(drop=True))
            block.update({f"{name}_c_index": harrell_c(time, event, risks[name]) for name in risks.columns})
        except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            block["error"] = str(exc)
        centres[centre] = block
    scored = [b for b in centres.values() if "nomogram_c_index" in b and b["events"] > 0]
    weights = np.array([b["events"] for b in scored], float)
    mean = float(np.average([b["nomogram_c_index"] for b in scored], weights=weights)) if scored else None
    return {"design": "each centre left out in turn; the bundle's recorded choices refitted on the other centres",
            "note": "the choices (radiomics features kept, nomogram factors, clinical coding) are the bundle's, made "
                    "with every centre's training patients, and reused, not made again without the left-out centre: "
                    "the centres' C-indices are somewhat optimistic",
            "centres": centres, "nomogram_c_index_event_weighted": mean}


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
    extra_features: Sequence[str] = (),
    study_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv``, the figures (PNG and SVG) and the cohort study page
    (``cohort_study.html``, with ``figures/`` and ``tables/``) to ``out_dir``; returns the metrics.

    Every model of the bundle is scored on the same held-out patients, and each is compared with the Cox
    nomogram by a paired bootstrap of the difference in C (``paired_vs_nomogram``). ``extra_features`` are the
    ``name=path`` tables a fusion model or a binary endpoint's ridge was trained with; ``study_info`` (data
    source, dates, outcome definition, ...) fills the page's reporting checklist. ``plots=False`` writes neither
    figures nor the page.
    """
    from NPCPrognosisLib.io.extra_features import read_extra_blocks
    from NPCPrognosisLib.survival.benefit import recorded_doses
    from NPCPrognosisLib.survival.benefit_evaluation import evaluate_benefit
    from NPCPrognosisLib.survival.metrics import evaluate_risk, paired_c_difference
    from NPCPrognosisLib.survival.plots import plot_calibration, plot_km_by_group
    from NPCPrognosisLib.survival.risk_groups import assign_groups

    endpoint = endpoint_name(manifest, endpoint)
    extras = read_extra_blocks(extra_features)
    document = read_bundle(bundle_path)
    if document.get("endpoint_type") == "binary" or endpoint in (document.get("binary_endpoints") or {}):
        return evaluate_binary_endpoint(document, manifest, features_path, endpoint, out_dir, subset=subset,
                                        plots=plots, bundle_path=bundle_path, extras=extras, study_info=study_info)
    bundle = load_bundle(bundle_path)
    if endpoint != bundle.endpoint:
        raise InputError(f"the bundle was trained for {bundle.endpoint}, not {endpoint}", column="--endpoint",
                         fix=f"evaluate with --endpoint {bundle.endpoint} or train a bundle for {endpoint}")
    table, meta = read_features(features_path)
    bundle.check_features(meta, features_path)
    manifest, features, lacking = read_manifest_features(manifest, table)
    without, respelled = _without_features(bundle.document, table, manifest.patient_ids, lacking, subset)
    loco = None
    if manifest.centres is not None:
        check_outcomes(manifest, endpoint)
        loco = leave_one_centre_out(bundle.document, manifest, features, endpoint)
    everyone = manifest
    manifest, features, excluded = held_out(bundle.document, manifest, features, subset)
    if note := image_warnings_note(meta, manifest.patient_ids, features_path, "evaluated"):
        log.warning(note)
    check_outcomes(manifest, endpoint)
    if short := follow_up_warning(manifest, endpoint):
        log.warning(short)
    time, event = manifest.outcome_arrays(endpoint)
    check_cohort_size(time, event, manifest, endpoint, excluded)
    included = training_included(bundle.document, manifest, subset)
    records = [parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"])
               for _, row in manifest.table.iterrows()]
    features, harmonisation_warnings = bundle.harmonised(features, manifest.centre_labels,
                                                         manifest.patient_ids)
    for warning in harmonisation_warnings:
        log.warning(warning)
    factors = bundle.factors(records, features, extras, manifest.patient_ids)
    # listed among metrics.json's warnings, which the printout shows: logged as well, the terminal said it twice
    missing_blocks = bundle.missing_blocks_warning(extras)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = pd.DataFrame({"patient_id": manifest.table["patient_id"]})
    metrics: dict[str, Any] = {"endpoint": endpoint, "n": int(len(time)), "events": int(event.sum()),
                               "excluded_training_patients": excluded, "training_patients_included": included,
                               "censoring_weights": CENSORING_WEIGHTS,
                               "without_features": without, "models": {},
                               # the figures this run drew: the page shows these, not whatever lies in the folder
                               "figures": [],
                               "not_harmonised": len(harmonisation_warnings),
                               **clinical_gaps(manifest, bundle.ebv_fill, training=False)}
    if loco is not None:
        metrics["leave_one_centre_out"] = loco
    metrics["warnings"] = [w for w in (included_warning(included, subset), respelled, missing_blocks) if w]
    metrics["warnings"].extend(unmatched_rows_warnings(extras, manifest.patient_ids, "evaluated patient"))
    for name, nomogram in bundle.nomograms.items():
        risk = nomogram.risk(factors)
        cutoff = bundle.cutoffs[name]
        block = evaluate_risk(risk, time, event, time, event, cutoff=cutoff,
                              survival_at=lambda months, n=nomogram: n.survival(factors, months),
                              n_boot=n_boot, seed=seed, ipcw_intervals=True)
        metrics["models"][name] = block
        predictions[f"{name}_risk"] = risk
        for months, column in zip(REPORT_MONTHS, nomogram.survival(factors, REPORT_MONTHS).T):
            predictions[f"{name}_survival_{months}m"] = column
        groups = assign_groups(risk, cutoff)
        if plots:
            plot_km_by_group(out_dir / f"km_{name}.png", time, event, groups,
                             f"{endpoint.upper()} by {name} risk group (cut-off from training)",
                             logrank_p=block.get("logrank_p"), hr=block.get("hr_high_vs_low"))
            metrics["figures"].append(f"km_{name}.png")
            for months, rows in (block.get("calibration") or {}).items():
                if rows:
                    plot_calibration(out_dir / f"calibration_{name}_{months}m.png", rows, float(months),
                                     f"{name}: {endpoint.upper()} at {months} months")
                    metrics["figures"].append(f"calibration_{name}_{months}m.png")
    outside = outside_training_text(bundle.nomograms["nomogram"], factors)
    predictions["nomogram_outside_training_range"] = outside
    if n_outside := sum(bool(text) for text in outside):
        metrics["warnings"].append(
            f"{n_outside} of the {len(outside)} evaluated patients have a nomogram factor outside its training range, "
            "or a combination of factors giving a risk beyond any training patient's (predictions.csv, "
            "nomogram_outside_training_range): their risks and survival are extrapolations, as predict says for one "
            "patient; check those values, contours and images")
    if event.any():
        metrics["paired_vs_nomogram"] = {
            name: paired_c_difference(time, event, predictions[f"{name}_risk"], predictions["nomogram_risk"],
                                      n_boot=n_boot, seed=seed)
            for name in bundle.nomograms if name != "nomogram"}
    if bundle.fusion is not None:
        fused = bundle.fused(factors, features, extras, manifest.patient_ids)
        for task, weights in fused.gates.items():
            for j, block in enumerate(fused.blocks):
                predictions[f"mmoe_gate_{task}_{block}"] = weights[:, j]
        metrics["mmoe_mean_gate_weights"] = {task: dict(zip(fused.blocks, weights.mean(axis=0).tolist()))
                                             for task, weights in fused.gates.items()}
        # what each modality moves on these patients, beside the training patients' shares the bundle keeps: a gate
        # weight is a mixing share, not a contribution (contribution_shares)
        metrics["mmoe_contributions"] = contribution_shares(fused.contributions, fused.present, fused.blocks)
        # collapsed onto one modality, or one mixture for everyone: said as train says it of the training patients
        metrics["mmoe_gates"] = gate_findings(fused.gates, fused.present, fused.blocks)
        metrics["warnings"].extend(gate_warnings(metrics["mmoe_gates"], "evaluated patients"))
        # learned nothing in training (predict's 'not determined' group): said here as predict and train say it
        metrics["warnings"].extend(unproven_warnings(unproven_nomogram(bundle.document, MMOE), MMOE))
    nomogram = bundle.nomograms["nomogram"]
    predictions["risk_group"] = assign_groups(predictions["nomogram_risk"].to_numpy(), bundle.cutoffs["nomogram"])
    encoded = pd.DataFrame([encode_clinical(r, bundle.ebv_fill) for r in records])
    benefit = evaluate_benefit(bundle.document.get("chemo_benefit"), encoded,
                               predictions["risk_group"].to_numpy(), manifest.table.get("chemo"),
                               recorded_doses(manifest.table), time, event,
                               records, n_boot=n_boot, seed=seed)
    predictions["arm"] = benefit.pop("arm")
    for column in ("chemo_cycles", "regimen"):  # carried through for the researcher's own subgroup analyses
        if column in manifest.table.columns:
            predictions[column] = manifest.table[column].to_numpy()
    benefit["n_ebv_dna_imputed"] = sum("log10_ebv_dna" in imputed_covariates(r) for r in records)
    if benefit["predicted_benefit"] is not None:
        predictions["predicted_benefit_60m"] = benefit["predicted_benefit"]
        per_patient = benefit_by_patient(bundle, records, factors, predictions["risk_group"].to_numpy())
        for column in per_patient.columns:
            predictions[column] = per_patient[column].to_numpy()
        benefit["conclusions"] = per_patient["benefit_conclusion_60m"].value_counts().to_dict()
        benefit["c_for_benefit_ebv_dna"] = EBV_FILL_IN_CFB
    benefit.pop("predicted_benefit")
    metrics["chemo_benefit"] = benefit
    if plots:
        from NPCPrognosisLib.survival.benefit import dose_comparison
        from NPCPrognosisLib.survival.plots import plot_forest

        if any(r.get("estimable") for r in benefit["subgroups"]):
            plot_forest(out_dir / "benefit_forest.png", benefit["subgroups"],
                        f"{endpoint.upper()}: {dose_comparison(benefit['threshold_mg_m2'])} by subgroup")
            metrics["figures"].append("benefit_forest.png")
        for g, block in benefit["t12n1"].items():
            if block.get("p") is not None:
                rows = np.flatnonzero((predictions["risk_group"].to_numpy() == g)
                                      & predictions["arm"].isin(list(block["arms"])).to_numpy()
                                      & np.array([r.t_stage in ("T1", "T2") and r.n_stage == "N1" for r in records]))
                plot_km_by_group(out_dir / f"km_t12n1_{g}_risk_by_arm.png", time[rows], event[rows],
                                 predictions["arm"].to_numpy()[rows],
                                 f"T1-2N1, {g} risk: {endpoint.upper()} by treatment arm", logrank_p=block["p"])
                metrics["figures"].append(f"km_t12n1_{g}_risk_by_arm.png")
    metrics["warnings"].extend(training_findings(bundle.document))  # said again beside the numbers they explain
    unproven = unproven_nomogram(bundle.document)
    if unproven:  # as predict records it: that group is no patient's (the analyses above
        predictions["risk_group"] = GROUP_NOT_DETERMINED  # show the groups do not separate; the column says so)
        metrics["warnings"].extend(unproven_warnings(unproven))
    predictions[f"{endpoint}_time"] = time
    predictions[f"{endpoint}_event"] = event.astype(int)
    write_text_atomic(out_dir / "predictions.csv", predictions.to_csv(index=False))
    write_json_atomic(out_dir / "metrics.json", metrics)
    if plots:
        from NPCPrognosisLib.reporting.cohort_page import write_cohort_page

        write_cohort_page(out_dir, metrics, predictions, bundle.document,
                          characteristics=_characteristics(bundle.document, everyone, subset, endpoint),
                          study_info=study_info)
    return metrics


#: What C-for-benefit and the calibration of the benefit read for a patient without EBV DNA, recorded beside them.
EBV_FILL_IN_CFB = ("missing EBV DNA: the training median (as in predicted_benefit_60m); benefit_conclusion_60m and "
                   "predicted_benefit_60m_low/high span its training 10th-90th percentile, as predict does")


def benefit_by_patient(bundle: LoadedBundle, records: Sequence[ClinicalRecord], factors: pd.DataFrame,
                       groups: Sequence[str]) -> pd.DataFrame:
    """What ``predict`` would tell each patient about the high dose, as columns of ``predictions.csv``.

    Why: ``predicted_benefit_60m`` fills a missing EBV DNA with the training median, as if it had been measured;
    these columns carry predict's own conclusion
    (:func:`~NPCPrognosisLib.pipeline.patient_factors.patient_chemo_benefit`, the same function) and, for a patient
    whose EBV DNA was filled, the range of the gain across its training 10th-90th percentile.

    Parameters
    ----------
    bundle : LoadedBundle
        With an estimable ``chemo_benefit``.
    records : sequence of ClinicalRecord
        The patients' clinical records, in the order of ``factors``.
    factors : DataFrame
        The patients' nomogram factors, one row each.
    groups : sequence of {'low', 'high'}
        The nomogram's risk groups.

    Returns
    -------
    columns : DataFrame
        ``benefit_conclusion_60m`` (benefit, inconclusive, harm or "undetermined without EBV DNA"),
        ``predicted_benefit_60m_low`` and ``_high`` (NaN for a patient whose factors were all measured).
    """
    from NPCPrognosisLib.pipeline.patient_factors import patient_chemo_benefit

    rows = []
    for record, (_, values), group in zip(records, factors.iterrows(), groups):
        benefit = patient_chemo_benefit(bundle, record, {k: float(v) for k, v in values.items()}, str(group))
        spans = [b["benefit_range"] for b in (benefit.get("imputed") or {}).values() if "benefit_range" in b]
        rows.append({"benefit_conclusion_60m": benefit.get("conclusion", "not estimable"),
                     "predicted_benefit_60m_low": min((s[0] for s in spans), default=np.nan),
                     "predicted_benefit_60m_high": max((s[1] for s in spans), default=np.nan)})
    return pd.DataFrame(rows, columns=["benefit_conclusion_60m", "predicted_benefit_60m_low",
                                       "predicted_benefit_60m_high"])


#: How the IPCW metrics (Uno's C, td-AUC, Brier score, the page's ROC curves) weight, recorded in metrics.json.
CENSORING_WEIGHTS = ("inverse probability of censoring, the censoring distribution estimated (reverse Kaplan-Meier) "
                     "from the evaluated cohort itself (Uno et al. 2011; Graf et al. 1999), up to ipcw_horizon_months")


def _characteristics(document: dict[str, Any], manifest: Manifest, subset: str, endpoint: str) -> pd.DataFrame:
    """Baseline characteristics of the training and the evaluated patients of this manifest."""
    from NPCPrognosisLib.reporting.cohort_tables import cohort_characteristics

    trained = trained_mask(document, manifest)
    split = np.where(trained, "training", "evaluated") if trained is not None and subset != "all" else \
        np.full(len(manifest.table), "evaluated")
    return cohort_characteristics(manifest.table, split, endpoint)


def _without_features(document: dict[str, Any], table: pd.DataFrame, manifest_ids: Sequence[str],
                      lacking: list[str], subset: str) -> tuple[list[str], str | None]:
    """The manifest's patients without features that the evaluation would have scored (:func:`untrained`: each ID
    hashed once, the hashes are slow), and the note naming those the features table writes another way
    (:func:`~NPCPrognosisLib.radiomics.features_table.respelled_ids_note`); the survival and the binary
    ``evaluate`` alike."""
    if lacking:
        log.warning("%d patient(s) without features are not evaluated: %s", len(lacking), lacking[:10])
    without = untrained(document, lacking, subset)
    return without, respelled_ids_note(without, table["patient_id"], [*manifest_ids, *lacking])


def outside_training_text(nomogram: Nomogram, factors: pd.DataFrame) -> list[str]:
    """Per patient, the nomogram's factors outside their training range, and its risk score when beyond every
    training patient's, as ``predict`` names them for one patient ('' when none).

    Why: a held-out patient whose Rad-score lay ten times beyond the training range got 0.0 % survival at every time
    in predictions.csv, with nothing beside it; ``predict`` printed EXTRAPOLATING for the same patient.

    Parameters
    ----------
    nomogram : Nomogram
        The bundle's nomogram (:meth:`~NPCPrognosisLib.survival.nomogram.Nomogram.out_of_range`).
    factors : DataFrame
        The evaluated patients' factors, one row each.

    Returns
    -------
    list of str
        '<factor> = <value> (training <low> to <high>)', joined by '; ', or '' for a patient inside the range.
    """
    return ["; ".join(f"{factor_label(item['factor'])} = {out_of_range_value_text(item)}"
                      for item in nomogram.out_of_range(row))
            for row in factors[nomogram.factors].to_dict("records")]


def evaluate_binary_endpoint(document: dict[str, Any], manifest: Manifest, features_path: str | Path, endpoint: str,
                             out_dir: str | Path, *, subset: str = "auto", plots: bool = True,
                             bundle_path: str | Path | None = None, extras: Any = None,
                             study_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``evaluate`` of a binary endpoint: AUC with DeLong CI per model, DeLong tests, threshold metrics, Brier,
    calibration, ROC and calibration plots; ``metrics.json`` and ``predictions.csv`` (``<model>_prob``).

    With a fusion model that has this endpoint as a task (``bundle_path`` given), its probability is scored
    beside the classifiers and compared by DeLong's test with the combined (Rad-score + clinical) model."""
    from NPCPrognosisLib.pipeline.binary import evaluate_binary_cohort

    if endpoint not in (document.get("binary_endpoints") or {}):
        raise InputError(f"the bundle has no model for {endpoint!r}", column="--endpoint",
                         fix=f"use one of {sorted(document.get('binary_endpoints') or {})}")
    table, meta = read_features(features_path)
    check_settings(document.get("radiomics") or {}, meta, features_path)
    manifest, features, lacking = read_manifest_features(manifest, table)
    without, respelled = _without_features(document, table, manifest.patient_ids, lacking, subset)
    manifest, features, excluded = held_out(document, manifest, features, subset)
    if note := image_warnings_note(meta, manifest.patient_ids, features_path, "evaluated"):
        log.warning(note)
    check_binary_cohort(manifest, endpoint, excluded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fused = None
    if bundle_path is not None and endpoint in (document.get("fusion") or {}).get("config", {}).get("tasks", []):
        bundle = load_bundle(bundle_path)
        records = [parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"])
                   for _, row in manifest.table.iterrows()]
        harmonised, _ = bundle.harmonised(features, manifest.centre_labels, manifest.patient_ids)
        factors = bundle.factors(records, harmonised, extras, manifest.patient_ids)
        fused = {"probability": bundle.fused(factors, harmonised, extras, manifest.patient_ids).probabilities[endpoint],
                 "threshold": document["fusion"]["thresholds"][endpoint],
                 "warning": bundle.missing_blocks_warning(extras)}
    metrics, predictions = evaluate_binary_cohort(document, manifest, features, endpoint, out_dir, plots=plots,
                                                  fused=fused, extras=extras)
    metrics["excluded_training_patients"] = excluded
    metrics["training_patients_included"] = training_included(document, manifest, subset)
    banner = included_warning(metrics["training_patients_included"], subset)
    metrics["warnings"] = [w for w in (banner, respelled, *(metrics.get("warnings") or []),
                                        *unmatched_rows_warnings(extras or {}, manifest.patient_ids,
                                                                 "evaluated patient")) if w]
    metrics["without_features"] = without
    write_text_atomic(out_dir / "predictions.csv", predictions.to_csv(index=False))
    write_json_atomic(out_dir / "metrics.json", metrics)
    if plots:
        from NPCPrognosisLib.reporting.cohort_page import write_cohort_page

        write_cohort_page(out_dir, metrics, predictions, document, study_info=study_info)
    return metrics
