"""Readable names, units and tick labels for the factors and clinical fields the reports show.

The bundle and ``prediction.json`` use code names (``log10_ebv_dna``, ``rene``, ``male``); a clinician reads
"EBV DNA (copies/mL)" and "rENE grade". One table here, so every report says the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from NPCPrognosisLib.io.clinical import copies_text
from NPCPrognosisLib.radiomics.features_table import LOG_VOLUME_COLUMNS
from NPCPrognosisLib.survival.nomogram import COMBINED_RISK

#: Nomogram factors: readable label with unit.
FACTOR_LABELS: dict[str, str] = {
    "rad_score": "Rad-score",
    "deep_score": "Deep score",
    "t_stage": "T stage",
    "n_stage": "N stage",
    "rene": "rENE grade",
    "male": "Sex",
    "log10_ebv_dna": "EBV DNA (copies/mL)",
    "age": "Age (years)",
    "ldh": "LDH (U/L)",
    LOG_VOLUME_COLUMNS["gtvp"]: "GTVp volume (mL)",
    LOG_VOLUME_COLUMNS["gtvn"]: "GTVn volume (mL)",
    COMBINED_RISK: "Risk score (all factors combined)",
}

#: Log tumour volumes are coded log(1 + mL) (:func:`NPCPrognosisLib.radiomics.features_table.tumour_volumes`); a
#: reader sees millilitres.
_VOLUME_FACTORS = tuple(LOG_VOLUME_COLUMNS.values())
_VOLUME_TICKS_ML = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)

#: Fields of a clinical record as the user entered them.
CLINICAL_LABELS: dict[str, str] = {
    "age": "Age (years)",
    "sex": "Sex",
    "t_stage": "T stage",
    "n_stage": "N stage",
    "ebv_dna": "EBV DNA (copies/mL)",
    "rene": "rENE grade",
    "ldh": "LDH (U/L)",
    "chemo": "Chemotherapy arm",
    "ccnd": "Cumulative cisplatin dose (mg/m²)",
}

#: Treatment arms of the chemotherapy-benefit model.
ARM_LABELS: dict[str, str] = {"rt_alone": "radiotherapy alone", "low_dose": "CCND low dose",
                              "high_dose": "CCND high dose"}

#: Model names of the bundle as a reader says them.
MODEL_LABELS: dict[str, str] = {
    "nomogram": "Nomogram (combined factors)",
    "radiomics_nomogram": "Radiomics nomogram (Rad-score + clinical)",
    "radiomics": "Rad-score alone",
    "clinical": "Clinical factors alone",
    "volume": "Tumour volume alone",
    "combined": "Rad-score + clinical",
    "stacked": "Stacked models (weighted by cross-validation)",
    "ridge": "Ridge logistic (clinical + every original-image feature)",
    "ensemble": "Ensemble (mean of every model)",
    "classifier_logistic": "Logistic regression (clinical + signature features)",
    "classifier_svm": "Support vector machine (clinical + signature features)",
    "classifier_random_forest": "Random forest (clinical + signature features)",
    "classifier_gradient_boosting": "Gradient boosting (clinical + signature features)",
    "classifier_knn": "k nearest neighbours (clinical + signature features)",
    "deep": "Deep score alone",
    "mmoe": "Multimodal fusion (MMoE)",
}


def factor_label(name: str) -> str:
    """'EBV DNA (copies/mL)' for ``log10_ebv_dna``; stage indicators read 'T stage = T3'; unknown names keep
    their own spelling with spaces."""
    if name in FACTOR_LABELS:
        return FACTOR_LABELS[name]
    for prefix, title in (("t_stage_", "T stage"), ("n_stage_", "N stage")):
        if name.startswith(prefix):
            return f"{title} = {name[len(prefix):]}"
    return name.replace("_", " ")


def factor_name(name: str) -> str:
    """A factor's label without its unit ('EBV DNA' for ``log10_ebv_dna``), for sentences about the factor."""
    return factor_label(name).split(" (")[0]


def factor_unit(name: str) -> str:
    """A factor's unit as its label gives it ('copies/mL' for ``log10_ebv_dna``); '' when it has none."""
    return factor_label(name)[len(factor_name(name)):].strip(" ()")


def model_label(name: str) -> str:
    return MODEL_LABELS.get(name, name.replace("_", " "))


def model_phrase(name: str) -> str:
    """A model as a sentence names it: 'the nomogram', 'the multimodal fusion (MMoE)'."""
    label = "nomogram" if name == "nomogram" else model_label(name)
    return f"the {label[:1].lower()}{label[1:]}"


def ebv_copies(log_value: float) -> float:
    """Copies/mL from the coded ``log10(copies + 1)``."""
    return max(0.0, 10.0 ** float(log_value) - 1.0)


