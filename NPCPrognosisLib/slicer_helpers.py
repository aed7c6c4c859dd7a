"""What the Slicer module needs from the core, in plain Python so it is tested without Slicer.

The module file (``NPCPrognosis.py``) only moves data between MRML nodes and these functions: the clinical
form becomes a core record here, results become the strings and tables the panel shows here, the
contour-correction report (Dice, volume change, change of risk) is computed here, and the out-of-process job
that runs segmentation/radiomics/prediction lives here. Nothing in this file imports slicer, qt or vtk, and the
module-level imports are standard library only, so Slicer can load the module before heavy packages exist.

Run a job out of process (what the Slicer module does)::

    PythonSlicer -m NPCPrognosisLib.slicer_helpers job.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import LABELS

#: Segment names and conventional display colours (RGB 0-1) of the segmentation contract.
SEGMENTS = (
    {"name": "GTVp", "label": LABELS["gtvp"], "color": (0.86, 0.16, 0.16)},  # primary tumour: red
    {"name": "GTVn", "label": LABELS["gtvn"], "color": (0.20, 0.78, 0.25)},  # metastatic nodes: green
)
SEQUENCES = ("t1", "t2", "t1c")
SEQUENCE_TITLES = {"t1": "T1W", "t2": "T2W", "t1c": "CET1W"}

#: Python distributions the core needs inside Slicer: (distribution, requirement, import name, why).
#: Detected with importlib.metadata (no import), so checking never loads torch into Slicer's process.
DEPENDENCIES = (
    ("torch", "torch>=2.0", "torch", "deep segmentation network"),
    ("monai", "monai>=1.3", "monai", "network layers and sliding-window inference"),
    ("pyradiomics", "pyradiomics>=3.0.1", "radiomics", "radiomics features"),
    ("scikit-survival", "scikit-survival>=0.22", "sksurv", "risk-group log-rank statistics"),
    ("pandas", "pandas>=1.5", "pandas", "feature tables"),
    ("PyYAML", "PyYAML>=6.0", "yaml", "radiomics parameter files"),
    ("safetensors", "safetensors>=0.4", "safetensors", "network weights"),
    ("matplotlib", "matplotlib>=3.6", "matplotlib", "survival plot of the exported report"),
)

#: Defaults of the clinical form; ``ebv_dna`` < 0 means "not measured" (a spin box cannot be empty).
CLINICAL_FORM_DEFAULTS = {"age": 50.0, "sex": "M", "t_stage": "T1", "n_stage": "N0", "ebv_dna": -1.0, "rene": 0,
                          "ldh": 180.0, "chemo": False, "ccnd": 0.0}
T_STAGES = ("T1", "T2", "T3", "T4")
N_STAGES = ("N0", "N1", "N2", "N3")

ENDPOINT_TITLES = {"dmfs": "distant metastasis-free survival", "os": "overall survival",
                   "pfs": "progression-free survival"}


# ---------------------------------------------------------------------------------------------- dependencies
def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _satisfies(installed: str, requirement: str) -> bool:
    """``installed`` meets ``requirement``'s lower bound (the only kind of bound the module declares)."""
    if ">=" not in requirement:
        return True
    wanted = requirement.split(">=", 1)[1].split(",")[0].strip()
    try:
        from packaging.version import Version

        return Version(installed) >= Version(wanted)
    except Exception:  # noqa: BLE001 - packaging missing or an unparsable local version: compare numerically
        return _version_tuple(installed) >= _version_tuple(wanted)


def missing_dependencies(
    dependencies: Sequence[Tuple[str, str, str, str]] = DEPENDENCIES,
    version_of: Optional[Callable[[str], str]] = None,
) -> List[Dict[str, str]]:
    """Dependencies that are absent or too old, found without importing them (importing torch takes seconds)."""
    if version_of is None:
        from importlib import metadata

        def version_of(name: str) -> str:
            return metadata.version(name)

    out = []
    for distribution, requirement, import_name, why in dependencies:
        try:
            installed: Optional[str] = version_of(distribution)
        except Exception:  # noqa: BLE001 - PackageNotFoundError or a broken install: either way, install it
            installed = None
        if installed is None or not _satisfies(installed, requirement):
            out.append({"distribution": distribution, "requirement": requirement, "import": import_name,
                        "why": why, "installed": installed or ""})
    return out


