"""Training: fit the radiomics signature, the clinical model and the nomogram on the training split only.

Everything learned here (imputation, scaling, selected features, coefficients, baseline hazards, cut-offs) goes
into the bundle and is reused unchanged on validation cohorts and new patients; nothing is re-estimated later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.contract import ENDPOINTS, SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import CLINICAL_CODINGS, estimable_codings
from NPCPrognosisLib.io.manifest import (
    CENTRE_COLUMN,
    Manifest,
    check_outcomes,
    endpoint_name,
    follow_up_warning,
)
from NPCPrognosisLib.io.patient_ids import ID_HASH_METHOD, hash_id, id_key, new_id_salt
from NPCPrognosisLib.pipeline.binary import PERMUTATIONS
from NPCPrognosisLib.pipeline.fit import (
    COX_PENALIZER,
    RAD_SCORE_FOLDS,
    TrainedModels,
    clinical_gaps,
    ebv_fill_value,
    fit_models,
    imputation_ranges,
)
from NPCPrognosisLib.pipeline.internal_validation import (
    NESTED_FOLDS,
    OPTIMISM_BOOTSTRAPS,
    nested_cv_c,
    optimism_corrected_c,
    too_few_events_warning,
)
from NPCPrognosisLib.pipeline.robustness import ROBUSTNESS_PATIENTS, Robustness, feature_robustness
from NPCPrognosisLib.pipeline.selection import MIN_EVENTS_FOR_SELECTION, default_selection, select_models
from NPCPrognosisLib.radiomics.features_table import (
    DEEP_SCORE,
    RADIOMICS_RECORD,
    feature_matrix,
    image_warnings_note,
    is_deep_feature,
    read_features,
    read_manifest_features,
    respelled_ids_note,
)
from NPCPrognosisLib.radiomics.signature import MIN_SIGNATURE_EVENTS, RadiomicsSignature, SignatureSettings
from NPCPrognosisLib.survival.metrics import HR_TEXT, LOGRANK_TEXT
from NPCPrognosisLib.survival.splits import event_split

log = logging.getLogger(__name__)



#: What a training block cannot report: the risk groups are split at the cut-off chosen to separate these very
#: patients best, so their log-rank p and hazard ratio are not a test (half of null cohorts get p < 0.05); evaluate
#: gives them on patients the cut-off never saw.
GROUP_TESTS = ("logrank_chi2", "logrank_p", "hr_high_vs_low", "hr_high_vs_low_95ci", "hr_high_vs_low_not_estimable")


def _without_group_tests(block: dict[str, Any]) -> dict[str, Any]:
    """A training block of :func:`evaluate_risk` without calibration (in-sample) and the tests of its risk groups
    (:data:`GROUP_TESTS`)."""
    dropped = {k: v for k, v in block.items() if k not in (*GROUP_TESTS, "calibration")}
    dropped["warnings"] = [w for w in block.get("warnings", []) if not w.startswith((LOGRANK_TEXT, HR_TEXT))]
    dropped["group_tests"] = ("not reported: the cut-off was chosen on these patients; evaluate tests the groups on "
                              "held-out patients")
    return dropped

def training_id_record(train_ids: Sequence[str], test_ids: Sequence[str], store: bool) -> dict[str, Any]:
    """The bundle's record of who trained it: salted hashes, or nothing with ``store`` False."""
    if not store:
        return {"patient_id_hashes": None, "test_patient_id_hashes": None, "id_salt": None,
                "patient_ids": "not stored (train --no-patient-ids): evaluate cannot leave training patients out"}
    salt = new_id_salt()
    return {"patient_id_hashes": [hash_id(p, salt) for p in train_ids],
            # evaluate matches these whatever the case and leading zeros of a re-exported ID (io.patient_ids.id_key)
            "patient_id_key_hashes": [hash_id(id_key(p), salt) for p in train_ids],
            "test_patient_id_hashes": [hash_id(p, salt) for p in test_ids], "id_salt": salt,
            "id_hash": f"{ID_HASH_METHOD}, random per-bundle salt"}


def warn_about_training_inputs(meta: dict[str, Any], extras: dict[str, Any], patient_ids: Sequence[str],
                               features_path: str | Path) -> None:
    """Say what the training patients' inputs carry, for the survival and the binary ``train`` alike: how many had
    image warnings at extraction (:func:`~NPCPrognosisLib.radiomics.features_table.image_warnings_note`), and extra
    tables that match only some of them; a table matching none is refused
    (:func:`~NPCPrognosisLib.io.extra_features.check_rows`)."""
    from NPCPrognosisLib.io.extra_features import check_rows

    if note := image_warnings_note(meta, patient_ids, features_path, "training"):
        log.warning(note)
    for warning in check_rows(extras, patient_ids):
        log.warning(warning)


