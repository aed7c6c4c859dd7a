"""The reporting checklist of the cohort page: the TRIPOD+AI (Collins et al., BMJ 2024) and Radiomics Quality
Score (Lambin et al., Nat Rev Clin Oncol 2017) items that software can answer, each pointing at where the page
answers it, or saying what the user must supply.

Only the items whose answer is in the data the software holds are listed; the rest of each guideline (title,
abstract, funding, ethics, interpretation) is the authors' to write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from NPCPrognosisLib.pipeline.fit import training_findings

#: Keys of the ``--study-info`` file the checklist reads (what only the user knows).
STUDY_INFO_KEYS = ("data_source", "dates", "setting", "eligibility", "outcome_definition", "image_protocol")


@dataclass
class ChecklistItem:
    guideline: str
    item: str
    topic: str
    answered: bool
    answer: str


def _info(study: Mapping[str, Any], *keys: str) -> str | None:
    values = [f"{study[k]}" for k in keys if study.get(k)]
    return "; ".join(values) if values else None


def model_files(document: Mapping[str, Any]) -> str:
    """Where the bundle's model is specified in full: bundle.json, and the weight files only where the bundle has
    them (every bundle was said to carry a network.safetensors, which one without a network has not)."""
    weights = ([f"{document['network'].get('folder', 'network')}/ (the segmentation network, safetensors)"]
               if document.get("network") else [])
    if (document.get("fusion") or {}).get("weights"):
        weights.append(f"{document['fusion']['weights']} (the fusion model)")
    return ("the bundle's bundle.json (coefficients, baseline hazard, cut-off)"
            + (f" and {' and '.join(weights)}" if weights else ""))


def reporting_checklist(metrics: Mapping[str, Any], document: Mapping[str, Any],
                        study: Mapping[str, Any] | None = None) -> list[ChecklistItem]:
    """The checklist rows of one evaluation.

    Parameters
    ----------
    metrics : mapping
        ``metrics.json`` of the evaluation.
    document : mapping
        The bundle document.
    study : mapping, optional
        The user's study information (:data:`STUDY_INFO_KEYS`).

    Returns
    -------
    items : list of ChecklistItem
    """
    study = dict(study or {})
    training = document.get("training") or {}
    optimism = (training.get("optimism_corrected_c") or {}).get("nomogram")
    robustness = document.get("robustness") or {}
    diagnostics = (document.get("signature") or {}).get("diagnostics") or {}
    models = metrics.get("models") or {}
    survival = "c_index" in next(iter(models.values()), {})
    loco = metrics.get("leave_one_centre_out")
    supply = "not available: add it to the --study-info file ({})"
    items = []

    def add(guideline: str, item: str, topic: str, answer: str | None, missing: str) -> None:
        items.append(ChecklistItem(guideline, item, topic, answer is not None, answer if answer else missing))

    add("TRIPOD+AI", "6a", "Source of data and dates", _info(study, "data_source", "dates"),
        supply.format("data_source, dates"))
    add("TRIPOD+AI", "6b", "Setting, centres and eligibility", _info(study, "setting", "eligibility"),
        supply.format("setting, eligibility"))
    endpoint = metrics.get("endpoint", document.get("endpoint", ""))
    add("TRIPOD+AI", "7", "Outcome definition and timing",
        f"{endpoint.upper()}; " + (study.get("outcome_definition") or "time from the start of treatment, months")
        + " (section Cohort)", "")
    add("TRIPOD+AI", "8", "Predictors and their coding",
        "section Selected features and Settings: Rad-score features, clinical coding "
        + str((document.get("selection") or {}).get("clinical_coding", "ordinal")), "")
    add("TRIPOD+AI", "9", "Sample size: patients and events",
        f"training {training.get('n', '?')} patients / {training.get('events', '?')} events; evaluated "
        f"{metrics.get('n', '?')} / {metrics.get('events', '?')} (section Cohort)", "")
    add("TRIPOD+AI", "10", "Missing data and how handled",
        "EBV DNA missing: the training median of log10 copies/mL is used and a warning is printed; patients "
        "without features or outcome are left out and counted in the log (section Cohort: EBV DNA missing)", "")
    findings = training_findings(document)
    add("TRIPOD+AI", "12c", "Model fitting: what the training data forced",
        "; ".join(f"({i}) {finding}" for i, finding in enumerate(findings, 1)) if findings else
        "each model fitted as specified (section Settings); train found nothing to warn about", "")
    add("TRIPOD+AI", "12e", "Internal validation with optimism correction",
        None if not optimism else f"nomogram training C {optimism['apparent']:.3f}, optimism-corrected "
        f"{optimism['corrected']:.3f} over {optimism.get('replicates', '?')} bootstrap replicates (section Settings)",
        "not available: the bundle was trained without the optimism bootstrap")
    add("TRIPOD+AI", "12f", "Discrimination", "section Model comparison (C-index with bootstrap 95% CI, Uno C, "
        "time-dependent AUC)" if survival else "section Model comparison (AUC with DeLong 95% CI)", "")
    add("TRIPOD+AI", "12f", "Calibration", "section Calibration (observed vs predicted by risk group)", "")
    add("TRIPOD+AI", "12g", "Clinical utility (decision curves)",
        "section Decision curves" if survival else None, "not available for binary endpoints on this page")
    add("TRIPOD+AI", "12h", "External or leave-one-centre-out validation",
        None if not loco else "section Leave one centre out", "not available: the manifest names no centres "
        "(add a centre column) - only held-out patients of the same cohort were evaluated")
    add("TRIPOD+AI", "23", "Full model specification", model_files(document), "")
    add("RQS", "1", "Image protocol quality", _info(study, "image_protocol"), supply.format("image_protocol"))
    add("RQS", "2-3", "Feature robustness (segmentation and acquisition)",
        None if not robustness.get("measured") else f"{robustness.get('method', 'ICC')}: "
        f"{robustness.get('features_passing', '?')} of {robustness.get('features_measured', '?')} features with ICC "
        f">= {robustness.get('threshold', '?')} (section Selected features)",
        "not available: the bundle was trained without the robustness study")
    add("RQS", "4", "Phantom study", None, "not available: no phantom scans in this study")
    add("RQS", "6", "Feature reduction and multiple testing",
        None if not diagnostics else f"{diagnostics.get('n_features_in', '?')} features -> univariate "
        f"{diagnostics.get('n_univariate', '?')} -> redundancy {diagnostics.get('n_after_redundancy', '?')} -> "
        f"LASSO-Cox {diagnostics.get('n_selected', '?')} (section Selected features)", "not available")
    add("RQS", "7", "Multivariable analysis with non-radiomics features",
        "the nomogram combines the Rad-score with the clinical factors (section Model comparison)", "")
    add("RQS", "10", "Comparison to the gold standard (clinical model)",
        "clinical model row of section Model comparison" if "clinical" in models else None,
        "not available: no clinical model in this bundle")
    add("RQS", "11", "Potential clinical utility", "section Decision curves" if survival else None,
        "not available for binary endpoints on this page")
    add("RQS", "15", "Validation", "external / leave-one-centre-out (section Leave one centre out)" if loco else
        "internal: held-out patients the bundle never saw", "")
    add("RQS", "16", "Open science", "code open; model as JSON + safetensors; features table as CSV", "")
    return items


def read_study_info(path: str) -> dict[str, Any]:
    """The ``--study-info`` JSON file: an object whose keys are among :data:`STUDY_INFO_KEYS`."""
    import json
    from pathlib import Path

    from NPCPrognosisLib.errors import InputError

    file = Path(path)
    if not file.exists():
        raise InputError("study information file not found", path=file, column="--study-info")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"study information is not valid JSON ({exc})", path=file, column="--study-info",
                         fix='write e.g. {"data_source": "...", "dates": "2010-2015"}') from exc
    unknown = sorted(set(info) - set(STUDY_INFO_KEYS)) if isinstance(info, dict) else ["(not an object)"]
    if unknown:
        raise InputError(f"unknown study information key(s) {unknown}", path=file, column="--study-info",
                         fix=f"use the keys {', '.join(STUDY_INFO_KEYS)}")
    return {k: str(v) for k, v in info.items()}