def read_requirements(path: "str | Path") -> List[str]:
    """Requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def install_question(missing: Sequence[Mapping[str, str]]) -> str:
    """The one confirmation the user sees before anything is installed."""
    rows = "\n".join(f"  - {m['requirement']} ({m['why']})" for m in missing)
    return ("NPCPrognosis needs these Python packages, which are not installed in Slicer yet:\n" + rows +
            "\n\nInstall them now? This downloads several hundred MB (PyTorch) and may take minutes.")


OFFLINE_MESSAGE = ("Could not install {packages}: the package index cannot be reached (offline?). Connect to the "
                   "internet and try again, or install them from the Python console with "
                   "slicer.util.pip_install(...).")


# ---------------------------------------------------------------------------------------------- clinical form
def clinical_form_to_values(form: Mapping[str, Any]) -> Dict[str, Any]:
    """Panel values -> the dict :func:`NPCPrognosisLib.clinical.parse_clinical` accepts.

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
        "ccnd": float(values["ccnd"] or 0.0),
    }


def parse_clinical_form(form: Mapping[str, Any], patient_id: Optional[str] = None) -> Any:
    """Validated :class:`~NPCPrognosisLib.clinical.ClinicalRecord` from the panel (raises InputError)."""
    from .clinical import parse_clinical

    return parse_clinical(clinical_form_to_values(form), patient_id)


def clinical_values_to_form(values: Mapping[str, Any]) -> Dict[str, Any]:
    """A clinical record (``clinical.json``, a ClinicalRecord dict or a CSV row) -> panel values."""
    from .clinical import parse_clinical

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
        "ccnd": float(record["ccnd"]),
    }


# ---------------------------------------------------------------------------------------------- formatting
def format_percent(value: Optional[float]) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{100.0 * float(value):.1f} %"


def format_risk(prediction: Mapping[str, Any], uncertainty: Optional[Mapping[str, Any]] = None) -> str:
    """'1.23 ± 0.31 (high risk; cut-off 0.85)' - the score, its standard error when known, and the group."""
    score = float(prediction["risk_score"])
    text = f"{score:.2f}"
    se = None if uncertainty is None else uncertainty.get("risk_se")
    if se is not None and math.isfinite(float(se)):
        text += f" ± {float(se):.2f}"
    return f"{text} ({prediction['risk_group']} risk; cut-off {float(prediction['cutoff']):.2f})"


def format_survival(prediction: Mapping[str, Any]) -> List[str]:
    """One line per reported time point, e.g. 'DMFS at 36 months: 81.2 %'."""
    endpoint = str(prediction.get("endpoint", "")).upper()
    return [f"{endpoint} at {int(float(m))} months: {format_percent(s)}"
            for m, s in sorted(prediction["survival"].items(), key=lambda kv: float(kv[0]))]