def check_training_events(manifest: Manifest, endpoint: str) -> None:
    """Refuse training patients with too few events before any work, and warn when every one of them has one.

    Why here: the signature refuses fewer than :data:`MIN_SIGNATURE_EVENTS` events, but only after the robustness
    study's perturbed re-extractions (minutes), and its error names neither the manifest nor the event column. No
    event at all, or every patient an event, is mostly an event column coded otherwise (1 = censored, a flag of
    follow-up); a cohort without censoring is rare enough to say so, but can be trained on.

    Parameters
    ----------
    manifest : Manifest
        The training patients (outcomes checked by :func:`~NPCPrognosisLib.io.manifest.check_outcomes`).
    endpoint : str
        The survival endpoint (dmfs, os, pfs).
    """
    event = manifest.outcome_arrays(endpoint)[1]
    column = f"{endpoint}_event"
    if event.sum() < MIN_SIGNATURE_EVENTS:
        raise InputError(f"only {int(event.sum())} of the {len(event)} training patients have a {endpoint} event "
                         f"({column} = 1); the radiomics signature needs at least {MIN_SIGNATURE_EVENTS}",
                         path=manifest.source, column=column,
                         fix=f"check the coding of {column} (1 = event, 0 = censored), or train on more patients or "
                             "an endpoint with more events (os, pfs)")
    if event.all():
        log.warning("every one of the %d training patients has a %s event (%s = 1), none is censored: check the "
                    "coding of %s (1 = event, 0 = censored at the last follow-up)", len(event), endpoint, column,
                    column)


