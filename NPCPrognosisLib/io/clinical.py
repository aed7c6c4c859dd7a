"""Clinical factors: parsing what clinicians write and encoding it as numbers a Cox model can use.

Stage codes, sex and rENE grades arrive as text typed by people ("T2", "t2", "2"); one parser accepts the
spellings seen in practice and refuses anything else with the allowed values, because a silently mis-read stage
changes a patient's predicted survival.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError

CLINICAL_FIELDS = ("age", "sex", "t_stage", "n_stage", "ebv_dna", "rene", "ldh", "chemo", "ccnd")

#: Numeric covariates derived from the clinical record, in the order models use them.
#: EBV DNA enters as log10(copies/mL + 1): its distribution spans five orders of magnitude.
CLINICAL_COVARIATES = ("t_stage", "n_stage", "rene", "male", "log10_ebv_dna", "age", "ldh")
#: Model covariates that may be left empty, with the covariate a training value stands in for (see
#: :func:`encode_clinical`); every other covariate's field is required (the treatment fields, chemo and ccnd, are
#: not covariates and may be empty: no arm is then claimed for the patient).
IMPUTED_COVARIATES = {"ebv_dna": "log10_ebv_dna"}
#: T and N as categories (indicators against T1 and N0): the hazard need not rise by the same step per stage.
STAGE_INDICATORS = ("t_stage_T2", "t_stage_T3", "t_stage_T4", "n_stage_N1", "n_stage_N2", "n_stage_N3")
#: The two codings of the clinical factors ``train`` chooses between by cross-validation (a clinician reads T and
#: N either way); the other factors are the same in both.
CLINICAL_CODINGS = {
    "ordinal": CLINICAL_COVARIATES,
    "categorical": (*STAGE_INDICATORS, *CLINICAL_COVARIATES[2:]),
}

_T_CODES = {"T1": 1, "T2": 2, "T3": 3, "T4": 4, "T4A": 4, "T4B": 4}
_N_CODES = {"N0": 0, "N1": 1, "N2": 2, "N3": 3, "N3A": 3, "N3B": 3}
#: Only letters and words: cohorts code sex 1/0, 1/2 or 0/1 either way round, so a number cannot be read safely.
_SEX_CODES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
#: Smallest cumulative cisplatin/nedaplatin dose (mg/m2) read as one: a single weekly cycle is 30-40 mg/m2, so a
#: dose above 0 and below this is a count of cycles or g/m2, which would put every treated patient in the low-dose arm.
CCND_MIN_DOSE = 10.0
#: What a value of each factor typically looks like, for the advice on a refused one.
_EXAMPLES = {"age": "52", "ldh": "180", "ebv_dna": "2000 (0 when below the detection limit)", "ccnd": "200",
             "rene": "0", "chemo": "1"}


@dataclass
class ClinicalRecord:
    """One patient's clinical factors as entered (validated)."""

    age: float
    sex: str
    t_stage: str
    n_stage: str
    ebv_dna: float | None
    rene: int
    ldh: float
    chemo: int | None = 0
    #: Cumulative cisplatin dose (mg/m2); None when not recorded. A blank is not a zero: training puts a patient
    #: given chemotherapy without a dose in no dose arm (:func:`~NPCPrognosisLib.survival.benefit.assign_arms`),
    #: where a stored 0 would read as the low-dose arm.
    ccnd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "NA", "NaN", "nan", "None")


def _number(value: Any, field: str, patient_id: str | None, *, low: float, high: float, unit: str) -> float:
    if isinstance(value, (bool, np.bool_)) and field != "chemo":
        # a TRUE/FALSE column (a yes/no rENE) would read as grade 1/0, and infiltration (grade 2) as grade 1
        raise InputError(f"{field} must be a number in {unit}, got {value!r}", patient_id=patient_id, column=field,
                         fix=f"enter {field} as a plain number in {unit} (e.g. {_EXAMPLES.get(field, int(low))})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{field} must be a number in {unit}, got {value!r}", patient_id=patient_id, column=field,
            fix=f"enter {field} as a plain number in {unit} (e.g. {_EXAMPLES.get(field, int(low))})",
        ) from None
    if math.isnan(number) or not (low <= number <= high):
        raise InputError(
            f"{field} = {value!r} is outside the plausible range {low:g}-{high:g} {unit}", patient_id=patient_id,
            column=field, fix=f"check the unit of {field} ({unit})",
        )
    return number


