"""Chemotherapy benefit by risk group: does a cumulative platinum dose above a threshold help this kind of patient?

The evidence for intensified chemotherapy in NPC is that it helps high-risk patients and mostly adds toxicity for
low-risk ones (e.g. CCND > 160 mg/m2 in high-risk T1-2N1 disease). The bundle therefore stores, per risk group of
the training cohort, the hazard ratio of CCND above the threshold with its CI; a patient's statement quotes the
estimate of their own group. It is observational evidence from the training cohort, and the statement says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CCND_THRESHOLD = 160.0  # mg/m2


def _group_effect(time: np.ndarray, event: np.ndarray, treated: np.ndarray) -> dict[str, Any]:
    from NPCPrognosisLib.survival.cox import fit_cox

    block: dict[str, Any] = {"n": int(len(time)), "n_above": int(treated.sum()), "events": int(event.sum())}
    if treated.sum() < 3 or (~treated).sum() < 3 or event.sum() < 3:
        block["estimable"] = False
        block["reason"] = "too few patients or events on one side of the threshold"
        return block
    model = fit_cox(treated.astype(float)[:, None], time, event, covariates=["ccnd_above"], ties="efron")
    row = model.summary()[0]
    block.update({"estimable": True, "hr": row["hr"], "hr_95ci": row["hr_95ci"], "p": row["p"]})
    return block


def fit_benefit(time: Sequence[float], event: Sequence[bool], ccnd: Sequence[float], groups: Sequence[str],
                threshold: float = CCND_THRESHOLD) -> dict[str, Any]:
    """Per risk group, the HR of CCND > threshold vs <= threshold (training cohort); JSON-able."""
    time, event = np.asarray(time, float), np.asarray(event, bool)
    treated = np.asarray(ccnd, float) > threshold
    groups = np.asarray(groups)
    return {"threshold_mg_m2": threshold,
            "groups": {g: _group_effect(time[groups == g], event[groups == g], treated[groups == g])
                       for g in ("high", "low")},
            "note": "observational association in the training cohort, not a randomised comparison"}


def benefit_statement(risk_group: str, survival: Mapping[str, float], evidence: Mapping[str, Any] | None,
                      t_stage: str = "", n_stage: str = "") -> dict[str, Any]:
    """A sentence for the clinician plus the numbers behind it.

    The absolute gain assumes the patient's predicted survival corresponds to the lower dose and applies the
    group's hazard ratio: S_above(t) = S(t) ** HR.
    """
    if not evidence or risk_group not in evidence.get("groups", {}):
        return {"statement": "Chemotherapy-benefit evidence is not available in this bundle.", "evidence": None}
    threshold = evidence["threshold_mg_m2"]
    block = evidence["groups"][risk_group]
    subgroup = " (T1-2N1, the subgroup where this question is most debated)" if (
        t_stage in ("T1", "T2") and n_stage == "N1") else ""
    if not block.get("estimable"):
        return {"statement": f"{risk_group.capitalize()}-risk patient{subgroup}: the training cohort has too "
                             "little data "
                             f"to estimate the effect of CCND > {threshold:g} mg/m2.", "evidence": dict(block)}
    hr, (lo, hi), p = block["hr"], block["hr_95ci"], block["p"]
    gain = {m: float(s ** hr - s) for m, s in survival.items() if s is not None and 0 < s < 1}
    significant = hi < 1.0
    if significant:
        gains = ", ".join(f"{int(float(m))} mo {g:+.1%}" for m, g in gain.items())
        text = (f"{risk_group.capitalize()}-risk patient{subgroup}: in the training cohort's {risk_group}-risk group, "
                f"CCND > {threshold:g} mg/m2 was associated with HR {hr:.2f} (95% CI {lo:.2f}-{hi:.2f}, p = {p:.2g}); "
                f"estimated absolute survival gain {gains}. A cumulative dose above {threshold:g} mg/m2 may benefit "
                f"this patient.")
    else:
        text = (f"{risk_group.capitalize()}-risk patient{subgroup}: no benefit of CCND > {threshold:g} mg/m2 was shown "
                f"in the training cohort's {risk_group}-risk group (HR {hr:.2f}, 95% CI {lo:.2f}-{hi:.2f}, "
                f"p = {p:.2g}); intensification may add toxicity without benefit.")
    text += " Observational evidence, not a randomised comparison."
    return {"statement": text, "evidence": {**dict(block), "threshold_mg_m2": threshold, "absolute_gain": gain,
                                            "benefit_shown": bool(significant)}}


