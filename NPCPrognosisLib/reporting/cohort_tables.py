"""The cohort study's tables: baseline characteristics by split and the model comparison, as DataFrames that
become both an HTML table and a CSV."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.io.clinical import copies_text
from NPCPrognosisLib.reporting.html import fmt, fmt_significant, p_value
from NPCPrognosisLib.reporting.labels import model_label


def _median_iqr(values: pd.Series, text: Callable[[float], str] = "{:.0f}".format) -> str:
    """'52 (45-60)': median (IQR), each number written by ``text`` (EBV DNA: :func:`copies_text`)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{text(q2)} ({text(q1)}-{text(q3)})"


def _counts(values: pd.Series, levels: Sequence[str]) -> list[tuple[str, str]]:
    values = values.astype(str)
    n = max(len(values), 1)
    return [(level, f"{int((values == level).sum())} ({100.0 * (values == level).sum() / n:.0f}%)")
            for level in levels]


def cohort_characteristics(table: pd.DataFrame, split: Sequence[str], endpoint: str) -> pd.DataFrame:
    """Baseline characteristics per split (training / evaluated): n, age, sex, T, N, rENE, EBV DNA, LDH,
    events and median follow-up, as papers tabulate them (median (IQR) or n (%)).

    Parameters
    ----------
    table : pandas.DataFrame
        The manifest table (clinical columns and outcomes) of every patient shown.
    split : sequence of str
        Each row's split label.
    endpoint : str
        The endpoint whose events and follow-up are shown.

    Returns
    -------
    characteristics : pandas.DataFrame
        ``characteristic`` then one column per split.
    """
    split = np.asarray(split, dtype=object)
    columns: dict[str, list[tuple[str, str]]] = {}
    for name in [s for s in ("training", "evaluated") if s in set(split)] + sorted(set(split) - {"training",
                                                                                                   "evaluated"}):
        rows = table[split == name]
        out = [("Patients", f"{len(rows)}")]
        if "age" in rows:
            out.append(("Age, years, median (IQR)", _median_iqr(rows["age"])))
        if "sex" in rows:
            out += [(f"Sex {k}", v) for k, v in _counts(rows["sex"].astype(str).str.upper().str[:1], ["M", "F"])]
        if "t_stage" in rows:
            out += [(f"T stage {k}", v) for k, v in _counts(rows["t_stage"].astype(str).str.upper(),
                                                            ["T1", "T2", "T3", "T4"])]
        if "n_stage" in rows:
            out += [(f"N stage {k}", v) for k, v in _counts(rows["n_stage"].astype(str).str.upper(),
                                                            ["N0", "N1", "N2", "N3"])]
        if "rene" in rows:
            out += [(f"rENE grade {k}", v) for k, v in _counts(
                pd.to_numeric(rows["rene"], errors="coerce").fillna(-1).astype(int).astype(str), ["0", "1", "2"])]
        if "ebv_dna" in rows:
            ebv = pd.to_numeric(rows["ebv_dna"], errors="coerce")
            out.append(("EBV DNA, copies/mL, median (IQR)", _median_iqr(ebv, copies_text)))
            out.append(("EBV DNA missing", f"{int(ebv.isna().sum())}"))
        if "ldh" in rows:
            out.append(("LDH, U/L, median (IQR)", _median_iqr(rows["ldh"])))
        event_col, time_col = f"{endpoint}_event", f"{endpoint}_time"
        if event_col in rows and time_col in rows:
            events = pd.to_numeric(rows[event_col], errors="coerce").fillna(0) > 0
            out.append((f"{endpoint.upper()} events", f"{int(events.sum())} ({100.0 * events.mean():.0f}%)"
                        if len(rows) else "0"))
            follow = pd.to_numeric(rows.loc[~events, time_col], errors="coerce")
            out.append(("Follow-up of event-free patients, months, median (IQR)", _median_iqr(follow)))
        columns[name] = out
    if not columns:
        return pd.DataFrame({"characteristic": []})
    labels = [k for k, _ in next(iter(columns.values()))]
    frame = pd.DataFrame({"characteristic": labels})
    for name, rows in columns.items():
        frame[name] = [v for _, v in rows]
    return frame