def _code(value: Any, codes: Mapping[str, Any], field: str, patient_id: str | None, prefix: str = "") -> Any:
    text = str(value).strip().upper().replace(" ", "")
    # isdecimal, not isdigit: '³' is a digit to Python but no number to float()
    if prefix and text.replace(".", "", 1).isdecimal() and float(text) == int(float(text)):
        text = str(int(float(text)))  # 2.0: a numeric column with a blank cell elsewhere is read as decimals
    if text.isdecimal() and prefix:
        text = prefix + text
    if text == "T0":
        raise InputError("t_stage T0 (no primary tumour found) is not supported: every model reads the primary",
                         patient_id=patient_id, column=field, fix="leave the patient out of this cohort")
    if text not in codes:
        # the 7th edition's T4a/T4b and N3a/N3b are read as T4 and N3, but the advice names the 8th edition's codes
        allowed = ", ".join(sorted({k for k in codes if not k.isdigit() and not k.endswith(("A", "B"))}))
        raise InputError(
            f"unknown {field} code {value!r}", patient_id=patient_id, column=field,
            fix=f"use one of {allowed} (AJCC 8th edition)" if prefix else f"use one of {allowed}",
        )
    return codes[text]


def parse_clinical(values: Mapping[str, Any], patient_id: str | None = None) -> ClinicalRecord:
    """Validate raw clinical values (from a CSV row, the CLI or the Slicer form) into a record."""
    missing = [f for f in ("age", "sex", "t_stage", "n_stage", "rene", "ldh") if _is_missing(values.get(f))]
    if missing:
        raise InputError(
            f"missing clinical value(s): {', '.join(missing)}", patient_id=patient_id, column=missing[0],
            fix="fill in every clinical factor; only ebv_dna may be left empty",
        )
    t_num = _code(values["t_stage"], _T_CODES, "t_stage", patient_id, prefix="T")
    n_num = _code(values["n_stage"], _N_CODES, "n_stage", patient_id, prefix="N")
    rene = _number(values["rene"], "rene", patient_id, low=0, high=2, unit="grade (0, 1 or 2)")
    if rene != int(rene):
        raise InputError(f"rene must be 0, 1 or 2, got {values['rene']!r}", patient_id=patient_id, column="rene",
                         fix="0 = no rENE, 1 = coalescent nodes, 2 = infiltration of adjacent structures")
    if n_num == 0 and rene > 0:
        raise InputError("rene > 0 with N0 disease (no nodes to have extranodal extension)", patient_id=patient_id,
                         column="rene", fix="set rene to 0 for N0 patients or correct the N stage")
    ebv = values.get("ebv_dna")
    chemo = values.get("chemo")
    chemo_flag = None if _is_missing(chemo) else _number(chemo, "chemo", patient_id, low=0, high=1, unit="(0/1)")
    if chemo_flag not in (None, 0, 1):
        raise InputError(f"chemo must be 0 or 1, got {chemo!r}", patient_id=patient_id, column="chemo",
                         fix="1 = chemotherapy given, 0 = radiotherapy alone; the dose goes in ccnd")
    ccnd = values.get("ccnd")
    dose = None if _is_missing(ccnd) else _number(ccnd, "ccnd", patient_id, low=0, high=2000, unit="mg/m2")
    _check_dose(dose, patient_id)
    _check_treatment(chemo_flag, dose, patient_id)
    if chemo_flag is None and dose is not None and dose > 0:
        chemo_flag = 1  # treatment recorded by its dose alone: a cisplatin dose is chemotherapy
    return ClinicalRecord(
        age=_number(values["age"], "age", patient_id, low=1, high=110, unit="years"),
        sex=_code(values["sex"], _SEX_CODES, "sex", patient_id),
        t_stage=f"T{t_num}",
        n_stage=f"N{n_num}",
        ebv_dna=None if _is_missing(ebv) else _number(ebv, "ebv_dna", patient_id, low=0, high=1e9, unit="copies/mL"),
        rene=int(rene),
        ldh=_number(values["ldh"], "ldh", patient_id, low=10, high=10000, unit="U/L"),
        chemo=None if chemo_flag is None else int(chemo_flag),  # not recorded: no arm is claimed for the patient
        ccnd=dose,
    )


def _check_dose(dose: float | None, patient_id: str | None) -> None:
    """Refuse a cumulative dose above 0 and below :data:`CCND_MIN_DOSE` mg/m2: no schedule gives so little, and a
    ccnd column of cycles (2, 3) or g/m2 (0.2) would read as a low dose, below the 160 mg/m2 that divides the arms."""
    if dose is not None and 0 < dose < CCND_MIN_DOSE:
        raise InputError(f"ccnd = {dose:g} mg/m2 is below any cumulative cisplatin/nedaplatin dose (one weekly "
                         "cycle is 30-40 mg/m2): it looks like a number of cycles or g/m2", patient_id=patient_id,
                         column="ccnd", fix="give the cumulative dose in mg/m2 (e.g. 3 cycles of 80 mg/m2 = 240); the "
                                            "number of cycles goes in chemo_cycles")