def split_cohort(manifest: Manifest, endpoint: str, *, split_col: str | None = None, test_fraction: float = 0.3,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and test patient IDs: from a column (values train/test) or a random split stratified by event."""
    table = manifest.table
    if split_col:
        split_col = manifest.column(split_col)
        if split_col not in table.columns:
            raise InputError(f"no split column {split_col!r}; the manifest's columns are {list(table.columns)}",
                             path=manifest.source, column=split_col, fix="name the column that says train or test")
        values = table[split_col].astype(str).str.strip().str.lower()
        bad = table.loc[~values.isin(["train", "test", "training", "validation", "valid"]), "patient_id"].tolist()
        if bad:
            value = table.loc[table["patient_id"] == bad[0], split_col].iloc[0]
            what = "no split value (the cell is empty)" if pd.isna(value) or not str(value).strip() else \
                f"split value {str(value)!r} not understood"
            others = f"; {len(bad) - 1} other patient(s) too, e.g. {bad[1:4]}" if len(bad) > 1 else ""
            raise InputError(what + others, patient_id=bad[0], path=manifest.source, column=split_col,
                             fix="use 'train' or 'test' ('validation' counts as test)")
        is_train = values.isin(["train", "training"])
        return table.loc[is_train, "patient_id"].tolist(), table.loc[~is_train, "patient_id"].tolist()
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test fraction {test_fraction} must be in [0, 1)", column="--test-fraction")
    if test_fraction == 0:
        return list(table["patient_id"]), []
    event_col = f"{endpoint}_event" if f"{endpoint}_event" in table.columns else endpoint  # binary: the column
    strata = table[event_col].fillna(-1).to_numpy() if event_col in table.columns else np.zeros(len(table))
    train, test = event_split(strata, test_fraction, seed)
    ids = table["patient_id"].to_numpy()
    return ids[train].tolist(), ids[test].tolist()


def without_fitted_deep_features(features: pd.DataFrame, meta: dict[str, Any],
                                  train_ids: list) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Leave the network's deep radiomic features out when the network was trained on some of these patients
    (survival and binary endpoints alike).

    Why: ``train-net`` fits the network's weights, Cox loss included, to its training patients' outcomes, so its
    pooled feature maps of those very patients carry their outcomes; inside the training split nothing can see it
    (cross-validation, the optimism bootstrap and the nested CV all reuse the same fitted features), and only new
    patients show the loss. Measured on a family-B cohort (``bench_generalise.py --mask auto --network`` with a
    network trained on the 160 training patients): 7 of the Rad-score's 10 features were deep, optimism-corrected
    C 0.739, held-out C 0.638. The deep *score* stays: it comes out of fold for those patients (the network's
    per-fold risk heads, ``extract`` lists them as ``deep_score_out_of_fold``). Returns the features without the
    deep radiomic columns and a note for the bundle, or the features unchanged and None.
    """
    seen = sorted(set(meta.get("deep_score_out_of_fold") or []) & {str(i) for i in train_ids})
    deep = [c for c in features.columns if is_deep_feature(c)]
    if not seen or not deep:
        return features, None
    note = {"columns": len(deep), "training_patients_seen_by_network": len(seen),
            "reason": "the network was trained on these patients: its deep features of them are fitted to their "
                      "outcomes (out-of-fold deep features would need one network per fold)"}
    log.warning("%d deep radiomic features left out of the Rad-score: the network was trained on %d of the %d "
                "training patients, so its features of them are fitted to their outcomes (the deep score is kept: "
                "it is out of fold for them). Extract with a network trained on other patients to use them.",
                len(deep), len(seen), len(train_ids))
    return features.drop(columns=deep), note


def training_split(manifest: Manifest, table: pd.DataFrame, endpoint: str, *, split_col: str | None,
                   test_fraction: float, seed: int) -> tuple[Manifest, pd.DataFrame, list, list, list]:
    """The training patients with their feature rows: (manifest, features, train IDs, test IDs, IDs without
    features), shared by the survival and the binary ``train``."""
    ids = list(manifest.patient_ids)
    manifest, features, lacking = read_manifest_features(manifest, table)
    respelled = respelled_ids_note(lacking, table["patient_id"], ids)
    if not len(manifest.table):
        raise InputError(f"none of the manifest's {len(ids)} patient IDs is in the features table (manifest: "
                         f"{ids[:3]}; features table: {list(table['patient_id'][:3])})"
                         + (f"; {respelled}" if respelled else ""), path=manifest.source,
                         column="patient_id", fix="run extract on this manifest, or give the features table made from "
                                                  "it (IDs must match exactly, leading zeros included)")
    if lacking:
        log.warning("%d patient(s) have no features and are left out: %s%s", len(lacking), lacking[:10],
                    f"; {respelled}" if respelled else "")
    train_ids, test_ids = split_cohort(manifest, endpoint, split_col=split_col, test_fraction=test_fraction, seed=seed)
    if not train_ids:
        raise InputError(f"no training patient: every one of the {len(test_ids)} patients with features is marked "
                         f"test in {split_col!r}" if split_col else "no training patient", path=manifest.source,
                         column=split_col, fix="mark the training patients 'train'")
    is_train = manifest.table["patient_id"].isin(train_ids).to_numpy()
    train_manifest = manifest.subset(is_train)
    return train_manifest, features[is_train].reset_index(drop=True), train_ids, test_ids, lacking


def robustness_unused(select: bool, event: np.ndarray, settings: SignatureSettings) -> str | None:
    """Why the robustness study's ICCs would choose nothing in this training run, or None when they can.

    Why: the perturbed re-extractions take minutes per patient on two cores (16 min on a 28-patient cohort), and
    their ICCs enter only as a threshold that cross-validation chooses (:func:`~NPCPrognosisLib.pipeline.
    selection.select_models`) or the settings fix; with fewer than :data:`MIN_EVENTS_FOR_SELECTION` training
    events nothing is chosen and the default configuration has no ICC filter, so the study was time spent on a
    number no model used. Only the default skips it: a number of patients asked for is measured (the ICCs are
    also reported).

    Parameters
    ----------
    select : bool
        Whether the configuration is chosen by cross-validation (``train``'s ``select``).
    event : ndarray of bool
        The training patients' events.
    settings : SignatureSettings
        The signature settings given (``min_icc`` set: a fixed threshold, which needs the ICCs).

    Returns
    -------
    reason : str or None
        For the bundle's robustness block and the log; None when the ICCs are used.
    """
    if settings.min_icc is not None:
        return None
    if not select:
        return "--no-select: the configuration is not chosen and the settings fix no ICC threshold"
    if int(np.sum(event)) < MIN_EVENTS_FOR_SELECTION:
        return (f"{int(np.sum(event))} training events (< {MIN_EVENTS_FOR_SELECTION}) are too few to choose an ICC "
                "threshold by cross-validation, and the default configuration has none")
    return None


def robustness_record(robustness: Robustness | None, settings: SignatureSettings,
                      signature: RadiomicsSignature, columns: list[str],
                      requested: int = ROBUSTNESS_PATIENTS, unused: str | None = None) -> dict[str, Any]:
    """The bundle's robustness block: how it was measured, the threshold chosen, the selected features' ICCs and
    every feature's ICC (aligned with ``feature_columns``, so ``evaluate`` can refit the same procedure). Not
    measured, it says why (``unused``: :func:`robustness_unused`; ``requested``: the patients asked for; 0 is the
    user's choice, anything else was logged by :func:`~NPCPrognosisLib.pipeline.robustness.feature_robustness`)."""
    if robustness is None:
        reason = unused or ("--robustness-patients 0" if requested <= 0
                            else "no extraction metadata beside the features table, or too few patients could be "
                                 "perturbed: see the warning above")
        return {"measured": False, "threshold": settings.min_icc, "reason": reason}
    return {"measured": True, **robustness.summary(settings.min_icc),
            "selected_feature_icc": {f: robustness.icc.get(f) for f in signature.features},
            "icc": [round(float(v), 4) for v in robustness.icc.reindex(columns)]}


def recorded_choices(document: dict[str, Any]) -> tuple[SignatureSettings, dict[str, Any]]:
    """The signature settings and ``fit_models`` choices a bundle was trained with, so the same procedure can be
    refitted on other patients (leave-one-centre-out); harmonisation is left out (a left-out centre is unknown)."""
    stored = {k: v for k, v in (document.get("signature_settings") or {}).items() if k != "description"}
    for key in ("image_types", "rois"):
        if stored.get(key) is not None:
            stored[key] = tuple(stored[key])
    icc = None
    robustness = document.get("robustness") or {}
    if robustness.get("icc") is not None:
        icc = pd.Series([np.nan if v is None else v for v in robustness["icc"]], index=document["feature_columns"],
                        dtype=float)
    coding = document["clinical_encoding"].get("coding", "ordinal")  # bundles from before the coding was chosen
    return SignatureSettings(**stored), {"icc": icc, "clinical_coding": coding,
                                         "nomogram_factors": document["models"]["nomogram"]["model"]["covariates"]}


def harmonization_record(models: TrainedModels, manifest: Manifest) -> dict[str, Any]:
    """The bundle's harmonisation block: the ComBat estimates of the signature's features, or why there are none."""
    if models.combat is None:
        reason = ("no centre column with two or more centres" if manifest.centres is None
                  else "cross-validation on the training patients did not favour it")
        return {"applied": False, "reason": reason}
    return {"applied": True, "method": "ComBat (neuroCombat, parametric empirical Bayes) fitted on the training "
                                       "split; applied to new patients of the training centres",
            "centre_column": CENTRE_COLUMN, "model": models.combat.restrict(models.signature.features).to_dict()}


def fit_fusion_stage(models: TrainedModels, manifest: Manifest, features: pd.DataFrame, extras: dict[str, Any],
                     binary_endpoints: Sequence[str], time: np.ndarray, event: np.ndarray,
                     seed: int) -> tuple[dict[str, Any], Path]:
    """Fit the MMoE on the training patients and add it to ``models`` as the ``mmoe`` model.

    Returns the bundle's ``fusion`` block (with ``training_metrics``: the C-index of nested out-of-fold outputs, to
    pop) and the path of a temporary safetensors file of the ensemble's weights.
    """
    import tempfile
    from time import perf_counter

    from NPCPrognosisLib.deep.mmoe import save_members
    from NPCPrognosisLib.pipeline.binary import endpoint_labels
    from NPCPrognosisLib.pipeline.fusion import MMOE, fit_fusion
    from NPCPrognosisLib.survival.metrics import evaluate_risk
    from NPCPrognosisLib.survival.risk_groups import training_cutoff

    factors = models.training_inputs(manifest, features)
    labels = {}
    for name in dict.fromkeys(binary_endpoints):
        known, values = endpoint_labels(manifest, name)
        labels[name] = np.full(len(known), np.nan)
        labels[name][known] = values
    start = perf_counter()
    block, model, nomogram, oof_risk, nested_risk = fit_fusion(factors, features, labels, extras,
                                                               manifest.patient_ids, time, event, seed=seed)
    block["fit_seconds"] = perf_counter() - start
    models.nomograms[MMOE] = nomogram
    cutoff = training_cutoff(oof_risk, time, event, min_share=0.10)
    models.cutoffs[MMOE] = cutoff
    metrics = _without_group_tests(evaluate_risk(nested_risk, time, event, time, event, cutoff=cutoff["cutoff"],
                                                 n_boot=200, seed=seed))
    metrics["note"] = ("nested out-of-fold outputs of the inner cross-validation: each fold's under the architecture "
                       "and epochs chosen on the other folds (the fusion is never scored in-sample)")
    block["training_metrics"] = metrics
    weights = Path(tempfile.mkdtemp(prefix="npc-mmoe-")) / "mmoe.safetensors"
    save_members(model.members, weights)
    return block, weights


def train(
    manifest: Manifest,
    features_path: str | Path,
    endpoint: str,
    out: str | Path,
    *,
    split_col: str | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    settings: SignatureSettings | None = None,
    synthetic: bool = False,
    network: str | Path | None = None,
    optimism_bootstraps: int = OPTIMISM_BOOTSTRAPS,
    workers: int = 2,
    robustness_patients: int | None = None,
    select: bool = True,
    nested_folds: int = NESTED_FOLDS,
    binary_endpoints: Sequence[str] = (),
    store_patient_ids: bool = True,
    fusion: str = "none",
    extra_features: Sequence[str] = (),
    permutations: int = PERMUTATIONS,
) -> dict[str, Any]:
    """Split, fit on the training part, and write the bundle; returns the bundle document.

    ``endpoint`` is a survival endpoint (dmfs, os, pfs) or any 0/1 column of the manifest (e.g. ``ic_response``,
    then :func:`NPCPrognosisLib.pipeline.binary.train_binary` writes a bundle of classifiers); the columns in
    ``binary_endpoints`` are fitted on the same training patients and carried in the same bundle.

    Read top-down, as the stages run on the training patients only: per-feature robustness (ICC(3,1) over
    perturbed re-extractions of ``robustness_patients`` patients, cached beside the features table; 0: none; None:
    :data:`ROBUSTNESS_PATIENTS`, unless nothing could use the ICCs, :func:`robustness_unused`),
    model selection by cross-validation (``select``; see :mod:`NPCPrognosisLib.pipeline.selection`), the final
    fit with the chosen configuration, training metrics, the optimism correction and, when the selection ran, the
    nested cross-validated C of the whole procedure (``nested_folds`` outer folds; 0: none).

    ``optimism_bootstraps`` replicates of Harrell's bootstrap (0: none) give each model's optimism-corrected
    training C-index (:func:`optimism_corrected_c`), run on ``workers`` processes. Each binary endpoint's best
    model is checked against ``permutations`` label permutations (:func:`NPCPrognosisLib.pipeline.binary.
    permutation_test`; 0: not checked).

    ``fusion`` "mmoe" adds the multimodal fusion model (:mod:`NPCPrognosisLib.pipeline.fusion`) over the
    radiomics, deep, clinical and ``extra_features`` blocks (``name=path`` tables joined by patient ID), with a
    survival task and one task per binary endpoint, as the bundle's ``mmoe`` model.

    ``synthetic`` marks a bundle trained on synthetic data: every prediction from it then carries a
    not-for-clinical-use warning; a manifest of a cohort ``synth`` wrote sets it by itself
    (:func:`~NPCPrognosisLib.io.manifest.is_synthetic_cohort`). ``network`` (a network bundle) is copied into the
    bundle's ``network/`` folder; it is required when the features table holds deep scores, so predictions compute
    them the same way.
    """
    from NPCPrognosisLib.io.bundle import write_bundle
    from NPCPrognosisLib.io.manifest import is_synthetic_cohort
    from NPCPrognosisLib.pipeline.binary import binary_block_for
    from NPCPrognosisLib.survival.benefit import fit_benefit, recorded_doses

    endpoint = endpoint_name(manifest, endpoint)  # before any work: 'DMFS', 'dmfs_event', a typo
    binary_endpoints = [endpoint_name(manifest, name, "--binary-endpoint") for name in binary_endpoints]
    synthetic = synthetic or is_synthetic_cohort(manifest)
    if endpoint not in ENDPOINTS:
        if binary_endpoints:
            raise InputError("extra binary endpoints ride along a survival endpoint", column="--binary-endpoint",
                             fix=f"train --endpoint dmfs (or os, pfs) --binary-endpoint {endpoint}")
        return train_binary(manifest, features_path, endpoint, out, split_col=split_col,
                            test_fraction=test_fraction, seed=seed, synthetic=synthetic,
                            store_patient_ids=store_patient_ids, workers=workers, permutations=permutations,
                            extra_features=extra_features)
    from NPCPrognosisLib.io.extra_features import read_extra_blocks, with_extra_columns
    from NPCPrognosisLib.pipeline.fusion import FUSIONS
    from NPCPrognosisLib.survival.metrics import evaluate_risk
    from NPCPrognosisLib.survival.risk_groups import assign_groups

    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}", column="--fusion", fix=f"use one of {', '.join(FUSIONS)}")
    extras = read_extra_blocks(extra_features)  # read first: a bad table stops before any fitting
    if extras and fusion == "none" and not binary_endpoints:
        raise InputError("extra feature tables are used by the fusion model and the binary endpoints only",
                         column="--extra-features",
                         fix="add --fusion mmoe or --binary-endpoint <column>, or leave the tables out")
    table, meta = read_features(features_path)
    if DEEP_SCORE in table.columns and network is None:
        raise InputError("the features table holds deep scores but no network was given", path=features_path,
                         column=DEEP_SCORE, fix="pass --network with the network bundle used by extract")
    if network is not None and meta.get("network_sha256"):
        from NPCPrognosisLib.io.bundle import network_checksum

        if network_checksum(network) != meta["network_sha256"]:
            raise InputError("the network given is not the one the features table was extracted with",
                             path=network, fix=f"pass --network {meta.get('network')} (or re-run extract --network)")
    train_manifest, train_features, train_ids, test_ids, lacking = training_split(
        manifest, table, endpoint, split_col=split_col, test_fraction=test_fraction, seed=seed)
    train_features, deep_left_out = without_fitted_deep_features(train_features, meta, train_ids)
    warn_about_training_inputs(meta, extras, train_manifest.patient_ids, features_path)
    settings = settings or SignatureSettings(seed=seed)
    check_outcomes(train_manifest, endpoint)
    if short := follow_up_warning(train_manifest, endpoint):
        log.warning(short)
    check_training_events(train_manifest, endpoint)
    time, event = train_manifest.outcome_arrays(endpoint)

    # asked for by number, the study runs (its ICCs are also reported); by default only where they can choose
    unused = robustness_unused(select, event, settings) if robustness_patients is None else None
    robustness_patients = ROBUSTNESS_PATIENTS if robustness_patients is None else robustness_patients
    if unused:
        log.info("feature robustness not measured: %s", unused)
    robustness = None if unused else feature_robustness(train_manifest, train_features, meta, features_path,
                                                        n_patients=robustness_patients, seed=seed,
                                                        workers=workers)
    icc = robustness.icc if robustness is not None else None
    ebv_fill = ebv_fill_value(train_manifest)
    clinical = train_manifest.clinical_table(ebv_fill)
    codings = estimable_codings(clinical)[0]
    gaps = clinical_gaps(train_manifest, ebv_fill, training=True)
    if select:
        selection = select_models(clinical, train_features, time, event, settings, icc,
                                  rad_score_folds=RAD_SCORE_FOLDS, penalizer=COX_PENALIZER, workers=workers,
                                  centres=train_manifest.centres)
    else:
        selection = default_selection(settings, DEEP_SCORE in train_features.columns, "not selected (--no-select)",
                                      codings["ordinal"])
    base_settings, settings = settings, selection.settings
    choices = {"icc": icc, "clinical_coding": selection.clinical_coding, "nomogram_factors": selection.nomogram,
               "harmonise": selection.harmonise}
    models = fit_models(train_manifest, train_features, endpoint, settings, **choices)

    # the apparent C (what the optimism correction starts from) is the final models' on their own training patients;
    # risk groups are read from the risks each cut-off was learned on (cross-fitted Rad-score), as new patients'
    # groups are: the in-sample Rad-score is spread too little for the cut-off, and could put every patient in one
    risks, grouped = models.risks(train_manifest, train_features), models.training_risks(train_manifest, train_features)
    training_metrics = {}
    for name in models.nomograms:
        apparent = evaluate_risk(risks[name].to_numpy(), time, event, time, event,
                                 cutoff=models.cutoffs[name]["cutoff"], n_boot=200, seed=seed)
        block = evaluate_risk(grouped[name].to_numpy(), time, event, time, event,
                              cutoff=models.cutoffs[name]["cutoff"], n_boot=20, seed=seed)
        block.update({key: apparent[key] for key in ("c_index", "c_index_95ci", "uno_c", "td_auc")})
        training_metrics[name] = _without_group_tests(block)
    optimism = None
    if optimism_bootstraps > 0:
        optimism = optimism_corrected_c(train_manifest, train_features, endpoint, settings,
                                        {name: block["c_index"] for name, block in training_metrics.items()},
                                        n_boot=optimism_bootstraps, seed=seed, workers=workers, choices=choices)
    nested = None
    if select and nested_folds > 1 and selection.radiomics_table:
        nested = nested_cv_c(train_manifest, train_features, endpoint, base_settings, icc, folds=nested_folds,
                             seed=seed, workers=workers)
    treatment = train_manifest.table
    chemo_benefit = fit_benefit(time, event, treatment["chemo"] if "chemo" in treatment else None,
                                recorded_doses(treatment),
                                assign_groups(grouped["nomogram"].to_numpy(), models.cutoffs["nomogram"]["cutoff"]),
                                train_manifest.clinical_table(models.ebv_fill), score=grouped["nomogram"].to_numpy(),
                                seed=seed)
    fusion_block, extra_files = None, {}
    if fusion != "none":
        fusion_block, weights = fit_fusion_stage(models, train_manifest, train_features, extras, binary_endpoints,
                                                 time, event, seed)
        training_metrics["mmoe"] = fusion_block.pop("training_metrics")
        extra_files[fusion_block["weights"]] = weights
    document = {
        "endpoint": endpoint,
        "sequences": list(SEQUENCES),
        "preprocessing": meta.get("preprocessing"),
        "radiomics": {k: meta.get(k) for k in RADIOMICS_RECORD},
        "feature_columns": list(feature_matrix(train_features).columns),
        "deep_score": DEEP_SCORE in train_features.columns,
        "deep_features_left_out": deep_left_out,
        "signature": models.signature.to_dict(),
        "signature_settings": {**asdict(settings), "description": settings.describe()},
        "selection": selection.to_dict(),
        "robustness": robustness_record(robustness, settings, models.signature,
                                        list(feature_matrix(train_features).columns), robustness_patients,
                                        unused),
        "harmonization": harmonization_record(models, train_manifest),
        "clinical_encoding": {"coding": selection.clinical_coding,
                              "covariates": codings[selection.clinical_coding],
                              **gaps,
                              "log10_ebv_dna_fill": models.ebv_fill,
                              # predict shows the prediction at both ends when the patient's value is missing
                              "imputation_range_p10_p90": imputation_ranges(train_manifest),
                              "t_stage": ("T1-T4 -> 1-4" if selection.clinical_coding == "ordinal"
                                          else "indicators T2, T3, T4 against T1"),
                              "n_stage": ("N0-N3 -> 0-3" if selection.clinical_coding == "ordinal"
                                          else "indicators N1, N2, N3 against N0"),
                              "sex": "male = 1", "ebv_dna": "log10(copies/mL + 1)",
                              "missing": "EBV DNA: the training median of log10 copies; age, sex, T, N, rENE and "
                                         "LDH are required (a missing value stops with the patient and column). "
                                         "Radiomics: a missing feature (e.g. no GTVn) takes the training mean and "
                                         "the <roi>_present flag carries the absence."},
        "models": {name: model.to_dict() for name, model in models.nomograms.items()},
        "cox": {"ties": "efron", "penalizer": COX_PENALIZER, "rad_score": models.rad_score_for_cox,
                "rad_score_rescaling": models.rad_score_rescaling},
        "cutoffs": models.cutoffs,
        "chemo_benefit": chemo_benefit,
        "training": {"n": int(len(time)), "events": int(event.sum()), "time": models.train_time,
                     "event": models.train_event, "metrics": training_metrics,
                     "optimism_corrected_c": optimism,
                     "optimism_warning": (too_few_events_warning(int(event.sum()),
                                                                 len(models.nomograms["nomogram"].factors))
                                          if optimism else None),
                     "nested_cv_c": nested,
                     **training_id_record([p for p in train_ids if p in set(train_manifest.patient_ids)], test_ids,
                                          store_patient_ids),
                     "n_test": len(test_ids), "seed": seed,
                     "split": split_col or f"random stratified, test fraction {test_fraction}",
                     "left_out_without_features": lacking},
        "synthetic_demo": bool(synthetic),
    }
    if binary_endpoints:
        encoded = train_manifest.clinical_table(models.ebv_fill)
        joined = with_extra_columns(train_features, extras, train_manifest.patient_ids)
        document["binary_endpoints"] = {name: binary_block_for(train_manifest, joined, encoded, name, seed,
                                                                workers, permutations)
                                        for name in dict.fromkeys(binary_endpoints)}
    if fusion_block is not None:
        document["fusion"] = fusion_block
    if extras:
        document["extra_features"] = extra_features_record(extras, train_manifest.patient_ids)
    if network is not None:
        from NPCPrognosisLib.io.bundle import read_bundle

        read_bundle(network)  # verified before it is shipped inside this bundle
        root = Path(network)
        extra_files.update({f"network/{p.relative_to(root).as_posix()}": p for p in root.rglob("*") if p.is_file()})
        document["network"] = {"folder": "network", "source": str(network),
                               "sha256": meta.get("network_sha256"),
                               "deep_features": [c for c in document["signature"]["features"] if is_deep_feature(c)]}
    try:
        write_bundle(out, document, extra_files=extra_files)
    finally:
        if fusion_block is not None:
            import shutil

            shutil.rmtree(Path(extra_files[fusion_block["weights"]]).parent, ignore_errors=True)
    return document


