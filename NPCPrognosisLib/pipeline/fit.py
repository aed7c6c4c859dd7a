"""The survival models of one training split: the radiomics signature, the clinical Cox model, the nomograms
(stacked on cross-fitted scores) and each model's risk cut-off, fitted together by :func:`fit_models`.

Why one function: ``train`` fits it once on the training split, and the optimism bootstrap, the nested
cross-validation and leave-one-centre-out evaluation refit exactly the same procedure on other patients
(:mod:`NPCPrognosisLib.pipeline.internal_validation`, :mod:`NPCPrognosisLib.pipeline.evaluate`); a second copy
of the procedure would let the estimate and the shipped model drift apart.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import IMPUTED_COVARIATES, estimable_codings
from NPCPrognosisLib.io.manifest import CENTRE_COLUMN, Manifest, check_outcomes
from NPCPrognosisLib.pipeline.models import FACTOR_BLOCKS, SCORE_FACTORS, model_factors, volume_factors
from NPCPrognosisLib.radiomics.features_table import DEEP_SCORE, feature_matrix
from NPCPrognosisLib.radiomics.harmonization import ComBatModel
from NPCPrognosisLib.radiomics.signature import (
    RadiomicsSignature,
    SignatureSettings,
    cross_fitted_rad_score,
    fit_signature,
    fold_signatures,
    rad_score_variance,
)
from NPCPrognosisLib.survival.nomogram import Nomogram, fit_nomogram

log = logging.getLogger(__name__)

#: Ridge strength of the Cox models (penalised log-likelihood - 0.01/2 ||beta||^2): negligible for a cohort of
#: 100+ patients, but keeps a small cohort with a separating factor from producing infinite hazard ratios.
COX_PENALIZER = 0.01
#: Folds of the cross-fitted Rad-score the Cox models are fitted on (see ``cross_fitted_rad_score``).
RAD_SCORE_FOLDS = 5
#: Least calibration slope of the cross-fitted Rad-score on the full signature's in-sample one for the Rad-score
#: to be read as the Cox models were fitted (below it: :func:`rad_score_rescaling`). Measured: 0.42-2.16 on ten
#: 93-160-patient training cohorts (36-67 events), 0.02-0.21 on the nine 28-40-patient ones (8-14 events) whose
#: new patients got nomogram survival of 0 % or 100 %.
MIN_RAD_SCORE_SLOPE = 0.3


def ebv_fill_value(manifest: Manifest) -> float:
    """Median log10 EBV DNA of the training cohort: stands in for a missing value."""
    encoded = manifest.clinical_table(None)["log10_ebv_dna"]
    median = float(encoded.median()) if encoded.notna().any() else 0.0
    return 0.0 if math.isnan(median) else median


#: Percentiles of a factor's measured training values at which predict shows what a missing value could change.
IMPUTATION_PERCENTILES = (10.0, 90.0)


def imputation_ranges(manifest: Manifest) -> dict[str, list[float]]:
    """The 10th and 90th percentile of each fillable covariate's measured training values (log10 EBV DNA copies).

    Why: a missing value takes the training median, and the patient's true value may lie anywhere; ``predict``
    recomputes the prediction at these two percentiles to show how far the missing value could move the risk and
    the group. A covariate no training patient had measured gets no range.
    """
    table = manifest.clinical_table(None)
    ranges = {}
    for covariate in IMPUTED_COVARIATES.values():
        measured = table[covariate].dropna().to_numpy(float)
        if len(measured):
            ranges[covariate] = [float(v) for v in np.percentile(measured, IMPUTATION_PERCENTILES)]
    return ranges


def clinical_gaps(manifest: Manifest, ebv_fill: float, *, training: bool) -> dict[str, Any]:
    """What the clinical factors of these patients lack, warned about once per run and recorded: patients whose EBV
    DNA is filled with the training median, and (``training``) factors no model can use because every training
    patient has the same value.

    Why: either changes every prediction's clinical part, and a cohort that never recorded a factor (EBV DNA
    outside endemic regions, rENE) would otherwise look to the user as if it had been used.
    """
    missing = int(manifest.clinical_table(None)["log10_ebv_dna"].isna().sum())
    gaps: dict[str, Any] = {"ebv_dna_filled": missing}
    if missing:
        from NPCPrognosisLib.io.clinical import copies_text
        from NPCPrognosisLib.reporting.labels import ebv_copies

        log.warning("EBV DNA is missing for %d of %d patient(s)%s: they are given the training median, %s copies/mL",
                    missing, len(manifest.table), "" if "ebv_dna" in manifest.table.columns else " (no ebv_dna column)",
                    copies_text(ebv_copies(ebv_fill)))
    if training:
        constant = estimable_codings(manifest.clinical_table(ebv_fill))[1]
        gaps["constant_in_training"] = constant
        for name, value in constant.items():
            log.warning("%s is %g for every training patient: no model can estimate its effect, so it is left out "
                        "of the clinical factors (a new patient's %s is not counted)", name, value, name)
    return gaps


def rad_score_rescaling(in_sample: np.ndarray, cross_fitted: np.ndarray) -> dict[str, Any] | None:
    """How the full signature's Rad-score must be read when its cross-fitted values do not reproduce it, or None
    when they do (calibration slope at least :data:`MIN_RAD_SCORE_SLOPE`).

    Why: the Cox models weigh the cross-fitted Rad-score (each training patient scored by a signature fitted
    without them), new patients get the full signature's. On a few events the fold signatures select (almost)
    nothing while the full one selects several features: on 28 patients with 8 events the cross-fitted scores
    spanned -0.18 to 0.24 and new patients' -1.4 to 2.6, so the weight of 8.5 learned on the narrow score turned
    new patients' nomogram survival into 0 % or 100 %. The least-squares line of the cross-fitted on the in-sample
    score (``cross_fitted ~ offset + slope * in_sample``) says how much of the full score the fold signatures
    reproduce; below :data:`MIN_RAD_SCORE_SLOPE` the full score is not what the Cox weight was learned on, and the
    signature's output is put onto the cross-fitted scale (``offset + slope * score``, slope floored at 0: a full
    score the refits do not reproduce at all carries nothing), so every model reads new patients' Rad-score on the
    scale its weight was fitted on. Why rescale rather than leave the Rad-score out of the nomogram: on the eight
    30-40-patient tabular cohorts below the threshold (``simulate_outcomes``, 1,000 new patients each) held-out
    nomogram C was 0.59 on average as fitted, 0.65 rescaled and 0.69 with the clinical factors alone. On the
    28-patient image cohort (8 events) the clinical Cox model alone separated and gave new patients survival of
    1e-206, while the stacked nomogram weighs its clinical block out of fold: rescaled, its 36-month survival spanned
    12-86 % there (0-100 % as fitted), with the same held-out C. Both measured before such a runaway Cox fit was
    refitted with a ridge per SD (:func:`~NPCPrognosisLib.survival.cox.runaway_penalty`): now the clinical model
    and the nomogram's clinical block are refitted alike, and on the tabular stand-in of that cohort
    (``simulate_outcomes(40, 2)``, 8 events, Rad-score slope 0.105) new patients' 36-month survival spans 4.8-100 %
    (clinical, was 1e-46) and 68-98 % (rescaled nomogram, held-out C 0.50 -> 0.58).

    Parameters
    ----------
    in_sample : numpy.ndarray
        The full signature's Rad-score of the training patients.
    cross_fitted : numpy.ndarray
        Their cross-fitted Rad-score (:func:`~NPCPrognosisLib.radiomics.signature.cross_fitted_rad_score`).

    Returns
    -------
    rescaling : dict or None
        ``slope``, ``offset``, both scores' SD and ``warning`` (the sentence ``train`` prints and stores).
    """
    in_sample, cross_fitted = np.asarray(in_sample, float), np.asarray(cross_fitted, float)
    spread = float(in_sample.std(ddof=1))
    slope = float(np.cov(cross_fitted, in_sample)[0, 1] / spread ** 2) if spread > 0 else 1.0
    if slope >= MIN_RAD_SCORE_SLOPE:
        return None
    slope = max(slope, 0.0)
    offset = float(cross_fitted.mean() - slope * in_sample.mean())
    cross_spread = float(cross_fitted.std(ddof=1))
    warning = (f"the Rad-score did not hold up when refitted without the patients it scores (those refits "
               f"reproduce {slope:.0%} of its variation; spread {cross_spread:.2f} against {spread:.2f} on "
               f"the patients it was fitted on): read as fitted it would give new patients survival near 0 % or "
               f"100 %, so every model reads it shrunk onto the scale its weight was fitted on (offset "
               f"{offset:+.3f}, slope {slope:.3f}); its share of the nomogram is small and unproven")
    return {"slope": slope, "offset": offset, "sd_in_sample": spread, "sd_cross_fitted": cross_spread,
            "min_slope": MIN_RAD_SCORE_SLOPE, "warning": warning}


def training_findings(document: dict[str, Any]) -> list[str]:
    """What ``train`` found about a survival bundle's fit that every result of it must repeat: the Rad-score read
    shrunk onto its cross-fitted scale (:func:`rad_score_rescaling`), too few events for the optimism-corrected C
    (:func:`~NPCPrognosisLib.pipeline.internal_validation.too_few_events_warning`) and each Cox fit whose
    coefficients ran away and was refitted with a larger ridge penalty
    (:func:`~NPCPrognosisLib.survival.cox.runaway_penalty`, each model's ``runaway``).

    Why one function: ``train`` printed them once and ``evaluate`` said nothing, so a held-out C beside a
    nomogram whose Rad-score had been shrunk, or whose corrected C rested on 8 events, read as an ordinary result.
    A patient's prediction repeats the nomogram's runaway fits in its own words
    (:func:`~NPCPrognosisLib.pipeline.predict.fit_warnings`): these sentences name coded columns and penalties.

    Parameters
    ----------
    document : dict
        The bundle document (``bundle.json``).

    Returns
    -------
    list of str
        The findings in words; empty for a bundle without them (and for bundles written before they were recorded).
    """
    rescaling = (document.get("cox") or {}).get("rad_score_rescaling")
    runaway = [record.get("warning") for model in (document.get("models") or {}).values()
               for record in ((model or {}).get("runaway") or {}).values()]
    return [w for w in ((document.get("training") or {}).get("optimism_warning"),
                        rescaling and rescaling.get("warning"), *runaway) if w]


@dataclass
class TrainedModels:
    """The fitted stages (before they are written as a bundle)."""

    endpoint: str
    signature: RadiomicsSignature
    nomograms: dict[str, Nomogram]
    cutoffs: dict[str, dict[str, Any]]
    ebv_fill: float
    train_time: list[float]
    train_event: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)
    #: How the Cox models saw the Rad-score during fitting ("5-fold cross-fitted" or "in-sample").
    rad_score_for_cox: str = "in-sample"
    #: ComBat estimates when the radiomics were harmonised across centres.
    combat: ComBatModel | None = None
    #: The cross-fitted Rad-score of the training patients the Cox models were fitted on (None: in-sample).
    cross_fitted_rad_score: np.ndarray | None = None
    #: How the Rad-score was rescaled onto the cross-fitted scale (:func:`rad_score_rescaling`; None: it was not).
    rad_score_rescaling: dict[str, Any] | None = None

    def inputs(self, manifest: Manifest, features: pd.DataFrame) -> pd.DataFrame:
        """Every factor (clinical, Rad-score, deep score) for aligned manifest/features rows."""
        if self.combat is not None:
            features = self.combat.apply(features, manifest.centre_labels, patient_ids=manifest.patient_ids)
        return model_factors(manifest.clinical_table(self.ebv_fill), self.signature, features)

    def risks(self, manifest: Manifest, features: pd.DataFrame) -> pd.DataFrame:
        """Risk (linear predictor) of every model for aligned manifest/features rows."""
        factors = self.inputs(manifest, features)
        return pd.DataFrame({name: model.risk(factors) for name, model in self.nomograms.items()})

    def training_inputs(self, manifest: Manifest, features: pd.DataFrame) -> pd.DataFrame:
        """The factors of the training rows as the Cox models and cut-offs were fitted on them: the cross-fitted
        Rad-score in place of the in-sample one (which ranks the training patients far better than new ones)."""
        factors = self.inputs(manifest, features)
        if self.cross_fitted_rad_score is not None:
            factors["rad_score"] = self.cross_fitted_rad_score
        return factors

    def training_risks(self, manifest: Manifest, features: pd.DataFrame) -> pd.DataFrame:
        """Risk of every model on its training rows from :meth:`training_inputs`: what each cut-off was learned on,
        so what the training patients' risk groups must be read from."""
        factors = self.training_inputs(manifest, features)
        return pd.DataFrame({name: model.risk(factors) for name, model in self.nomograms.items()})


def fit_models(manifest: Manifest, features: pd.DataFrame, endpoint: str,
               settings: SignatureSettings | None = None, *, ties: str = "efron",
               penalizer: float = COX_PENALIZER, rad_score_folds: int = RAD_SCORE_FOLDS,
               icc: pd.Series | None = None, clinical_coding: str = "ordinal",
               nomogram_factors: list[str] | None = None, harmonise: bool = False) -> TrainedModels:
    """Fit all models on aligned training rows (``features`` row i belongs to manifest row i).

    The Cox models see the Rad-score cross-fitted over ``rad_score_folds`` folds (0: in-sample, as most
    published nomograms do; see :func:`cross_fitted_rad_score`). ``icc`` (per-feature robustness) goes to the
    signature with ``settings.min_icc``; ``clinical_coding`` (a key of ``CLINICAL_CODINGS``) codes T and N;
    ``nomogram_factors`` are the nomogram's factors (default: deep score when present, Rad-score and every
    clinical factor), as :func:`NPCPrognosisLib.pipeline.selection.select_models` chose them. ``harmonise`` fits
    ComBat across the manifest's centres on these rows and fits everything on the harmonised features. Every
    internal cross-validation keeps the rows of one patient ID in one fold (a bootstrap resample repeats
    patients; see :func:`NPCPrognosisLib.survival.splits.event_folds`).
    """
    from NPCPrognosisLib.survival.risk_groups import training_cutoff

    check_outcomes(manifest, endpoint)
    time, event = manifest.outcome_arrays(endpoint)
    combat = None
    if harmonise:
        from NPCPrognosisLib.radiomics.harmonization import fit_combat

        if manifest.centres is None:
            raise InputError("harmonisation needs a centre column with two or more centres", path=manifest.source,
                             column=CENTRE_COLUMN, fix="add the centre of each patient, or train without it")
        combat = fit_combat(feature_matrix(features), manifest.centres, patient_ids=manifest.patient_ids)
        features = combat.apply(features, manifest.centres, patient_ids=manifest.patient_ids)
    groups = np.asarray(manifest.patient_ids)
    signature = fit_signature(feature_matrix(features), time, event, settings, icc, groups)
    ebv_fill = ebv_fill_value(manifest)
    clinical_table = manifest.clinical_table(ebv_fill)
    factors = model_factors(clinical_table, signature, features)
    folds = (fold_signatures(features, time, event, settings, rad_score_folds, icc, groups)
             if rad_score_folds > 1 else None)
    oof = cross_fitted_rad_score(features, time, event, settings, rad_score_folds, fits=folds) if folds else None
    rescaling = rad_score_rescaling(factors["rad_score"].to_numpy(), oof) if oof is not None else None
    if rescaling is not None:
        signature = replace(signature, calibration_slope=rescaling["slope"], calibration_offset=rescaling["offset"])
    if oof is not None:
        factors["rad_score"] = oof
    codings = estimable_codings(clinical_table)[0]
    if clinical_coding not in codings:
        raise InputError(f"the {clinical_coding} coding of T and N needs every stage among the training patients "
                         f"(T stages {sorted(int(v) for v in set(clinical_table['t_stage']))}, N stages "
                         f"{sorted(int(v) for v in set(clinical_table['n_stage']))})", path=manifest.source,
                         column="t_stage", fix="fit the ordinal coding (T 1-4, N 0-3) on these patients")
    clinical = codings[clinical_coding]
    has_deep = DEEP_SCORE in factors.columns
    default = [*([DEEP_SCORE] if has_deep else []), "rad_score", *clinical]
    designs = {"radiomics": ["rad_score"], "clinical": clinical, "nomogram": list(nomogram_factors or default)}
    if volume := volume_factors(factors):
        designs["volume"] = volume
    if has_deep:
        if factors[DEEP_SCORE].isna().any():
            missing = manifest.table.loc[factors[DEEP_SCORE].isna().to_numpy(), "patient_id"].tolist()
            raise InputError(f"no deep score for {len(missing)} training patient(s)", patient_id=missing[0],
                             column=DEEP_SCORE, fix="re-extract these patients with --network")
        designs.update({"deep": [DEEP_SCORE], "radiomics_nomogram": ["rad_score", *clinical]})
    nomograms = {name: fit_nomogram(name, factors, columns, time, event, ties=ties, penalizer=penalizer,
                                    scores=SCORE_FACTORS, factor_blocks=FACTOR_BLOCKS,
                                    seed=(settings or SignatureSettings()).seed,
                                    groups=groups)
                 for name, columns in designs.items()}
    if folds is not None:  # the Rad-score's own variance joins the survival intervals of every model weighing it
        variance = {"rad_score": rad_score_variance(folds[1], features)}
        nomograms = {name: replace(model, score_variance=variance) if "rad_score" in model.factors else model
                     for name, model in nomograms.items()}
    cutoffs = {}
    for name, model in nomograms.items():
        cutoffs[name] = training_cutoff(model.risk(factors), time, event, min_share=0.10)
    return TrainedModels(endpoint=endpoint, signature=signature, nomograms=nomograms, cutoffs=cutoffs,
                         ebv_fill=ebv_fill, train_time=[float(t) for t in time],
                         train_event=[int(e) for e in event],
                         rad_score_for_cox=f"{rad_score_folds}-fold cross-fitted" if oof is not None else "in-sample",
                         combat=combat, cross_fitted_rad_score=oof, rad_score_rescaling=rescaling)
