"""Results as the strings and rows the panel and the report show."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# The panel's contour-change lines and arm names are the patient sheet's.
from NPCPrognosisLib.reporting.labels import (  # noqa: F401
    ARM_LABELS,
    factor_label,
    format_contour_change,
    model_label,
    points_text,
    survival_text,
)


def format_percent(value: float | None) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{100.0 * float(value):.1f} %"


def format_risk(prediction: Mapping[str, Any], uncertainty: Mapping[str, Any] | None = None) -> str:
    """'1.23 ± 0.31 (high risk; cut-off 0.85)' - the score, its standard error when known, and the group as the
    sheet and the terminal say it (:func:`~NPCPrognosisLib.reporting.labels.risk_group_text`: borderline, or
    undetermined without a factor that was filled in)."""
    from NPCPrognosisLib.reporting.labels import risk_group_text

    score = float(prediction["risk_score"])
    text = f"{score:.2f}"
    se = None if uncertainty is None else uncertainty.get("risk_se")
    if se is not None and math.isfinite(float(se)) and float(se) > 0:  # 0: a nomogram without weight, not certainty
        text += f" ± {float(se):.2f}"
    return f"{text} ({risk_group_text(prediction)}; cut-off {float(prediction['cutoff']):.2f})"


def format_group(prediction: Mapping[str, Any]) -> str:
    """The panel's large group label, never firmer than the sheet: 'HIGH', 'HIGH (BORDERLINE)', 'UNDETERMINED'
    when a factor that was filled in could change it, or 'NOT DETERMINED' when the nomogram learned nothing (the risk
    line beside it says why); the decision is the sheet's
    (:func:`~NPCPrognosisLib.reporting.labels.risk_group_standing`)."""
    from NPCPrognosisLib.reporting.labels import risk_group_standing

    standing, _ = risk_group_standing(prediction)
    if standing in ("undetermined", "not determined"):
        return standing.upper()
    group = str(prediction["risk_group"]).upper()
    return f"{group} (BORDERLINE)" if standing == "borderline" else group


def format_survival(prediction: Mapping[str, Any]) -> list[str]:
    """One line per reported time point, e.g. 'DMFS at 36 months: 81.2 %', with what it is worth when the nomogram
    learned nothing (:func:`~NPCPrognosisLib.reporting.labels.survival_caveat`), as the sheet says it."""
    from NPCPrognosisLib.reporting.labels import survival_caveat

    endpoint = str(prediction.get("endpoint", "")).upper()
    caveat = survival_caveat(prediction)
    return [f"{endpoint} at {int(float(m))} months: {format_percent(s)}" + (f" ({caveat})" if caveat else "")
            for m, s in sorted(prediction["survival"].items(), key=lambda kv: float(kv[0]))]


def format_nomogram_points(points: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(factor, points) rows, largest contribution first, then the total: factors and points as the sheet's
    nomogram table names and prints them (:func:`~NPCPrognosisLib.reporting.labels.factor_label`,
    :func:`~NPCPrognosisLib.reporting.labels.points_text`)."""
    per_factor = points.get("per_factor", {})
    rows = [(factor_label(name), points_text(value)) for name, value in sorted(per_factor.items(),
                                                                              key=lambda kv: -kv[1])]
    rows.append(("Total points", points_text(float(points.get("total", sum(per_factor.values()))))))
    return rows


def format_warnings(warnings: Sequence[str]) -> str:
    return "\n".join(f"• {w}" for w in warnings) if warnings else "none"