def points_text(points: float, decimals: int = 1) -> str:
    """Nomogram points as a table or chart prints them: ``decimals`` places, and '0' for a factor that earns none.

    Why: a factor at its favourable end earns -0.0 in floating point (a coefficient times 0 when the coefficient is
    negative), and '-0.0' reads as if the factor lowered the total.
    """
    value = round(float(points), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return "0" if value == 0 else f"{value:.{decimals}f}"


#: How a report shows a factor the patient lacked and the training median stood in for: the number used is not
#: this patient's, and printed bare beside measured ones it would read as if it had been measured.
IMPUTED_VALUE_TEXT = "not measured (training median imputed)"


def factor_value_text(name: str, value: float, imputed: bool = False) -> str:
    """A coded factor value as the clinician entered it: 'T3', 'N1', 'male', '4,600' copies/mL, '52', '12.5' mL;
    :data:`IMPUTED_VALUE_TEXT` when ``imputed`` (the value is the training fill, not the patient's)."""
    if imputed:
        return IMPUTED_VALUE_TEXT
    value = float(value)
    if name == "t_stage":
        return f"T{int(round(value))}"
    if name == "n_stage":
        return f"N{int(round(value))}"
    if name == "male":
        return "male" if value >= 0.5 else "female"
    if name == "rene":
        return f"{int(round(value))}"
    if name == "log10_ebv_dna":
        return copies_text(ebv_copies(value))
    if name in ("age", "ldh"):
        return f"{value:.0f}"
    if name in _VOLUME_FACTORS:
        return f"{math.expm1(value):.1f}"
    return f"{value:.2f}"


def factor_range_text(name: str, value_range: Sequence[float]) -> str:
    """'1,200-45,000 copies/mL': a coded factor's range as the clinician enters its values, with the unit; the
    training 10th-90th percentile of a filled-in factor is shown so wherever a missing value's effect is stated."""
    unit = factor_unit(name)
    low, high = (factor_value_text(name, v) for v in value_range)
    return f"{low}-{high}" + (f" {unit}" if unit else "")


def factor_ticks(name: str, low: float, high: float) -> list[tuple[float, str]]:
    """Tick positions (coded values) and labels for a factor's axis over its training range.

    Categorical factors get one tick per category, EBV DNA one per decade of copies/mL, tumour volumes round
    numbers of mL (1, 2, 5, 10, ...), other continuous factors about five round numbers.
    """
    low, high = float(low), float(high)
    if name in ("t_stage", "n_stage", "rene", "male") or name.startswith(("t_stage_", "n_stage_")):
        return [(float(v), factor_value_text(name, v) if not name.startswith(("t_stage_", "n_stage_"))
                 else ("yes" if v else "no")) for v in range(int(math.ceil(low)), int(math.floor(high)) + 1)]
    if name == "log10_ebv_dna":
        ticks = [(math.log10(c + 1.0), copies_text(c)) for c in [0.0] + [10.0 ** k for k in range(1, 9)]]
        return [(v, t) for v, t in ticks if low - 1e-9 <= v <= high + 1e-9]
    if high <= low:
        return [(low, factor_value_text(name, low))]
    if name in _VOLUME_FACTORS:
        ticks = [(math.log1p(ml), f"{ml:g}") for ml in _VOLUME_TICKS_ML]
        ticks = [(v, t) for v, t in ticks if low - 1e-9 <= v <= high + 1e-9]
    else:
        from matplotlib.ticker import MaxNLocator

        values = [v for v in MaxNLocator(nbins=5).tick_values(low, high) if low - 1e-9 <= v <= high + 1e-9]
        ticks = [(float(v), f"{v:g}") for v in values]
    # the axis spans the whole training range, so its favourable end (0 points) is drawn whatever the round numbers
    ends = [(v, factor_value_text(name, v)) for v in (low, high) if all(abs(v - t) > 1e-9 for t, _ in ticks)]
    return sorted(ticks + ends)


def survival_text(cell: Mapping[str, Any]) -> str:
    """'90% (85%-95%)': a survival probability with its 95% interval when it has one."""
    ci = cell.get("ci95")
    return f"{cell['survival']:.0%}" + (f" ({ci[0]:.0%}-{ci[1]:.0%})" if ci else "")


#: The risk group ``prediction.json`` records when the nomogram learned nothing in training: the group its score
#: falls in (every patient's, for a nomogram without weight) would read as this patient's.
GROUP_NOT_DETERMINED = "not determined"


def risk_group_text(prediction: Mapping[str, Any]) -> str:
    """The risk group as a report prints it, never firmer than the prediction allows.

    'not determined: the nomogram carries no weight (...)' when the model learned nothing in training (the
    nomogram, or the model a block names by its ``model``, e.g. the fusion's);
    'undetermined without EBV DNA (low at the training median, low or high across its 10th-90th percentile)' when
    a filled-in factor could change the group; 'high risk (borderline: the 95% interval of the score spans the
    cut-off)' when the score's interval reaches across the cut-off; otherwise 'high risk'.
    """
    group = str(prediction["risk_group"])
    standing, block = risk_group_standing(prediction)
    if standing == "not determined":
        return f"{GROUP_NOT_DETERMINED}: {unproven_text(block, prediction.get('model', 'nomogram'))}"
    if standing == "undetermined":
        return (f"{block['risk_group']} ({group} at the training median, {' or '.join(block['risk_groups'])} "
                "across its 10th-90th percentile)")
    if standing == "borderline":
        return f"{group} risk (borderline: the 95% interval of the score spans the cut-off)"
    return f"{group} risk"


def risk_group_standing(prediction: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """How firmly a prediction places its patient in the risk group, decided once for every place that shows it
    (the sheet, the terminal, the panel's large label), so none says it more firmly than another.

    Parameters
    ----------
    prediction : mapping
        A ``prediction.json`` record, or its ``fusion`` block: its ``unproven`` block (what the model failed to
        learn in training), its ``imputed`` blocks (one per filled-in factor) and ``borderline``.

    Returns
    -------
    tuple of (str, mapping or None)
        ``('not determined', block)`` when the nomogram learned nothing (``block``: the ``unproven`` record, which
        says why); else ``('undetermined', block)`` when a filled-in factor could change the group (``block``: the
        first such factor's ``imputed`` entry, which names it); else ``('borderline', None)`` when the score's 95%
        interval spans the cut-off; else ``('firm', None)``. A nomogram that learned nothing comes first: no factor
        of the patient can make its group mean something; then undetermined: a group a missing factor may change is
        not made firmer by its score's interval.
    """
    if prediction.get("unproven"):
        return GROUP_NOT_DETERMINED, prediction["unproven"]
    for block in (prediction.get("imputed") or {}).values():
        if block.get("group_determined") is False:
            return "undetermined", block
    return ("borderline", None) if prediction.get("borderline") else ("firm", None)


def unproven_text(block: Mapping[str, Any], model: str = "nomogram") -> str:
    """Why a model that learned nothing determines no group, from its ``unproven`` record
    (:func:`~NPCPrognosisLib.pipeline.predict.unproven_nomogram`): without weight every patient has the same risk;
    at or below chance (optimism-corrected, or the fusion's out-of-fold C) its ranking of new patients is
    unproven."""
    if block.get("no_weight"):
        return f"{model_phrase(model)} carries no weight (every patient gets the same risk)"
    kind, key = (("optimism-corrected", "corrected_c") if block.get("corrected_c") is not None
                 else ("out-of-fold", "out_of_fold_c"))
    return f"{model_phrase(model)} is unproven ({kind} training C-index {float(block[key]):.2f}; 0.5 is chance)"


def survival_caveat(prediction: Mapping[str, Any]) -> str:
    """What a survival figure of this prediction (or of its ``fusion`` block) is worth when the model learned
    nothing, for the label beside it: without weight it is the training cohort's average (every patient's), not this
    patient's; at or below chance, unproven. '' when the model learned something."""
    block = prediction.get("unproven") or {}
    if not block:
        return ""
    if block.get("no_weight"):
        return "the training cohort's average, not this patient's"
    return f"unproven: {model_phrase(prediction.get('model', 'nomogram'))} ranks new patients no better than chance"


def binary_caveat(block: Mapping[str, Any]) -> str:
    """What one patient's probability of a binary endpoint (a ``binary`` block of ``prediction.json``) is worth when
    training could not confirm that its model learned anything, for the label beside it; '' otherwise.

    Why: the ridge that predicts the training rate for every patient (its ``warnings``,
    :func:`~NPCPrognosisLib.classification.ridge.ridge_warning`) or whose AUC permuted labels reached
    (``no_better_than_chance``) still gives a number that reads like this patient's; the sheet and the panel show it
    with this caveat, and the reasons among the prediction's warnings.
    """
    if block.get("warnings") or block.get("no_better_than_chance"):
        return "unproven: training confirmed nothing the model learned, see the warnings"
    return ""


def interval_text(interval: Sequence[float], spec: str = ".2f", sep: str = " to ") -> str:
    """'95% CI 0.12 to 0.64' (``spec`` formats each end, ``sep`` joins them).

    An interval of zero width (a nomogram without weight has no coefficient to be uncertain about) is '95% CI not
    estimable', never '0.00 to 0.00', which would read as a number known exactly.
    """
    low, high = (float(v) for v in interval)
    return "95% CI not estimable" if high <= low else f"95% CI {low:{spec}}{sep}{high:{spec}}"


def risk_interval_text(prediction: Mapping[str, Any]) -> str:
    """'95% CI -0.12 to 0.64, cut-off 0.25': the score's interval (:func:`interval_text`) beside the group; '' when
    unknown."""
    ci = (prediction.get("uncertainty") or {}).get("risk_ci95")
    return f"{interval_text(ci)}, cut-off {float(prediction['cutoff']):.2f}" if ci else ""


def out_of_range_value_text(item: Mapping[str, Any]) -> str:
    """'105 (training 25 to 71)': a factor's value outside its training range, with that range, as the clinician
    enters values (one entry of :meth:`~NPCPrognosisLib.survival.nomogram.Nomogram.out_of_range`)."""
    name = item["factor"]
    return (f"{factor_value_text(name, item['value'])} (training {factor_value_text(name, item['low'])} to "
            f"{factor_value_text(name, item['high'])})")


def combined_risk_text(item: Mapping[str, Any]) -> str:
    """What the :data:`~NPCPrognosisLib.survival.nomogram.COMBINED_RISK` entry of
    :meth:`~NPCPrognosisLib.survival.nomogram.Nomogram.out_of_range` means, for a clinician: each factor may be
    ordinary, their combination is not.

    Parameters
    ----------
    item : mapping
        ``value`` (the patient's risk score), ``low`` and ``high`` (the training patients' lowest and highest).

    Returns
    -------
    str
    """
    return (f"the combination of this patient's factors gives a risk beyond any training patient's (risk score "
            f"{item['value']:.2f}, training {item['low']:.2f} to {item['high']:.2f}): the model is extrapolating")


def extrapolation_text(prediction: Mapping[str, Any]) -> str | None:
    """The headline of a prediction made outside the training range ('EXTRAPOLATING: Age (years) 105 (training
    25 to 71) ...', or the combination of the factors beyond every training patient's risk), in words for the top
    of a sheet and the terminal; None when the patient lies within every range."""
    items = prediction.get("out_of_range") or []
    if not items:
        return None
    factors = [i for i in items if i["factor"] != COMBINED_RISK]
    values = "; ".join(f"{factor_label(i['factor'])} {out_of_range_value_text(i)}" for i in factors)
    parts = [f"{values} outside the training range"] if factors else []
    parts += [combined_risk_text(i) for i in items if i["factor"] == COMBINED_RISK]
    return (f"EXTRAPOLATING: {'; '.join(parts)}. The model has seen no such patient and the risk and survival given "
            "for this patient are not reliable: check each value and its unit before reading them.")


def clinical_value_text(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not given"
    if name == "sex":
        return {"M": "male", "F": "female"}.get(str(value), str(value))
    if name == "ebv_dna":
        return copies_text(float(value))
    if name == "chemo":
        return {0: "radiotherapy alone", 1: "chemoradiotherapy"}.get(int(value), str(value)) \
            if str(value).lstrip("-").isdigit() else str(value)
    return str(value)


def clinical_rows(clinical: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of a clinical record, in the label table's order, then anything else it holds."""
    rows = [(label, clinical_value_text(key, clinical[key])) for key, label in CLINICAL_LABELS.items()
            if key in clinical]
    rows += [(key.replace("_", " "), str(value)) for key, value in clinical.items() if key not in CLINICAL_LABELS]
    return rows


def format_contour_change(report: Mapping[str, Any]) -> list[str]:
    """What the radiologist's edits changed, one line per structure and one for the risk."""
    lines = []
    for name, s in report["structures"].items():
        pct = s["volume_change_percent"]
        pct_text = "new" if pct == float("inf") else f"{pct:+.1f} %"
        lines.append(f"{name}: Dice {s['dice']:.3f}; volume {s['volume_automatic_ml']:.2f} -> "
                     f"{s['volume_edited_ml']:.2f} mL ({pct_text})")
    risk = report.get("risk")
    if risk:
        group = (f"group changed {risk['group_automatic']} -> {risk['group_edited']}" if risk["group_changed"]
                 else f"group unchanged ({risk['group_edited']})")
        lines.append(f"risk score {risk['automatic']:.2f} -> {risk['edited']:.2f} ({risk['change']:+.2f}); {group}")
    return lines


def shares_text(shares: Mapping[str, float]) -> str:
    """Modalities with their shares (gate weights or contributions), largest first: 'pathology 62%, clinical 30%'."""
    return ", ".join(f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]))
