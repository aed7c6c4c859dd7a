"""One patient's prognosis from images, mask and clinical record, with a bundle.

The Slicer module and ``npc-prognosis predict`` both land here, so a patient gets the same numbers whichever
way a clinician asks. :func:`predict_patient` reads top-down as the stages, each run once and handing its result
to the next: preprocess (N4 + normalisation, shared by the network and radiomics) -> contour (the bundle's
network, when no mask is given or the nomogram needs the deep score) -> radiomics -> scores -> the prediction
with its uncertainty and reference curves. What the patient's factors let it claim (a missing EBV DNA swept across
its training range, a factor outside it) is :mod:`NPCPrognosisLib.pipeline.patient_factors`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from NPCPrognosisLib.contract import ROIS
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import image_fingerprint
from NPCPrognosisLib.imaging.preprocess import preprocess_images, preprocessed_as
from NPCPrognosisLib.io.clinical import ClinicalRecord, encode_clinical, imputed_covariates, parse_clinical
from NPCPrognosisLib.io.images import PatientImages, check_mask
from NPCPrognosisLib.pipeline.extract import patient_features
from NPCPrognosisLib.pipeline.models import LoadedBundle
from NPCPrognosisLib.pipeline.patient_factors import (
    extrapolation_warning,
    imputation_warning,
    imputed_prediction,
    patient_chemo_benefit,
    uncounted_factors,
)
from NPCPrognosisLib.pipeline.prediction_record import Prediction
from NPCPrognosisLib.radiomics.extraction import present_column, settings_file
from NPCPrognosisLib.radiomics.features_table import DEEP_SCORE, feature_roi, is_deep_feature
from NPCPrognosisLib.reporting.labels import GROUP_NOT_DETERMINED
from NPCPrognosisLib.survival.nomogram import REPORT_MONTHS
from NPCPrognosisLib.survival.patient import group_certainty, risk_uncertainty, survival_curves
from NPCPrognosisLib.survival.risk_groups import assign_groups

SYNTHETIC_WARNING = "This bundle was trained on SYNTHETIC data: a software demonstration, not for clinical use."


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def bundle_radiomics(bundle: LoadedBundle, preprocessed: Mapping[str, sitk.Image], mask: sitk.Image,
                     patient_id: str) -> dict[str, float]:
    """PyRadiomics of already preprocessed sequences with exactly the bundle's settings (the numbers the Rad-score
    was fitted on)."""
    from NPCPrognosisLib.radiomics.extraction import extract_patient

    with settings_file(bundle.document["radiomics"]["settings"]) as params:
        return extract_patient(dict(preprocessed), mask, patient_id=patient_id, params_path=params)


def bundle_features(bundle: LoadedBundle, patient: PatientImages) -> dict[str, float]:
    """Preprocess with the bundle's settings and extract with its radiomics settings (contours required).

    A bundle trained with the network's deep radiomic features among its candidates also gets those, pooled inside
    these contours: a feature table of the patient (the Slicer module's) then holds every column the bundle knows,
    and :func:`predict_patient` given this row does not run the network for them again.
    """
    prepared = preprocess_images(patient.images, bundle.preprocess)
    with settings_file(bundle.document["radiomics"]["settings"]) as params:
        row = patient_features(patient, bundle.preprocess, params_path=params, preprocessed=prepared)
    if bundle.network_dir is not None and any(is_deep_feature(c) for c in bundle.document.get("feature_columns") or ()):
        from NPCPrognosisLib.deep.features import deep_features
        from NPCPrognosisLib.deep.segmentation import cached_network

        network = cached_network(bundle.network_dir)
        network_input = preprocessed_as(patient.images, network.preprocess, prepared, bundle.preprocess)
        row.update(deep_features(network, network_input, patient.mask))
    return row


def unproven_nomogram(document: dict[str, Any], name: str = "nomogram") -> dict[str, Any]:
    """What a model of the bundle (the nomogram, or the fusion's ``mmoe``) failed to learn in training, which
    ``train`` said and the patient's result must say too: its risk group is then not determined
    (:func:`~NPCPrognosisLib.reporting.labels.risk_group_standing`) and its survival is labelled as what it is.

    Why: a model whose scores all ranked the training patients the wrong way round out of fold carries no weight
    (its cut-off record says ``no_groups``), so every patient gets the same risk, the low group and the training
    cohort's average survival; one whose optimism-corrected C-index is at or below 0.5 ranks new patients no better
    than chance. The fusion is never scored in-sample: its training C-index is already out of fold, and nested (each
    fold scored under the architecture and epochs chosen without it; bundles before 2026-12 recorded the optimistic
    C of the choice made on every fold), so that C at or below 0.5 says the same. Older bundles without these
    records say nothing.

    Parameters
    ----------
    document : dict
        The bundle document (``bundle.json``).
    name : str, default "nomogram"
        The model, as the bundle's ``models`` name it.

    Returns
    -------
    unproven : dict
        ``no_weight`` True when every patient gets the same risk, ``corrected_c`` the optimism-corrected training
        C-index when it is at or below chance, ``out_of_fold_c`` the fusion's out-of-fold training C-index when it
        is at or below 0.5; empty for a model that learned something.
    """
    from NPCPrognosisLib.pipeline.fusion import MMOE

    found: dict[str, Any] = {}
    training = document.get("training") or {}
    if (document.get("cutoffs") or {}).get(name, {}).get("no_groups"):
        found["no_weight"] = True
    corrected = (training.get("optimism_corrected_c") or {}).get(name) or {}
    if corrected.get("no_better_than_chance") and corrected.get("corrected") is not None \
            and np.isfinite(corrected["corrected"]):  # not estimated (no bootstrap refit could be fitted): unknown
        found["corrected_c"] = float(corrected["corrected"])
    out_of_fold = ((training.get("metrics") or {}).get(name) or {}).get("c_index")
    if name == MMOE and out_of_fold is not None and np.isfinite(out_of_fold) and out_of_fold <= 0.5:
        found["out_of_fold_c"] = float(out_of_fold)
    return found


def unproven_warnings(unproven: Mapping[str, Any], name: str = "nomogram") -> list[str]:
    """The warnings of :func:`unproven_nomogram`'s findings for model ``name``, one per finding (none for a model
    that learned something)."""
    from NPCPrognosisLib.reporting.labels import model_phrase

    model = model_phrase(name)
    found = []
    if unproven.get("no_weight"):
        found.append(f"{model} gives every patient the same risk (no factor carried weight in training): no risk "
                     "group is determined, and the survival is the training cohort's average, not this patient's")
    for key, kind in (("corrected_c", "optimism-corrected"), ("out_of_fold_c", "out-of-fold")):
        if unproven.get(key) is not None:
            found.append(f"{model} learned nothing that holds on new patients: its {kind} training C-index was "
                         f"{unproven[key]:.2f} (0.5 is chance); no risk group is determined, and its survival is "
                         "unproven")
    return found


def runaway_text(record: Mapping[str, Any], events: int | None, name: str = "nomogram") -> str:
    """One Cox fit of model ``name`` that ran away in training and was refitted with a larger ridge (a record of
    :func:`~NPCPrognosisLib.survival.cox.runaway_penalty`, kept under the model's ``runaway``), said as what it
    means for a patient's numbers, with the factors as the sheet labels them.

    Why not ``train``'s sentence (the record's ``warning``): it names the coded columns (``log10_ebv_dna``), the
    penalty and the likelihood, for whoever trains; a clinician reading one patient's result needs which factors'
    weights are shrunk and that what they add is less certain than the printed interval - and in one line, as the
    sheet's first page holds about three such warnings before it spills onto a second page.

    Parameters
    ----------
    record : mapping
        The runaway record: ``factors`` (each runaway factor's log hazard ratio per SD as first fitted) and
        ``factors_after`` (those still too large at the strongest penalty tried; empty when the refit tamed them).
    events : int or None
        Events among the training patients (None for a bundle that did not record them).
    name : str, default "nomogram"
        The model, as the bundle's ``models`` name it.

    Returns
    -------
    str
        One sentence.
    """
    from NPCPrognosisLib.reporting.labels import factor_name, model_phrase

    factors = ", ".join(factor_name(f) for f in record.get("factors") or {})
    still = ", ".join(factor_name(f) for f in record.get("factors_after") or {})
    on = f"{events} training events" if events is not None else "too few training events"
    return (f"{model_phrase(name)}'s weights for {factors} ran away on {on} and were shrunk towards no effect"
            + (f" ({still} still implausibly large)" if still else "")
            + ": what they add to this patient's risk and survival is unproven, and less certain than the "
            "intervals show")


def fit_warnings(document: dict[str, Any], name: str = "nomogram") -> list[str]:
    """What ``train`` found about the fit of model ``name`` (the one the patient's result comes from), in the
    patient's words: too few training events for its factors, and each Cox fit of it - its own, or a stacked
    block's - that ran away (:func:`runaway_text`). None of them for a sound model, for a bundle saved before they
    were kept, or for the other models' fits (the clinical model alone is not what the patient's result comes from).

    Why the events: below :data:`~NPCPrognosisLib.pipeline.internal_validation.MIN_EVENTS_PER_FACTOR` events per
    factor ``train`` and ``evaluate`` warn that the corrected C means little, while the patient's sheet printed its
    intervals as if they held: on tabular cohorts of 28 training patients (6-15 events, 8 factors) the 95 % interval
    of 36-month survival held the large-cohort fit's value in 67-83 % of new patients (docs/generalisation.md,
    "Do the survival intervals a patient is given hold the truth?"). Said with the runaway fits in one sentence, as
    both mean the same for the patient and the sheet's first page holds about three such lines.

    Parameters
    ----------
    document : dict
        The bundle document (``bundle.json``).
    name : str, default "nomogram"
        The model, as the bundle's ``models`` name it.

    Returns
    -------
    list of str
        The sentences; empty when the fit is sound.
    """
    from NPCPrognosisLib.pipeline.internal_validation import MIN_EVENTS_PER_FACTOR
    from NPCPrognosisLib.reporting.labels import factor_name, model_phrase

    model = (document.get("models") or {}).get(name) or {}
    runaway = list((model.get("runaway") or {}).values())
    events = (document.get("training") or {}).get("events")
    factors = len((model.get("model") or {}).get("covariates") or [])
    needed = MIN_EVENTS_PER_FACTOR * factors
    if events is None or not factors or events >= needed:
        return [runaway_text(record, events, name) for record in runaway]
    shrunk = ", ".join(dict.fromkeys(factor_name(f) for record in runaway for f in record.get("factors") or {}))
    shrunk_text = f", and its weights for {shrunk} ran away and were shrunk towards no effect" if shrunk else ""
    return [f"{model_phrase(name)} learned from {events} training events for {factors} factors (at least {needed} "
            f"wanted){shrunk_text}: its risk, risk group and survival intervals for this patient are less certain "
            "than shown"]


def predict_patient(
    bundle: LoadedBundle,
    patient: PatientImages,
    clinical: Mapping[str, Any] | ClinicalRecord,
    *,
    features: Mapping[str, float] | None = None,
    tta: int = 4,
    centre: str | None = None,
    extras: Mapping[str, Any] | None = None,
    saliency: bool = False,
) -> Prediction:
    """Predict from aligned images (or from precomputed ``features`` of the same settings).

    Parameters
    ----------
    bundle : LoadedBundle
        The trained models (:func:`NPCPrognosisLib.pipeline.models.load_bundle`).
    patient : PatientImages
        Sequences aligned on the CET1W grid, with the mask when contours exist (``patient.mask is None``: the
        bundle's network segments the patient and radiomics come from its contours).
    clinical : mapping or ClinicalRecord
        The clinical factors (validated here when a mapping).
    features : mapping, optional
        Radiomics already computed with the bundle's settings (e.g. of edited contours); skips preprocessing and
        radiomics unless the deep score must still be computed.
    tta : int, default 4
        Test-time augmentations of the network, giving the spread of the deep score.
    centre : str, optional
        The patient's centre, when the bundle harmonised radiomics across the training centres (ComBat); without
        it, or for a centre training never saw, raw features are used and a warning says so.
    extras : mapping of str to ExtraBlock, optional
        The extra modality tables the bundle's fusion model or binary endpoints were trained with
        (``--extra-features``), read by patient ID; a table without this patient's row means the modality is
        missing (the fusion's gate weight is then 0; the binary ridge scores the block as absent). A table a
        binary endpoint needs and not given stops before any work.
    saliency : bool, default False
        When the network runs, also compute the saliency of its risk score (one backward pass) for the sheet.

    Returns
    -------
    prediction : Prediction
        Risk score and group, survival at 12/36/60 months, nomogram points, uncertainty, reference curves,
        chemotherapy-benefit statement, warnings and the seconds each stage took.
    """
    record = clinical if isinstance(clinical, ClinicalRecord) else parse_clinical(clinical, patient.patient_id)
    timings: dict[str, float] = {}
    warnings = list(patient.warnings)
    # The deep score depends on the images only, so precomputed radiomics (e.g. of edited contours) still need
    # the network unless they carry the score too.
    has_deep = features is not None and DEEP_SCORE in features
    has_deep_features = features is not None and any(is_deep_feature(c) for c in features)
    needs_deep_features = bundle.uses_deep_features and not has_deep_features
    needs_network = ((features is None and patient.mask is None) or (bundle.uses_deep_score and not has_deep)
                     or needs_deep_features)
    needs_radiomics = features is None
    if saliency and bundle.network_dir is None:
        warnings.append("no saliency map: the bundle has no network")
    elif saliency:
        needs_network = True  # the map is the network's, also when the contours were given
    if needs_network and bundle.network_dir is None:
        raise InputError("no mask given and the bundle has no segmentation network", patient_id=patient.patient_id,
                         column="--mask",
                         fix="pass a mask (label 1 = GTVp, 2 = GTVn) or use a bundle with a network")
    binary_blocks = list((bundle.document.get("binary_endpoints") or {}).values())
    if binary_blocks:
        from NPCPrognosisLib.pipeline.binary import with_needed_extras

        with_needed_extras(binary_blocks, pd.DataFrame(index=[0]), extras, [patient.patient_id])  # stops early
    if extras:  # a patient without a row whose ID the table writes another way: scored as without that modality
        from NPCPrognosisLib.io.extra_features import unmatched_rows_warnings

        warnings.extend(unmatched_rows_warnings(extras, [patient.patient_id], "patient"))

    # 1. preprocess: N4 and normalisation once per sequence, shared by the network and radiomics
    preprocessed: dict[str, sitk.Image] = {}
    if needs_network or needs_radiomics:
        with _timed(timings, "preprocess"):
            preprocessed = preprocess_images(patient.images, bundle.preprocess)

    # 2. contour: the network's segmentation (and deep score) when needed
    mask, automatic_mask = patient.mask, None
    segmentation: dict[str, Any] = {}
    row: dict[str, float] = {}
    deep_sd = None
    uncertainty_map = saliency_map = None
    if needs_network:
        from NPCPrognosisLib.deep.segmentation import cached_network, segment_preprocessed

        with _timed(timings, "contour"):
            network = cached_network(bundle.network_dir)
            network_input = preprocessed_as(patient.images, network.preprocess, preprocessed, bundle.preprocess)
            result = segment_preprocessed(network, network_input, patient_id=patient.patient_id, tta=tta,
                                          saliency=saliency)
        warnings.extend(result.warnings)
        uncertainty_map = result.uncertainty if tta else None
        saliency_map = result.saliency
        segmentation = {"source": "manual" if mask is not None else "automatic",
                        "automatic_volumes_ml": result.volumes_ml, "deep_score": result.deep_score,
                        "deep_score_sd": result.deep_score_sd}
        if mask is None:
            mask = automatic_mask = check_mask(result.mask, patient_id=patient.patient_id, automatic=True)
            warnings.append("radiomics computed on automatic contours: review them before acting on the result")
        row[DEEP_SCORE] = float(result.deep_score)
        deep_sd = result.deep_score_sd
        if needs_deep_features:
            from NPCPrognosisLib.deep.features import deep_features

            with _timed(timings, "deep features"):
                row.update(deep_features(network, network_input, mask))

    # 3. radiomics with the bundle's settings
    if needs_radiomics:
        with _timed(timings, "radiomics"):
            row.update(bundle_radiomics(bundle, preprocessed, mask, patient.patient_id))
    else:
        row.update(dict(features))
    needed = pd.to_numeric(pd.Series({name: row.get(name) for name in bundle.signature.features}, dtype=object),
                           errors="coerce").astype(float)
    # a structure the patient does not have (no nodes: gtvn_present = 0) has no features by design, not by failure
    absent = {roi for roi in ROIS if row.get(present_column(roi)) == 0}
    unmeasured = [name for name in needed.index[~np.isfinite(needed.to_numpy())] if feature_roi(name) not in absent]
    if unmeasured:
        # the Rad-score fills them with the training mean: say so, the score then speaks for fewer features
        warnings.append(f"{len(unmeasured)} of the Rad-score's {len(bundle.signature.features)} features could not "
                        f"be computed for patient {patient.patient_id} ({', '.join(unmeasured[:3])}"
                        f"{', ...' if len(unmeasured) > 3 else ''}) and took the training mean: the Rad-score rests "
                        "on the others; check the contours (a structure too small for a filter gives no value)")

    # 4. scores: encoded factors -> nomogram risk, survival, group, uncertainty, reference curves
    with _timed(timings, "scores"):
        table, not_harmonised = bundle.harmonised(pd.DataFrame([row]), [centre], [patient.patient_id])
        warnings.extend(not_harmonised)
        factors = bundle.factors([record], table, extras, [patient.patient_id])
        values = {k: float(v) for k, v in factors.iloc[0].items()}
        nomogram = bundle.nomograms["nomogram"]
        risk = float(nomogram.risk(values)[0])
        survival = nomogram.survival(values, REPORT_MONTHS)[0]
        cutoff = bundle.cutoffs["nomogram"]
        group = str(assign_groups([risk], cutoff)[0])
        survival_by_month = {f"{m}": float(s) for m, s in zip(REPORT_MONTHS, survival) if np.isfinite(s)}
        unknown = [f"{m:g}" for m, s in zip(REPORT_MONTHS, survival) if not np.isfinite(s)]
        if unknown:
            warnings.append(f"no {', '.join(unknown)}-month survival: the training cohort's follow-up ended at "
                            f"{nomogram.model.max_time:.1f} months, and the model knows nothing after it")
        uncertainty = risk_uncertainty(bundle, values, deep_sd)
        certainty = group_certainty(risk, uncertainty["risk_se"], cutoff)
        uncertainty["risk_ci95"] = certainty["risk_ci95"]
        imputed = {c: imputed_prediction(bundle, values, c, group) for c in imputed_covariates(record)
                   if c in nomogram.factors}
        curves = survival_curves(bundle, values)
    if deep_sd is not None and DEEP_SCORE in nomogram.factors:
        # The deep score's spread over test-time augmentations, carried through the nomogram's coefficient.
        segmentation["risk_score_sd"] = abs(float(nomogram.model.coef[nomogram.factors.index(DEEP_SCORE)])) * deep_sd
    binary = {}
    if bundle.document.get("binary_endpoints"):
        from NPCPrognosisLib.pipeline.binary import patient_binary, with_needed_extras

        with _timed(timings, "binary endpoints"):
            encoded = pd.DataFrame([encode_clinical(record, bundle.ebv_fill)])
            joined = with_needed_extras(binary_blocks, pd.DataFrame([row]), extras, [patient.patient_id])
            binary = {name: patient_binary(block, encoded, joined)
                      for name, block in bundle.document["binary_endpoints"].items()}
        warnings.extend(w for result in binary.values() for w in result["warnings"])  # train's findings
    fusion = {}
    if bundle.fusion is not None:
        with _timed(timings, "fusion"):
            fusion = patient_fusion(bundle, factors, table, extras, patient.patient_id)
        warnings.extend(fusion["warnings"])
    out_of_range = nomogram.out_of_range(values)
    warnings += [extrapolation_warning(item) for item in out_of_range]
    warnings += [imputation_warning(c, block) for c, block in imputed.items()]
    if record.ebv_dna is None and "log10_ebv_dna" not in imputed:
        warnings.append("EBV DNA missing: the training median was used")
    warnings.extend(uncounted_factors(bundle.document, encode_clinical(record, bundle.ebv_fill)))
    unproven = unproven_nomogram(bundle.document)
    warnings.extend(unproven_warnings(unproven))
    warnings.extend(fit_warnings(bundle.document))  # train's findings of the fit
    if bundle.document.get("synthetic_demo"):
        warnings.insert(0, SYNTHETIC_WARNING)

    # 5. the prediction a clinician reads
    return Prediction(
        patient_id=patient.patient_id,
        endpoint=bundle.endpoint,
        risk_score=risk,
        risk_group=GROUP_NOT_DETERMINED if unproven else group,
        cutoff=cutoff,
        survival=survival_by_month,
        nomogram_points=nomogram.points(values),
        model_risks={name: float(model.risk(values)[0]) for name, model in bundle.nomograms.items()},
        factors=values,
        clinical=record.to_dict(),
        uncertainty=uncertainty,
        survival_curves=curves,
        chemo_benefit=patient_chemo_benefit(bundle, record, values, group),
        binary=binary,
        fusion=fusion,
        segmentation=segmentation,
        nomogram_scale=nomogram.chart_scale(),
        warnings=warnings,
        borderline=certainty["borderline"],
        unproven=unproven,
        imputed=imputed,
        out_of_range=out_of_range,
        bundle=bundle_provenance(bundle),
        inputs={role: image_fingerprint(image) for role, image in [*patient.images.items(), ("mask", mask)]
                if image is not None},
        timings=timings,
        automatic_mask=automatic_mask,
        uncertainty_map=uncertainty_map,
        saliency_map=saliency_map,
    )


def patient_fusion(bundle: LoadedBundle, factors: pd.DataFrame, features: pd.DataFrame,
                   extras: Mapping[str, Any] | None, patient_id: str) -> dict[str, Any]:
    """One patient's fusion-model block: risk and group (its own training cut-off, or ``not determined`` with the
    ``unproven`` record when the fusion learned nothing: :func:`unproven_nomogram`), survival at 12/36/60 months,
    each binary task's probability, the gate weights per task, the modalities this patient lacked, and what each
    modality moves (``training_contributions``: the bundle's ``fusion.contributions``, empty for older bundles)."""
    from NPCPrognosisLib.pipeline.fusion import MMOE

    fused = bundle.fused(factors, features, extras, [patient_id])
    model = bundle.nomograms[MMOE]
    risk = float(model.risk(factors)[0])
    missing = fused.missing(0)
    warnings = []
    absent = bundle.missing_blocks_warning(extras)
    if absent:
        warnings.append(absent)
    elif missing:
        warnings.append(f"no {', '.join(missing)} data for patient {patient_id}: the fusion model used the other "
                        "modalities only")
    unproven = unproven_nomogram(bundle.document, MMOE)
    warnings.extend(unproven_warnings(unproven, MMOE))
    group = str(assign_groups([risk], bundle.cutoffs[MMOE])[0])
    return {"model": MMOE, "risk_score": risk, "risk_group": GROUP_NOT_DETERMINED if unproven else group,
            "unproven": unproven,
            "survival": {f"{m}": float(s) for m, s in zip(REPORT_MONTHS, model.survival(factors, REPORT_MONTHS)[0])
                         if np.isfinite(s)},
            "probabilities": {task: float(p[0]) for task, p in fused.probabilities.items()},
            "gate_weights": fused.gate_weights(0),
            "training_contributions": bundle.document["fusion"].get("contributions") or {},
            "missing_modalities": missing, "warnings": warnings}


def bundle_provenance(bundle: LoadedBundle) -> dict[str, Any]:
    """Which model made a prediction: its folder, date, software version, training cohort size and the SHA-256
    of ``bundle.json`` (and of the network's weights), so a filed report names exactly what produced it."""
    from NPCPrognosisLib.io.bundle import MANIFEST_FILE, network_checksum, sha256

    document = bundle.document
    training = document.get("training") or {}
    out = {"path": str(bundle.path), "created": document.get("created"),
           "format_version": document.get("format_version"),
           "software_version": (document.get("software") or {}).get("npc-prognosis"),
           "training_n": training.get("n"), "training_events": training.get("events")}
    out["sha256"] = sha256(Path(bundle.path) / MANIFEST_FILE)
    if bundle.network_dir is not None:
        out["network_sha256"] = network_checksum(bundle.network_dir)
    return out