def benefit_summary(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """The chemotherapy-benefit statement with its evidence (computed by the core with the prediction).

    Older bundles (or cores) without benefit evidence get a plain 'not available' instead of an error.
    """
    block = prediction.get("chemo_benefit") or {}
    statement = str(block.get("statement") or "").strip()
    if not statement:
        return {"statement": "Chemotherapy benefit: not available in this bundle.", "evidence": {}}
    return {"statement": statement, "evidence": dict(block.get("evidence") or {}),
            "arms": format_arms(block.get("survival_by_arm") or {})}


def format_binary(prediction: Mapping[str, Any]) -> list[str]:
    """One line per binary endpoint: probability with its bootstrap 95% interval and the model that gave it, and
    the caveat of a model training could not confirm (:func:`~NPCPrognosisLib.reporting.labels.binary_caveat`)."""
    from NPCPrognosisLib.reporting.labels import binary_caveat

    lines = []
    for name, block in (prediction.get("binary") or {}).items():
        ci = block.get("ci95")
        caveat = binary_caveat(block)
        lines.append(f"{name.replace('_', ' ')} probability {block['probability']:.0%}"
                     + (f" (95% CI {ci[0]:.0%}-{ci[1]:.0%})" if ci else "") + f" [{model_label(block['model'])}]"
                     + (f" ({caveat})" if caveat else ""))
    return lines


def format_fusion(prediction: Mapping[str, Any]) -> list[str]:
    """The fusion model's lines: its risk group (never firmer than the sheet says it:
    :func:`~NPCPrognosisLib.reporting.labels.risk_group_text`) and survival, each task's probability, and per task
    the gate weights (how the experts were mixed for this patient, largest first: not what each modality adds) and,
    from training, each modality's share of the variance of the fused output, with the modalities this patient
    lacked."""
    from NPCPrognosisLib.reporting.labels import risk_group_text, shares_text, survival_caveat

    block = prediction.get("fusion") or {}
    if not block:
        return []
    survival = ", ".join(f"{m} mo {format_percent(s)}" for m, s in block["survival"].items())
    if survival_caveat(block):
        survival += f" ({survival_caveat(block)})"
    lines = [f"Fusion (MMoE): risk {block['risk_score']:.2f} ({risk_group_text(block)}); survival {survival}"]
    for task, probability in block.get("probabilities", {}).items():
        lines.append(f"Fusion {task.replace('_', ' ')} probability {probability:.0%}")
    for task, weights in block.get("gate_weights", {}).items():
        lines.append(f"Gate weights for {task.replace('_', ' ')} (mixing, not contribution): {shares_text(weights)}")
    for task, shares in block.get("training_contributions", {}).items():
        lines.append(f"What moves the fused {task.replace('_', ' ')} output (training variance share): "
                     f"{shares_text(shares)}")
    if block.get("missing_modalities"):
        lines.append("Not available for this patient: " + ", ".join(block["missing_modalities"]))
    return lines


def format_arms(survival_by_arm: Mapping[str, Any]) -> list[str]:
    """One line per treatment arm: counterfactual survival at each month with its 95% interval."""
    lines = []
    for arm, by_month in survival_by_arm.items():
        parts = []
        for month, cell in by_month.items():
            parts.append(f"{month} mo {survival_text(cell)}")
        lines.append(f"{ARM_LABELS.get(arm, arm)}: " + ", ".join(parts))
    return lines


def format_evidence(evidence: Mapping[str, Any]) -> str:
    """The numbers behind the benefit statement in words, one short line (the full model is left to the JSON).

    'CCND > 160 vs ≤ 160 mg/m² in the high-risk group: HR 0.56 (95% CI 0.21 to 1.52); interaction with the risk
    group p = 0.593; 200 bootstrap refits; observational comparison in the training cohort, ...'. Why not the
    ``evidence`` block's keys: a clinician reads 'threshold_mg_m2 160; interaction_p 0.593' as code, and the
    group's hazard ratio (a nested block) was not shown at all. Hazard ratios and intervals are printed as the
    benefit conclusion and the reports print them (:func:`~NPCPrognosisLib.reporting.labels.interval_text`),
    p values as the cohort tables do (:func:`~NPCPrognosisLib.reporting.html.p_value`).

    Parameters
    ----------
    evidence : mapping
        The ``evidence`` of a prediction's ``chemo_benefit``
        (:func:`~NPCPrognosisLib.survival.benefit_patient.patient_benefit`): ``threshold_mg_m2``, ``group_hr`` (the
        high dose against the low dose in the patient's risk group), ``interaction_p``, ``bootstrap_n``, ``note``.

    Returns
    -------
    str
        The line; '' when the block is empty (a benefit that was not estimable).
    """
    from NPCPrognosisLib.reporting.html import p_value
    from NPCPrognosisLib.reporting.labels import interval_text
    from NPCPrognosisLib.survival.benefit import dose_comparison

    parts = []
    threshold, effect = evidence.get("threshold_mg_m2"), evidence.get("group_hr") or {}
    comparison = dose_comparison(threshold) if threshold is not None else ""
    if effect.get("hr") is not None:
        group = f" in the {effect['level']}-risk group" if effect.get("level") else ""
        hr = f"HR {float(effect['hr']):.2f}" + (f" ({interval_text(effect['hr_95ci'])})" if effect.get("hr_95ci")
                                                 else "")
        parts.append(f"{comparison}{group}: {hr}" if comparison else f"{hr}{group}")
    elif comparison:
        parts.append(comparison)
    if evidence.get("interaction_p") is not None:
        p = p_value(evidence["interaction_p"])
        parts.append("interaction with the risk group p " + (p.replace("<", "< ") if p.startswith("<") else f"= {p}"))
    if evidence.get("bootstrap_n") is not None:
        parts.append(f"{int(evidence['bootstrap_n'])} bootstrap refits")
    if evidence.get("note"):
        parts.append(str(evidence["note"]))
    return "; ".join(parts)


def format_benefit(benefit: Mapping[str, Any]) -> str:
    """The panel's chemotherapy-benefit text: the statement, one line per treatment arm and the evidence in
    parentheses (:func:`format_evidence`), from the :func:`benefit_summary` the job returns."""
    evidence = format_evidence(benefit.get("evidence") or {})
    return "\n".join([str(benefit.get("statement") or ""), *(benefit.get("arms") or []),
                      *([f"({evidence})"] if evidence else [])])


def feature_rows(features: Mapping[str, float], document: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(feature, value, used by the Rad-score 0/1) in the bundle's column order - the rows of the table node."""
    columns = list(document.get("feature_columns") or sorted(features))
    used = set((document.get("signature") or {}).get("features") or [])
    rows = []
    for name in columns:
        value = features.get(name)
        rows.append((name, float("nan") if value is None else float(value), 1 if name in used else 0))
    return rows