def train_binary(manifest: Any, features_path: str | Path, endpoint: str, out: str | Path, *,
                 split_col: str | None = None, test_fraction: float = 0.3, seed: int = 0,
                 synthetic: bool = False, store_patient_ids: bool = True, workers: int = 2,
                 permutations: int = PERMUTATIONS, extra_features: Sequence[str] = ()) -> dict[str, Any]:
    """``train --endpoint <binary column>``: a bundle whose only models predict that endpoint.

    Parameters
    ----------
    manifest : Manifest
        The cohort (the endpoint column holds 0/1; empty cells are left out).
    features_path : path
        Its radiomics features table.
    endpoint : str
        The binary column, e.g. ``ic_response``.
    out : path
        The bundle folder.
    extra_features : sequence of str
        ``name=path`` tables of other modalities (e.g. ``pathology=slides.csv``): the ridge takes each as a block
        of its own inputs (:func:`NPCPrognosisLib.classification.ridge.ridge_column_weights`); ``evaluate`` then needs
        the same tables.

    Returns
    -------
    document : dict
        The bundle document (``endpoint_type`` 'binary'; the models under ``binary_endpoints``).
    """
    from NPCPrognosisLib.io.bundle import write_bundle
    from NPCPrognosisLib.io.extra_features import read_extra_blocks, with_extra_columns
    from NPCPrognosisLib.pipeline.binary import binary_block_for

    extras = read_extra_blocks(extra_features)  # read first: a bad table stops before any fitting
    table, meta = read_features(features_path)
    train_manifest, train_features, train_ids, test_ids, lacking = training_split(
        manifest, table, endpoint, split_col=split_col, test_fraction=test_fraction, seed=seed)
    train_features, deep_left_out = without_fitted_deep_features(train_features, meta, train_ids)
    warn_about_training_inputs(meta, extras, train_manifest.patient_ids, features_path)
    ebv_fill = ebv_fill_value(train_manifest)
    joined = with_extra_columns(train_features, extras, train_manifest.patient_ids)
    block = binary_block_for(train_manifest, joined, train_manifest.clinical_table(ebv_fill), endpoint, seed,
                             workers, permutations)
    document = {
        "endpoint": endpoint, "endpoint_type": "binary",
        "preprocessing": meta.get("preprocessing"),
        "radiomics": {k: meta.get(k) for k in RADIOMICS_RECORD},
        "feature_columns": list(feature_matrix(train_features).columns),
        "deep_features_left_out": deep_left_out,
        "clinical_encoding": {"covariates": list(CLINICAL_CODINGS["ordinal"]), "log10_ebv_dna_fill": ebv_fill,
                              **clinical_gaps(train_manifest, ebv_fill, training=False)},
        "binary_endpoints": {endpoint: block},
        "training": {"n": block["n"], "positives": block["positives"],
                     **training_id_record(list(train_manifest.patient_ids), test_ids, store_patient_ids),
                     "n_test": len(test_ids), "seed": seed,
                     "split": split_col or f"random stratified, test fraction {test_fraction}",
                     "left_out_without_features": lacking},
        "synthetic_demo": bool(synthetic),
    }
    if extras:
        document["extra_features"] = extra_features_record(extras, train_manifest.patient_ids)
    write_bundle(out, document)
    return document


def extra_features_record(extras: dict[str, Any], patient_ids: Sequence[str]) -> dict[str, Any]:
    """What the bundle records of each ``--extra-features`` table: its columns, file name and how many training
    patients had a row."""
    return {name: {"columns": block.columns, "source": Path(block.source).name,
                   "training_patients_with_rows": int(block.aligned(patient_ids)[1].sum())}
            for name, block in extras.items()}