def _check_treatment(chemo: float | None, dose: float | None, patient_id: str | None) -> None:
    """Refuse radiotherapy alone (``chemo`` 0) with a cisplatin dose: one of the two fields is wrong, and which one
    decides the patient's treatment arm. A dose without a ``chemo`` field is a cohort that records treatment by
    the dose alone, and is accepted."""
    if chemo == 0 and dose is not None and dose > 0:
        raise InputError(f"chemo = 0 (radiotherapy alone) but ccnd = {dose:g} mg/m2 (a cisplatin dose was given)",
                         patient_id=patient_id, column="ccnd",
                         fix="set chemo=1 if chemotherapy was given, or leave ccnd empty (or 0) for radiotherapy "
                             "alone")


def copies_text(copies: float) -> str:
    """'2,400': EBV DNA copies/mL as a whole number with thousands separators, as laboratories report it.

    Why not '2.4e3': scientific notation is misread at the bedside (2.4e3 read as 2.4), and EBV DNA moves the
    risk; every place that shows copies/mL (sheet, terminal, panel, cohort page) goes through this function.
    """
    return f"{float(copies):,.0f}"


def encode_clinical(record: ClinicalRecord, ebv_fill: float | None = None) -> dict[str, float]:
    """Numeric covariates of :data:`CLINICAL_COVARIATES` and the stage indicators of the categorical coding.

    A missing EBV DNA becomes ``ebv_fill`` (the training median of log10 copies, stored in the bundle) so the
    same patient gets the same number at training and prediction time; ``None`` keeps it as NaN.
    """
    log_ebv = float("nan") if record.ebv_dna is None else math.log10(record.ebv_dna + 1.0)
    if record.ebv_dna is None and ebv_fill is not None:
        log_ebv = float(ebv_fill)
    t_num, n_num = int(record.t_stage[1]), int(record.n_stage[1])
    return {
        "t_stage": float(t_num),
        "n_stage": float(n_num),
        "rene": float(record.rene),
        "male": 1.0 if record.sex == "M" else 0.0,
        "log10_ebv_dna": log_ebv,
        "age": float(record.age),
        "ldh": float(record.ldh),
        **{name: float(name.endswith(f"T{t_num}") if name.startswith("t_") else name.endswith(f"N{n_num}"))
           for name in STAGE_INDICATORS},
    }


def imputed_covariates(record: ClinicalRecord) -> list[str]:
    """The covariates of :func:`encode_clinical` that hold a training value instead of this patient's own, so a
    report can say so instead of printing the fill as if it had been measured."""
    return [covariate for field, covariate in IMPUTED_COVARIATES.items() if getattr(record, field) is None]


def estimable_codings(table: Any) -> tuple[dict[str, list[str]], dict[str, float]]:
    """The clinical codings a training cohort can fit, and the factors it cannot.

    A factor that is the same for every training patient (rENE not recorded, so 0 throughout; no EBV DNA at all,
    so the fill value throughout) has no hazard ratio a Cox model can estimate; it is left out of both codings
    rather than failing the fit. The categorical coding needs every T and N category among the patients: an
    absent one has no indicator to estimate, and its patients would be read as the reference category.

    Parameters
    ----------
    table : pandas.DataFrame
        Encoded clinical factors of the training patients
        (:meth:`~NPCPrognosisLib.io.manifest.Manifest.clinical_table`).

    Returns
    -------
    codings : dict of str to list of str
        Each coding the patients can fit (a key of :data:`CLINICAL_CODINGS`) with its columns that vary.
    constant : dict of str to float
        The factors left out, with the one value every training patient had.
    """
    constant = {c: float(table[c].iloc[0]) for c in CLINICAL_COVARIATES
                if len(table) and table[c].nunique(dropna=False) <= 1}
    codings = {"ordinal": [c for c in CLINICAL_COVARIATES if c not in constant]}
    if set(table["t_stage"]) >= {1.0, 2.0, 3.0, 4.0} and set(table["n_stage"]) >= {0.0, 1.0, 2.0, 3.0}:
        codings["categorical"] = [c for c in CLINICAL_CODINGS["categorical"] if c not in constant]
    return codings, constant


def parse_key_values(pairs: list[str]) -> dict[str, str]:
    """``["age=52", "sex=M"]`` → dict; the CLI's ``--clinical`` form."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"clinical value {pair!r} is not of the form name=value", column="--clinical",
                             fix="write e.g. --clinical age=52 sex=M t_stage=T2 n_stage=N1 rene=0 ldh=180")
        key, value = pair.split("=", 1)
        key = key.strip()
        if key not in CLINICAL_FIELDS:
            raise InputError(f"unknown clinical field {key!r}", column="--clinical",
                             fix=f"use the fields {', '.join(CLINICAL_FIELDS)}")
        if key in out:
            raise InputError(f"clinical field {key!r} is given twice ({out[key]!r} and {value.strip()!r})",
                             column="--clinical", fix=f"give {key} once")
        out[key] = value.strip()
    return out