def format_nomogram_points(points: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(factor, points) rows, largest contribution first, then the total."""
    per_factor = points.get("per_factor", {})
    rows = [(name, f"{value:.1f}") for name, value in sorted(per_factor.items(), key=lambda kv: -kv[1])]
    rows.append(("total", f"{float(points.get('total', sum(per_factor.values()))):.1f}"))
    return rows


def format_warnings(warnings: Sequence[str]) -> str:
    return "\n".join(f"• {w}" for w in warnings) if warnings else "none"


# ---------------------------------------------------------------------------------------------- contour change
def label_statistics(labels: Any, voxel_volume_ml: float) -> Dict[str, float]:
    """Volume in mL of each segment of a label map."""
    import numpy as np

    array = np.asarray(labels)
    return {s["name"]: float((array == s["label"]).sum()) * float(voxel_volume_ml) for s in SEGMENTS}


def dice(a: Any, b: Any) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty (nothing to disagree on)."""
    import numpy as np

    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def contour_change_report(
    automatic: Any,
    edited: Any,
    voxel_volume_ml: float,
    automatic_prediction: Optional[Mapping[str, Any]] = None,
    edited_prediction: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """What the user's edits changed: per structure Dice and volumes, then the change of risk score and group.

    Both label maps must be on the same grid (the module exports both onto the CET1W geometry).
    """
    import numpy as np

    auto = np.asarray(automatic)
    mine = np.asarray(edited)
    if auto.shape != mine.shape:
        raise ValueError(f"label maps differ in shape {auto.shape} vs {mine.shape}; export both on the CET1W grid")
    structures = {}
    for segment in SEGMENTS:
        a = auto == segment["label"]
        b = mine == segment["label"]
        va = float(a.sum()) * voxel_volume_ml
        vb = float(b.sum()) * voxel_volume_ml
        structures[segment["name"]] = {
            "dice": dice(a, b),
            "volume_automatic_ml": va,
            "volume_edited_ml": vb,
            "volume_change_ml": vb - va,
            "volume_change_percent": (100.0 * (vb - va) / va) if va > 0 else (0.0 if vb == 0 else float("inf")),
        }
    report: Dict[str, Any] = {"structures": structures}
    if automatic_prediction is not None and edited_prediction is not None:
        ra = float(automatic_prediction["risk_score"])
        rb = float(edited_prediction["risk_score"])
        report["risk"] = {
            "automatic": ra, "edited": rb, "change": rb - ra,
            "group_automatic": automatic_prediction["risk_group"], "group_edited": edited_prediction["risk_group"],
            "group_changed": automatic_prediction["risk_group"] != edited_prediction["risk_group"],
        }
    return report


def format_contour_change(report: Mapping[str, Any]) -> List[str]:
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


# ---------------------------------------------------------------------------------------------- model extras
def risk_uncertainty(bundle: Any, factors: Mapping[str, float], deep_score_sd: Optional[float] = None) -> Dict[str, Any]:
    """Standard error of the patient's risk score from the coefficient covariance (delta method).

    A Cox linear predictor has no intercept, so the SE of x'beta itself grows with the distance of x from zero
    (an LDH of 200 U/L carries the LDH coefficient's uncertainty 200 times) and says nothing useful. What matters
    is the contrast with a typical training patient: Var((x - x_ref)'beta), x_ref = the middle of each factor's
    training range (the bundle stores the ranges). It reflects how well the cohort pinned the coefficients, not
    the contours; the deep score's test-time augmentation SD (when the network gave one) is reported beside it.
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    covariance = nomogram.model.covariance
    out: Dict[str, Any] = {"risk_se": None, "deep_score_sd": deep_score_sd,
                           "reference": "middle of the training range of each factor"}
    if covariance is not None:
        x = np.array([float(factors[f]) for f in nomogram.factors])
        reference = (np.asarray(nomogram.low, float) + np.asarray(nomogram.high, float)) / 2.0
        d = x - reference
        variance = float(d @ np.asarray(covariance, float) @ d)
        out["risk_se"] = math.sqrt(variance) if variance >= 0 else None
    return out


def survival_curves(bundle: Any, factors: Mapping[str, float], months: Optional[Sequence[float]] = None,
                    ) -> Dict[str, List[float]]:
    """Columns for the plot: months, this patient's model survival and the reference curves.

    References: the model's curve at the risk-group cut-off (the boundary between the groups), the training
    cohort's Kaplan-Meier curve, and - when the bundle stores each group's median training risk under
    ``cutoffs.nomogram.group_median_risk`` - the low- and high-risk group curves.
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    model = nomogram.model
    if months is None:
        horizon = float(max(72.0, min(120.0, float(np.max(model.baseline_times)) if len(model.baseline_times) else 72.0)))
        months = np.linspace(0.0, horizon, 61)
    grid = np.asarray(months, float)

    def at_risk(risk: float) -> List[float]:
        return [float(v) for v in nomogram.survival_for_risk(risk, grid)]

    columns: Dict[str, List[float]] = {"months": [float(m) for m in grid]}
    columns["this patient"] = [float(v) for v in nomogram.survival(dict(factors), grid)[0]]
    block = bundle.document.get("cutoffs", {}).get("nomogram", {})
    medians = block.get("group_median_risk") if isinstance(block, Mapping) else None
    if medians:
        columns["low-risk group (median)"] = at_risk(float(medians["low"]))
        columns["high-risk group (median)"] = at_risk(float(medians["high"]))
    columns["risk-group cut-off"] = at_risk(float(bundle.cutoffs["nomogram"]))
    training = bundle.document.get("training", {})
    if training.get("time") and training.get("event"):
        from .evaluation import kaplan_meier

        km_t, km_s = kaplan_meier(np.asarray(training["time"], float), np.asarray(training["event"], bool))
        index = np.searchsorted(km_t, grid, side="right") - 1
        km = np.where(index >= 0, km_s[np.clip(index, 0, None)], 1.0)
        km = np.where(grid <= km_t.max(), km, np.nan)
        columns["training cohort (Kaplan-Meier)"] = [float(v) for v in km]
    return columns


def benefit_statement(prediction: Mapping[str, Any]) -> Dict[str, Any]:
    """The chemotherapy-benefit statement with its evidence (computed by the core with the prediction).

    Older bundles (or cores) without benefit evidence get a plain 'not available' instead of an error.
    """
    block = prediction.get("chemo_benefit") or {}
    statement = str(block.get("statement") or "").strip()
    if not statement:
        return {"statement": "Chemotherapy benefit: not available in this bundle.", "evidence": {}}
    return {"statement": statement, "evidence": dict(block.get("evidence") or {})}


def format_evidence(evidence: Mapping[str, Any]) -> str:
    """The numbers behind the benefit statement, one short line (nested blocks are left to the JSON report)."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.3g}")
        elif isinstance(value, (int, str, bool)):
            parts.append(f"{key} {value}")
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            parts.append(f"{key} " + "-".join(f"{float(v):.3g}" for v in value))
    return "; ".join(parts)


def sample_patient_files(folder: "str | Path") -> Dict[str, Path]:
    """The sample patient's files, named either ``t1c.nii.gz`` or ``<folder name>_t1c.nii.gz``."""
    folder = Path(folder)
    out = {}
    for key in (*SEQUENCES, "mask"):
        for candidate in (folder / f"{key}.nii.gz", folder / f"{folder.name}_{key}.nii.gz"):
            if candidate.exists():
                out[key] = candidate
                break
    if (folder / "clinical.json").exists():
        out["clinical"] = folder / "clinical.json"
    return out


# ---------------------------------------------------------------------------------------------- report
def _escape(text: Any) -> str:
    import html

    return html.escape(str(text))


def report_html(result: Mapping[str, Any], plot_png: Optional[str] = None) -> str:
    """A self-contained one-page report of a prediction (and the contour-change report when there is one)."""
    prediction = result["prediction"]
    rows = "".join(f"<tr><td>{_escape(k)}</td><td>{_escape(v)}</td></tr>"
                   for k, v in format_nomogram_points(prediction["nomogram_points"]))
    survival = "".join(f"<li>{_escape(line)}</li>" for line in format_survival(prediction))
    warnings = "".join(f"<li>{_escape(w)}</li>" for w in prediction.get("warnings", [])) or "<li>none</li>"
    clinical = "".join(f"<tr><td>{_escape(k)}</td><td>{_escape(v)}</td></tr>"
                       for k, v in prediction.get("clinical", {}).items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>NPCPrognosis report {_escape(prediction['patient_id'])}</title></head><body>",
        f"<h1>NPCPrognosis: {_escape(prediction['patient_id'])}</h1>",
        "<p><b>Research software, not for clinical use.</b></p>",
        f"<h2>{_escape(ENDPOINT_TITLES.get(prediction['endpoint'], prediction['endpoint']))}</h2>",
        f"<p>Risk score {_escape(format_risk(prediction, result.get('uncertainty')))}</p>",
        f"<ul>{survival}</ul>",
    ]
    if plot_png:
        parts.append(f"<img src='{_escape(plot_png)}' alt='survival curves' width='560'>")
    parts += [f"<h2>Nomogram points</h2><table border='1'>{rows}</table>",
              f"<h2>Chemotherapy benefit</h2><p>{_escape(result.get('benefit', {}).get('statement', 'n/a'))}</p>",
              f"<h2>Clinical factors</h2><table border='1'>{clinical}</table>"]
    change = result.get("contour_change")
    if change:
        lines = "".join(f"<li>{_escape(line)}</li>" for line in format_contour_change(change))
        parts.append(f"<h2>Edited contours vs automatic</h2><ul>{lines}</ul>")
    parts += [f"<h2>Warnings</h2><ul>{warnings}</ul>",
              f"<p>Bundle: {_escape(prediction.get('bundle', {}).get('path', ''))}</p></body></html>"]
    return "\n".join(parts)


def write_survival_png(curves: Mapping[str, Sequence[float]], path: "str | Path", title: str = "") -> Optional[Path]:
    """The survival plot as PNG (matplotlib, headless backend); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    months = curves["months"]
    for name, values in curves.items():
        if name == "months":
            continue
        style = {"linewidth": 2.5, "color": "black"} if name == "this patient" else {"linewidth": 1.2, "alpha": 0.8}
        axes.plot(months, values, label=name, **style)
    axes.set_xlabel("months")
    axes.set_ylabel("survival probability")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(str(path))
    return path


def write_report(result: Mapping[str, Any], out_dir: "str | Path") -> Dict[str, Path]:
    """report.json (everything), survival.png and report.html in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    paths["json"] = out_dir / "report.json"
    paths["json"].write_text(json.dumps(_jsonable(result), indent=2))
    png = None
    if result.get("curves"):
        png = write_survival_png(result["curves"], out_dir / "survival.png",
                                 title=str(result["prediction"].get("endpoint", "")).upper())
        if png is not None:
            paths["png"] = png
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(report_html(result, plot_png=None if png is None else png.name))
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------- jobs
class JobCancelled(Exception):
    """The user pressed Cancel; raised between stages."""


def _progress_writer(out_dir: Path) -> Callable[[float, str], None]:
    """Progress goes to a small JSON file the Slicer module polls (stdout buffering would make it lag)."""
    path = out_dir / "progress.json"

    def report(fraction: float, message: str) -> None:
        tmp = path.with_name(".progress.json.tmp")
        tmp.write_text(json.dumps({"fraction": float(fraction), "message": message, "time": time.time()}))
        os.replace(tmp, path)

    return report


def run_job(job: Mapping[str, Any], progress: Optional[Callable[[float, str], None]] = None,
            cancelled: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
    """One step of the panel (``segment``, ``extract`` or ``predict``) from files, results written to files.

    The same function serves the out-of-process runner (``main``) and the in-process path of headless tests,
    so both give identical numbers. ``job`` keys: action, out_dir, patient_id, images {t1, t2, t1c: path},
    mask (path), bundle (dir), network (dir), clinical (form or record dict), features (path of a previous
    extract's features.json, reused when the mask is unchanged), tta (int).
    """
    import SimpleITK as sitk

    from .imageio import align_patient, read_image, write_image_atomic

    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or _progress_writer(out_dir)
    patient_id = str(job.get("patient_id") or "patient")

    def step(fraction: float, message: str) -> None:
        if cancelled is not None and cancelled():
            raise JobCancelled(message)
        progress(fraction, message)

    action = job["action"]
    step(0.02, "reading images")
    images = {name: read_image(path, patient_id=patient_id, role=name) for name, path in job["images"].items()}
    result: Dict[str, Any] = {"action": action, "patient_id": patient_id}
    if action == "segment":
        from . import segmentation

        step(0.10, "loading the segmentation network")
        model = segmentation.load_network(job["network"])
        step(0.20, "segmenting GTVp and GTVn")
        seg = segmentation.segment_patient(model, images, patient_id=patient_id, tta=int(job.get("tta", 0)))
        write_image_atomic(sitk.Cast(seg.mask, sitk.sitkUInt8), out_dir / "mask.nii.gz")
        result.update({"mask": str(out_dir / "mask.nii.gz"), "deep_score": _maybe_float(seg.deep_score),
                       "deep_score_sd": _maybe_float(seg.deep_score_sd), "volumes_ml": dict(seg.volumes_ml),
                       "warnings": list(seg.warnings)})
        if getattr(seg, "uncertainty", None) is not None:
            write_image_atomic(seg.uncertainty, out_dir / "uncertainty.nii.gz")
            result["uncertainty"] = str(out_dir / "uncertainty.nii.gz")
    elif action in ("extract", "predict"):
        from .models import load_bundle
        from .prediction import predict_patient

        step(0.05, "checking the model bundle")
        bundle = load_bundle(job["bundle"])
        mask = read_image(job["mask"], patient_id=patient_id, role="mask") if job.get("mask") else None
        patient = align_patient(images, mask, patient_id=patient_id)
        if patient.mask is None:
            raise ValueError("no segmentation given: run Segment or choose a segmentation with GTVp (and GTVn)")
        step(0.15, "radiomics (N4 bias correction, normalisation, PyRadiomics)")
        features_path = cached_features(bundle, patient, job.get("features"), out_dir / "features.json")
        features = json.loads(features_path.read_text())["features"]
        result["features"] = str(features_path)
        result["feature_columns"] = list(bundle.document.get("feature_columns") or sorted(features))
        if action == "predict":
            step(0.70, "nomogram and risk group")
            clinical = clinical_form_to_values(job.get("clinical") or {})
            prediction = predict_patient(bundle, patient, clinical, features=features).to_dict()
            result["prediction"] = prediction
            if job.get("reference_mask"):
                step(0.75, "radiomics of the automatic contours (for the change report)")
                reference = align_patient(
                    images, read_image(job["reference_mask"], patient_id=patient_id, role="mask"),
                    patient_id=patient_id)
                # Unedited contours are the automatic ones: their radiomics are the ones just computed.
                previous = job.get("reference_features")
                if not previous or not Path(previous).exists():
                    previous = str(features_path)
                reference_path = cached_features(bundle, reference, previous, out_dir / "reference_features.json")
                reference_features = json.loads(reference_path.read_text())["features"]
                result["reference_features"] = str(reference_path)
                result["reference_prediction"] = predict_patient(bundle, reference, clinical,
                                                                 features=reference_features).to_dict()
            result["uncertainty"] = risk_uncertainty(bundle, prediction["factors"], job.get("deep_score_sd"))
            result["curves"] = survival_curves(bundle, prediction["factors"])
            result["benefit"] = benefit_statement(prediction)
    else:
        raise ValueError(f"unknown job action {action!r}; use segment, extract or predict")
    step(1.0, "done")
    (out_dir / "result.json").write_text(json.dumps(_jsonable(result), indent=1))
    return result


def mask_fingerprint(mask: Any) -> str:
    """SHA-256 of a label map's voxels and geometry: equal fingerprints give equal radiomics."""
    import hashlib

    import SimpleITK as sitk

    digest = hashlib.sha256()
    digest.update(sitk.GetArrayFromImage(sitk.Cast(mask, sitk.sitkUInt8)).tobytes())  # a copy: a view of the
    # temporary Cast image would read freed memory
    digest.update(repr((mask.GetSize(), [round(v, 6) for v in mask.GetOrigin()],
                        [round(v, 6) for v in mask.GetSpacing()],
                        [round(v, 6) for v in mask.GetDirection()])).encode())
    return digest.hexdigest()


def cached_features(bundle: Any, patient: Any, previous: "str | Path | None", out_path: Path) -> Path:
    """Radiomics of ``patient`` - reused from ``previous`` when it was made with the same bundle and contours.

    Radiomics of three sequences take minutes; Predict after Extract (or after an edit that was undone) must not
    recompute them, but any change of contour or bundle must.
    """
    fingerprint = mask_fingerprint(patient.mask)
    bundle_id = str(Path(bundle.path).resolve())
    if previous and Path(previous).exists():
        stored = json.loads(Path(previous).read_text())
        if stored.get("mask_fingerprint") == fingerprint and stored.get("bundle") == bundle_id:
            return Path(previous)
    features = bundle_features(bundle, patient)
    out_path.write_text(json.dumps(_jsonable({"patient_id": patient.patient_id, "bundle": bundle_id,
                                              "mask_fingerprint": fingerprint, "features": features}), indent=1))
    return out_path


def feature_rows(features: Mapping[str, float], document: Mapping[str, Any]) -> List[Tuple[str, float, int]]:
    """(feature, value, used by the Rad-score 0/1) in the bundle's column order - the rows of the table node."""
    columns = list(document.get("feature_columns") or sorted(features))
    used = set((document.get("signature") or {}).get("features") or [])
    rows = []
    for name in columns:
        value = features.get(name)
        rows.append((name, float("nan") if value is None else float(value), 1 if name in used else 0))
    return rows


def bundle_features(bundle: Any, patient: Any) -> Dict[str, float]:
    """Radiomics with exactly the bundle's settings (the numbers the Rad-score was fitted on)."""
    from . import prediction

    # The core keeps this helper private; it is the single place that turns bundle settings into a parameter file.
    return prediction.bundle_features(bundle, patient)


def _maybe_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m NPCPrognosisLib.slicer_helpers job.json``: exit 0 with result.json, 2 with error.json."""
    from .errors import BundleError, InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m NPCPrognosisLib.slicer_helpers job.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if job.get("log_file"):
        # Everything (ITK, PyRadiomics, tqdm) goes to the log at the descriptor level, so a parent that reads the
        # pipe only at the end can never be blocked by a full pipe.
        log = open(job["log_file"], "a")  # noqa: SIM115 - lives as long as the process
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        run_job(job)
    except (InputError, BundleError, ImportError, ValueError) as exc:
        (out_dir / "error.json").write_text(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        print(f"NPCPrognosis {job.get('action')}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
