"""The one-page patient report (HTML with a survival plot, and everything as JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from NPCPrognosisLib.contract import ENDPOINT_TITLES
from NPCPrognosisLib.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from NPCPrognosisLib.slicer_support.formatting import (
    format_binary,
    format_contour_change,
    format_fusion,
    format_nomogram_points,
    format_risk,
    format_survival,
)


def _escape(text: Any) -> str:
    import html

    return html.escape(str(text))


def report_html(result: Mapping[str, Any], plot_png: str | None = None) -> str:
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
        "".join(f"<p>{_escape(line)}</p>" for line in format_binary(prediction)),
        "".join(f"<p>{_escape(line)}</p>" for line in format_fusion(prediction)),
    ]
    if plot_png:
        parts.append(f"<img src='{_escape(plot_png)}' alt='survival curves' width='560'>")
    parts += [f"<h2>Nomogram points</h2><table border='1'>{rows}</table>",
              f"<h2>Chemotherapy benefit</h2><p>{_escape(result.get('benefit', {}).get('statement', 'n/a'))}</p>"
              + "<ul>" + "".join(f"<li>{_escape(line)}</li>" for line in result.get("benefit", {}).get("arms", []))
              + "</ul>",
              f"<h2>Clinical factors</h2><table border='1'>{clinical}</table>"]
    change = result.get("contour_change")
    if change:
        lines = "".join(f"<li>{_escape(line)}</li>" for line in format_contour_change(change))
        parts.append(f"<h2>Edited contours vs automatic</h2><ul>{lines}</ul>")
    parts += [f"<h2>Warnings</h2><ul>{warnings}</ul>",
              f"<p>Bundle: {_escape(prediction.get('bundle', {}).get('path', ''))}</p></body></html>"]
    return "\n".join(parts)


def write_survival_png(curves: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path | None:
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
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png")
    return Path(path)


def write_report(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """report.json (everything), survival.png and report.html in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["json"] = write_json_atomic(out_dir / "report.json", result)
    png = None
    if result.get("curves"):
        png = write_survival_png(result["curves"], out_dir / "survival.png",
                                 title=str(result["prediction"].get("endpoint", "")).upper())
        if png is not None:
            paths["png"] = png
    paths["html"] = write_text_atomic(out_dir / "report.html",
                                      report_html(result, plot_png=None if png is None else png.name))
    return paths


