"""The clinical form of the panel and the core's clinical record, both ways.

The form stores what widgets can hold (a negative EBV DNA for "not measured", a checkbox for chemotherapy); the
core wants the clinic's meaning (missing EBV DNA, chemo 0/1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Defaults of the clinical form; ``ebv_dna`` < 0 means "not measured" and ``ccnd`` 0 "not recorded" (a spin box
#: cannot be empty).
CLINICAL_FORM_DEFAULTS = {"age": 50.0, "sex": "M", "t_stage": "T1", "n_stage": "N0", "ebv_dna": -1.0, "rene": 0,
                          "ldh": 180.0, "chemo": False, "ccnd": 0.0}
T_STAGES = ("T1", "T2", "T3", "T4")
N_STAGES = ("N0", "N1", "N2", "N3")


# ---------------------------------------------------------------------------------------------- clinical form
def clinical_form_to_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """Panel values -> the dict :func:`NPCPrognosisLib.io.clinical.parse_clinical` accepts.

    The form stores what widgets can hold (a negative EBV DNA for "not measured", a checkbox for chemotherapy);
    the core wants the clinic's meaning (missing EBV DNA, chemo 0/1).
    """
    values = dict(CLINICAL_FORM_DEFAULTS)
    values.update({k: v for k, v in form.items() if k in CLINICAL_FORM_DEFAULTS})
    ebv = values["ebv_dna"]
    ebv_missing = ebv is None or (isinstance(ebv, str) and not ebv.strip()) or float(ebv) < 0
    return {
        "age": float(values["age"]),
        "sex": str(values["sex"]),
        "t_stage": str(values["t_stage"]),
        "n_stage": str(values["n_stage"]),
        "ebv_dna": None if ebv_missing else float(ebv),
        "rene": int(values["rene"]),
        "ldh": float(values["ldh"]),
        "chemo": 1 if values["chemo"] in (True, 1, "1", "true", "True", "yes") else 0,
        "ccnd": float(values["ccnd"]) if values["ccnd"] not in (None, "") and float(values["ccnd"]) > 0 else None,
    }


def parse_clinical_form(form: Mapping[str, Any], patient_id: str | None = None) -> Any:
    """Validated :class:`~NPCPrognosisLib.io.clinical.ClinicalRecord` from the panel (raises InputError)."""
    from NPCPrognosisLib.io.clinical import parse_clinical

    return parse_clinical(clinical_form_to_values(form), patient_id)


def clinical_values_to_form(values: Mapping[str, Any]) -> dict[str, Any]:
    """A clinical record (``clinical.json``, a ClinicalRecord dict or a CSV row) -> panel values."""
    from NPCPrognosisLib.io.clinical import parse_clinical

    record = parse_clinical(values).to_dict()
    return {
        "age": float(record["age"]),
        "sex": record["sex"],
        "t_stage": record["t_stage"],
        "n_stage": record["n_stage"],
        "ebv_dna": -1.0 if record["ebv_dna"] is None else float(record["ebv_dna"]),
        "rene": int(record["rene"]),
        "ldh": float(record["ldh"]),
        "chemo": bool(record["chemo"]),
        "ccnd": float(record["ccnd"] or 0.0),
    }
