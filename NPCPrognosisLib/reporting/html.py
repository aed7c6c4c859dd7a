"""Small HTML building blocks shared by both reports: escaping, tables, figures, print styles.

Pages are plain HTML5 with one inline style sheet and no script, so they open in any browser, print to PDF the
same way and carry nothing that could fail to load (pictures are ``data:`` URIs or files beside the page).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

#: A4 print layout; ``section.page`` starts a new printed page, so a PDF has one page per section.
STYLE = """
@page { size: A4; margin: 12mm; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10.5pt; color: #222;
       max-width: 190mm; margin: 0 auto; }
h1 { font-size: 17pt; margin: 0 0 4px 0; } h2 { font-size: 12.5pt; margin: 12px 0 4px 0; color: #123a5c; }
h3 { font-size: 11pt; margin: 8px 0 3px 0; }
table { border-collapse: collapse; margin: 4px 0 8px 0; font-size: 9pt; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { background: #b00020; color: white; font-weight: bold; padding: 5px 8px; margin: 4px 0; }
.warn { background: #fff4d6; border-left: 4px solid #e0a000; padding: 3px 8px; margin: 4px 0; }
.key { display: flex; gap: 10px; flex-wrap: wrap; }
.cols { display: flex; gap: 14px; align-items: flex-start; }
table.small td { font-size: 7.5pt; word-break: break-all; }
.key div { border: 1px solid #bbb; border-radius: 4px; padding: 4px 10px; }
.key b { font-size: 14pt; display: block; }
.high { color: #b00020; } .low { color: #1f5fa0; }
.small { font-size: 8.5pt; color: #555; }
figure { margin: 4px 0; } figcaption { font-size: 8.5pt; color: #555; }
img { max-width: 100%; height: auto; }
section.page { break-after: page; page-break-after: always; }
section.page:last-of-type { break-after: auto; page-break-after: auto; }
.answered { color: #1b7a1b; } .missing { color: #b00020; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def document(title: str, body: Iterable[str]) -> str:
    """A whole page: doctype, charset, the shared style sheet and the body parts."""
    return "\n".join(["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
                      "<meta name='viewport' content='width=device-width, initial-scale=1'>",
                      f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>", *body, "</body></html>"])


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
          css: str = "") -> str:
    """An HTML table; ``numeric`` right-aligns columns of numbers."""
    parts = [f"<table class='{esc(css)}'>" if css else "<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for k, cell in enumerate(row):
            cls = " class='num'" if numeric is not None and k < len(numeric) and numeric[k] else ""
            cells.append(f"<td{cls}>{esc(cell)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def figure(src: str, alt: str, caption: str = "", width: str = "100%", max_height_mm: float | None = None) -> str:
    """An image (``data:`` URI or a path relative to the page) with its caption; ``max_height_mm`` caps its printed
    height (its width then follows), so a section keeps to its page."""
    text = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    style = f"width:{esc(width)}" if max_height_mm is None else \
        f"max-height:{max_height_mm:.0f}mm; width:auto; max-width:100%"
    return f"<figure><img src='{esc(src)}' alt='{esc(alt)}' style='{style}'>{text}</figure>"


def bullet_list(items: Iterable[str], css: str = "") -> str:
    items = list(items)
    if not items:
        return ""
    cls = f" class='{esc(css)}'" if css else ""
    return f"<ul{cls}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def _table_number(value: Any, shown: Callable[[float], str]) -> str:
    """``shown(number)`` for a number; None and NaN as an en dash, anything else as its text."""
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if number != number else shown(number)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers as a table shows them; None and NaN as an en dash."""
    return _table_number(value, lambda number: f"{number:.{digits}f}")


def fmt_significant(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant digits, never in scientific notation ('0.241', '0.00599', '1230'); None
    and NaN as an en dash, as :func:`fmt`.

    Why besides :func:`fmt`: a fixed number of decimals turns a small coefficient into 0.006 or 0.000, and a
    number's full float repr (0.24131684499876363) claims a precision no cohort gives.
    """
    return _table_number(value, lambda number: np.format_float_positional(
        number + 0.0, precision=digits, unique=False, fractional=False, trim="-"))


def p_value(value: Any) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value != value:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"