def model_comparison(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model of a survival evaluation: C with 95% CI, Uno's C, time-dependent AUC, integrated
    Brier score, the risk groups' HR and log-rank p, and the paired difference in C against the nomogram."""
    paired = metrics.get("paired_vs_nomogram") or {}
    rows = []
    for name, block in metrics["models"].items():
        lo, hi = block.get("c_index_95ci") or (None, None)
        auc = block.get("td_auc") or {}
        versus = paired.get(name) or {}
        rows.append({
            "model": model_label(name),
            "C-index (95% CI)": f"{fmt(block.get('c_index'))} ({fmt(lo)}-{fmt(hi)})",
            "Uno C": fmt(block.get("uno_c")),
            **{f"TD-AUC {m} mo": fmt(v) for m, v in auc.items()},
            "IBS (months)": (f"{fmt(block.get('integrated_brier'))} ({fmt(block['integrated_brier_months'][0], 0)}-"
                             f"{fmt(block['integrated_brier_months'][1], 0)})" if block.get("integrated_brier_months")
                             else fmt(block.get("integrated_brier"))),
            "HR high vs low (95% CI)": _hazard_ratio_text(block),
            "log-rank p": p_value(block.get("logrank_p")),
            "ΔC vs nomogram (95% CI)": _difference_text(versus) if versus else "reference"
            if name == "nomogram" else "–",
            "paired p": p_value(versus.get("p")) if versus else "–",
        })
    return pd.DataFrame(rows)


def _hazard_ratio_text(block: Mapping[str, Any]) -> str:
    """The risk groups' hazard ratio with its interval, or 'not estimable (one risk group has no events)': never
    '– (–-–)', which reads as a value that was lost rather than one that does not exist. The reason is
    :func:`~NPCPrognosisLib.survival.metrics.evaluate_risk`'s ``hr_high_vs_low_not_estimable``; a metrics.json
    written before it existed gives none."""
    hr = block.get("hr_high_vs_low")
    if hr is None:
        reason = block.get("hr_high_vs_low_not_estimable")
        return "not estimable" + (f" ({reason})" if reason else "")
    lo, hi = block.get("hr_high_vs_low_95ci") or (None, None)
    return f"{fmt(hr, 2)} ({fmt(lo, 2)}-{fmt(hi, 2)})"


def _difference_text(versus: Mapping[str, Any]) -> str:
    """A paired C difference with its interval; without bootstrap draws (``evaluate --n-boot 0``) the interval is
    absent, not a formatting error."""
    lo, hi = versus.get("ci95") or (None, None)
    if lo is None or hi is None:
        return f"{versus['difference']:+.3f} (no interval: no bootstrap)"
    return f"{versus['difference']:+.3f} ({lo:+.3f} to {hi:+.3f})"

def binary_comparison(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model of a binary endpoint: AUC with DeLong 95% CI, DeLong p against the combined model,
    sensitivity, specificity and Brier score at the training threshold."""
    versus = metrics.get("delong_vs_combined") or {}
    rows = []
    for name, block in metrics["models"].items():
        lo, hi = block.get("auc_95ci") or (None, None)
        rows.append({"model": name, "AUC (95% CI)": f"{fmt(block.get('auc'))} ({fmt(lo)}-{fmt(hi)})",
                     "DeLong p vs combined": p_value((versus.get(name) or {}).get("p")) if name != "combined"
                     else "reference",
                     "sensitivity": fmt(block.get("sensitivity")), "specificity": fmt(block.get("specificity")),
                     "Brier": fmt(block.get("brier"))})
    return pd.DataFrame(rows)


def selected_features(document: Mapping[str, Any]) -> pd.DataFrame:
    """The Rad-score's features with their LASSO-Cox coefficient (per SD) and robustness ICC, to 3 significant
    digits (:func:`~NPCPrognosisLib.reporting.html.fmt_significant`) like the page's other numbers; the bundle keeps
    them in full."""
    signature = document.get("signature") or {}
    icc = ((document.get("robustness") or {}).get("selected_feature_icc") or {})
    return pd.DataFrame({"feature": list(signature.get("features", [])),
                         "coefficient (per SD)": [fmt_significant(c) for c in signature.get("coef", [])],
                         "robustness ICC": [fmt_significant(icc.get(f)) for f in signature.get("features", [])]})
