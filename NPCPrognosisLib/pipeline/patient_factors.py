"""What one patient's factors let a prediction claim: a factor filled with the training median swept across its
training range (risk, risk group, chemotherapy benefit), a factor outside the training range, a factor every
training patient shared.

Why apart from :func:`~NPCPrognosisLib.pipeline.predict.predict_patient`: ``evaluate`` writes the same
chemotherapy-benefit conclusion per held-out patient (:func:`patient_chemo_benefit`), so both commands read it
from here rather than one from the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from NPCPrognosisLib.io.clinical import CLINICAL_COVARIATES, ClinicalRecord, encode_clinical, imputed_covariates
from NPCPrognosisLib.pipeline.models import LoadedBundle
from NPCPrognosisLib.survival.benefit import given_arm
from NPCPrognosisLib.survival.benefit_patient import patient_benefit
from NPCPrognosisLib.survival.patient import imputation_effect
from NPCPrognosisLib.survival.risk_groups import assign_groups


def patient_chemo_benefit(bundle: LoadedBundle, record: ClinicalRecord, factors: Mapping[str, float],
                          group: str) -> dict[str, Any]:
    """The patient's chemotherapy-benefit statement (:func:`~NPCPrognosisLib.survival.benefit_patient.patient_benefit`)
    with a missing EBV DNA swept across its training 10th-90th percentile.

    Why one function: ``predict`` prints it, and ``evaluate`` writes its ``conclusion`` per patient, so a held-out
    patient without EBV DNA reads "undetermined without EBV DNA" in both, never a conclusion resting on the median.

    Parameters
    ----------
    bundle : LoadedBundle
        Its ``chemo_benefit`` block, EBV DNA fill, training percentiles and nomogram.
    record : ClinicalRecord
        The patient's clinical record (treatment given, stage, which factors are missing).
    factors : mapping
        The patient's nomogram factors (for the risk group a filled factor's other values would give).
    group : {'low', 'high'}
        The patient's nomogram risk group.

    Returns
    -------
    benefit : dict
        :func:`~NPCPrognosisLib.survival.benefit_patient.patient_benefit`'s result.
    """
    filled_ranges = {c: (bundle.imputation_ranges or {}).get(c) for c in imputed_covariates(record)}
    return patient_benefit(bundle.document.get("chemo_benefit"), encode_clinical(record, bundle.ebv_fill), group,
                           record.t_stage, record.n_stage, given_arm(record.chemo, record.ccnd), imputed=filled_ranges,
                           group_at=lambda covariate, value: group_with(bundle, factors, covariate, value),
                           factor_texts=_factor_texts(filled_ranges))


def imputed_prediction(bundle: LoadedBundle, factors: Mapping[str, float], covariate: str,
                       group: str) -> dict[str, Any]:
    """What a covariate filled with the training median could change: the nomogram's prediction at the training
    10th and 90th percentile of the covariate, and the risk group to print ("undetermined without EBV DNA" when
    the group changes within that range). A bundle trained before the percentiles were stored gets
    ``value_range`` None, and its warning says the range is unknown.

    Parameters
    ----------
    bundle : LoadedBundle
        Its nomogram, cut-off and training percentiles (``imputation_ranges``).
    factors : mapping
        The patient's nomogram factors, with the fill in ``covariate``.
    covariate : str
        The filled covariate (e.g. ``log10_ebv_dna``).
    group : {'low', 'high'}
        The patient's risk group with the fill.

    Returns
    -------
    effect : dict
        :func:`~NPCPrognosisLib.survival.patient.imputation_effect`'s result with ``risk_group`` added, or
        ``filled_with``, ``value_range`` None and ``risk_group`` when the bundle stores no percentiles.
    """
    from NPCPrognosisLib.reporting.labels import factor_name

    ranges = bundle.imputation_ranges or {}
    if covariate not in ranges:
        return {"filled_with": float(factors[covariate]), "value_range": None, "risk_group": group}
    effect = imputation_effect(bundle.nomograms["nomogram"], factors, covariate, ranges[covariate],
                               bundle.cutoffs["nomogram"])
    effect["risk_group"] = group if effect["group_determined"] else f"undetermined without {factor_name(covariate)}"
    return effect


def group_with(bundle: LoadedBundle, factors: Mapping[str, float], covariate: str, value: float) -> str:
    """The nomogram's risk group with ``covariate`` at ``value``: a filled-in EBV DNA may change the group, and with
    it the benefit model's risk-group term (:func:`~NPCPrognosisLib.survival.benefit_patient.benefit_across_range`).

    Parameters
    ----------
    bundle : LoadedBundle
        Its nomogram and cut-off.
    factors : mapping
        The patient's nomogram factors.
    covariate : str
        The covariate to set (left as it is when the nomogram does not use it).
    value : float
        Its value.

    Returns
    -------
    group : {'low', 'high'}
    """
    nomogram = bundle.nomograms["nomogram"]
    changed = {**factors, covariate: float(value)} if covariate in nomogram.factors else dict(factors)
    return str(assign_groups(nomogram.risk(changed), bundle.cutoffs["nomogram"])[0])


def imputation_warning(covariate: str, block: Mapping[str, Any]) -> str:
    """The warning of a filled covariate: the fill, and the range of risk and group its true value could give (or
    that this bundle cannot say).

    Parameters
    ----------
    covariate : str
        The filled covariate.
    block : mapping
        Its :func:`imputed_prediction`.

    Returns
    -------
    warning : str
    """
    from NPCPrognosisLib.reporting.labels import factor_name, factor_range_text, factor_unit, factor_value_text

    name = factor_name(covariate)
    text = (f"{name} missing: the training median ({factor_value_text(covariate, block['filled_with'])} "
            f"{factor_unit(covariate)}) was used in its place")
    if block.get("value_range") is None:
        return (text + f"; this bundle stores no training percentiles of {name} (trained before they were kept), so "
                f"how far the missing value could move the prediction is unknown: measure {name}, or retrain")
    risk_low, risk_high = block["risk_range"]
    groups = " or ".join(block["risk_groups"]) + (" throughout" if block["group_determined"] else "")
    # the survival range at each horizon is in the block (``survival_range``) and beside each survival on the sheet
    span = factor_range_text(covariate, block["value_range"])
    text += (f". Across the training cohort's 10th-90th percentile ({span}) the risk score would be {risk_low:.2f} to "
             f"{risk_high:.2f} and the risk group {groups}")
    return text + (f": the group is undetermined until {name} is measured" if not block["group_determined"] else "")


def _factor_texts(ranges: Mapping[str, Sequence[float] | None]) -> dict[str, tuple[str, str | None]]:
    """Each filled covariate's name and training range as the clinician enters it, for the benefit's sentence."""
    from NPCPrognosisLib.reporting.labels import factor_name, factor_range_text

    return {c: (factor_name(c), None if r is None else factor_range_text(c, r)) for c, r in ranges.items()}


def extrapolation_warning(item: Mapping[str, Any]) -> str:
    """The warning of a factor outside its training range, or of a risk score (the factors combined) beyond every
    training patient's: the model extrapolates, so the value (and its unit) or the images behind a score should be
    checked before the numbers are read.

    Parameters
    ----------
    item : mapping
        One entry of :meth:`~NPCPrognosisLib.survival.nomogram.Nomogram.out_of_range`: ``factor``, ``value``,
        ``low`` and ``high``.

    Returns
    -------
    warning : str
    """
    from NPCPrognosisLib.reporting.labels import combined_risk_text, factor_label, factor_value_text
    from NPCPrognosisLib.survival.nomogram import COMBINED_RISK

    factor = item["factor"]
    if factor == COMBINED_RISK:
        text = combined_risk_text(item)
        return (f"{text[:1].upper()}{text[1:]}, though a factor may lie within its own training range; its risk and "
                "survival for this patient are not supported by any training patient; check each value and its unit")
    low, high = (factor_value_text(factor, v) for v in (item["low"], item["high"]))
    check = ("check the value and its unit" if factor in CLINICAL_COVARIATES
             else "check the contours and the images it was computed from")
    return (f"{factor_label(factor)} = {factor_value_text(factor, item['value'])} is outside the training range "
            f"({low} to {high}): the model is extrapolating, and its risk and survival for this patient are not "
            f"supported by any training patient; {check}")


def uncounted_factors(document: dict[str, Any], encoded: dict[str, float]) -> list[str]:
    """Warnings for a patient's clinical factors that every training patient shared with one value (rENE never
    recorded, no EBV DNA): the models left them out, so this patient's other value changes nothing.

    Parameters
    ----------
    document : dict
        The bundle document (``clinical_encoding.constant_in_training``).
    encoded : dict
        The patient's encoded clinical factors (:func:`~NPCPrognosisLib.io.clinical.encode_clinical`).

    Returns
    -------
    warnings : list of str
        One per factor whose value differs from the one every training patient had.
    """
    constant = document["clinical_encoding"].get("constant_in_training") or {}
    return [f"{name} is {encoded[name]:g} but was {value:g} for every training patient: the models could not learn its "
            "effect and do not count it" for name, value in constant.items() if encoded[name] != value]
