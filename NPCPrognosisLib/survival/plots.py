"""Report figures: Kaplan-Meier curves by risk group and calibration plots, written as PNG and SVG files.

Figures are built on a bare ``matplotlib.figure.Figure`` with an Agg canvas instead of ``pyplot`` so that
plotting from Slicer, a worker process or a test never switches the global backend, opens a window or
leaks figures between calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import atomic_path
from NPCPrognosisLib.survival.checks import check_survival_arrays

_COLORS = {"low": "#1f77b4", "high": "#d62728"}


def _new_figure(size: tuple, dpi: int = 120) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Any) -> str:
    """The PNG at ``path`` and the same figure as SVG beside it (vector, for papers)."""
    from pathlib import Path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    with atomic_path(Path(path).with_suffix(".svg")) as tmp:
        fig.savefig(tmp, format="svg")
    return os.fspath(path)


def _group_order(labels: np.ndarray) -> list:
    uniq = [str(u) for u in np.unique(labels.astype(str))]
    if set(uniq) <= {"low", "high"}:
        return [u for u in ("low", "high") if u in uniq]
    return uniq


def plot_km_by_group(
    path: Any,
    time: Any,
    event: Any,
    group: Any,
    title: str,
    logrank_p: float | None = None,
    hr: Any = None,
    xlabel: str = "Time (months)",
) -> str:
    """Kaplan-Meier curves per group with censoring ticks and a numbers-at-risk table; returns `path`.

    `hr` may be a number or (hr, lo, hi); it and the log-rank p are printed in the plot so the figure can be
    pasted into a report as is.
    """
    from sksurv.nonparametric import kaplan_meier_estimator

    t, e = check_survival_arrays(time, event)
    g = np.asarray(group).astype(str)
    if g.shape[0] != t.shape[0]:
        raise InputError(
            f"group has {g.shape[0]} labels for {t.shape[0]} patients", fix="one label per patient"
        )
    order = _group_order(g)

    fig = _new_figure((7.0, 5.6))
    ax = fig.add_axes((0.12, 0.34, 0.83, 0.58))
    table = fig.add_axes((0.12, 0.06, 0.83, 0.16))
    tmax = float(t.max()) if len(t) else 1.0
    ax.set_xlim(0.0, tmax * 1.02)
    ticks = [float(v) for v in ax.get_xticks() if 0.0 <= v <= tmax * 1.02]
    for k, lab in enumerate(order):
        m = g == lab
        color = _COLORS.get(lab, f"C{k}")
        x, s = kaplan_meier_estimator(e[m], t[m])
        xs = np.concatenate(([0.0], x))
        ys = np.concatenate(([1.0], s))
        ax.step(
            xs, ys, where="post", color=color, label=f"{lab} (n={int(m.sum())}, events={int(e[m].sum())})"
        )
        cens_t = t[m & ~e]
        if len(cens_t):
            idx = np.searchsorted(xs, cens_t, side="right") - 1
            ax.plot(cens_t, ys[idx], linestyle="none", marker="|", markersize=8, color=color)
        for tk in ticks:
            nr = int((t[m] >= tk).sum())
            table.text(tk, len(order) - 1 - k, str(nr), ha="center", va="center", color=color, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(ticks)
    ax.set_ylabel("Survival probability")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    notes = []
    if hr is not None:
        if np.ndim(hr) == 0:
            notes.append(f"HR = {float(hr):.2f}")
        else:
            h = [float(v) for v in hr]
            notes.append(f"HR = {h[0]:.2f} (95% CI {h[1]:.2f}-{h[2]:.2f})")
    if logrank_p is not None:
        p = float(logrank_p)
        notes.append("log-rank p < 0.001" if p < 0.001 else f"log-rank p = {p:.3f}")
    if notes:
        ax.text(0.98, 0.97, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=9)

    table.set_xlim(ax.get_xlim())
    table.set_ylim(-0.5, len(order) - 0.5)
    table.set_yticks(range(len(order)))
    table.set_yticklabels(list(reversed(order)), fontsize=8)
    table.tick_params(axis="y", length=0, pad=16)
    table.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        table.spines[side].set_visible(False)
    table.set_title("Number at risk", fontsize=8, loc="left")
    return _save(fig, path)


def plot_calibration(path: Any, calibration_rows: Sequence[dict], t: float, title: str) -> str:
    """Mean predicted vs Kaplan-Meier observed survival at `t` per group, with 95% CIs and the diagonal."""
    if not calibration_rows:
        raise InputError("no calibration rows to plot", fix="run evaluation.calibration first")
    pred, obs, lo, hi = [], [], [], []
    for row in calibration_rows:
        if row.get("observed") is None:
            continue
        pred.append(float(row["predicted"]))
        obs.append(float(row["observed"]))
        ci = row.get("observed_95ci") or [None, None]
        lo.append(float(ci[0]) if ci[0] is not None else float(row["observed"]))
        hi.append(float(ci[1]) if ci[1] is not None else float(row["observed"]))

    fig = _new_figure((5.2, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="ideal")
    if pred:
        pred_a, obs_a = np.asarray(pred), np.asarray(obs)
        yerr = np.vstack((np.clip(obs_a - np.asarray(lo), 0, None), np.clip(np.asarray(hi) - obs_a, 0, None)))
        ax.errorbar(
            pred_a, obs_a, yerr=yerr, marker="o", color="#d62728", capsize=3, label="observed (KM, 95% CI)"
        )
    else:
        ax.text(0.5, 0.5, "follow-up too short for this time point", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Predicted survival at t = {float(t):g}")
    ax.set_ylabel(f"Observed survival at t = {float(t):g}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_forest(path: Any, rows: Sequence[dict], title: str, xlabel: str = "Hazard ratio (log scale)") -> str:
    """Subgroup forest plot: one line per subgroup level (HR and 95% CI), the interaction p per variable."""
    shown = [r for r in rows if r.get("estimable") and r.get("hr") is not None]
    fig = _new_figure((7.0, 0.8 + 0.32 * max(len(shown), 1)))
    ax = fig.add_axes((0.38, 0.12, 0.45, 0.78))
    labels, last = [], None
    for k, r in enumerate(shown):
        y = len(shown) - 1 - k
        lo, hi = r["hr_95ci"]
        ax.plot([lo, hi], [y, y], color="0.2", lw=1.2)
        ax.plot([r["hr"]], [y], marker="s", color="C0", markersize=5)
        name = r["subgroup"] if r["subgroup"] != last else ""
        labels.append(f"{name}  {r['level']} (n={r['n']})".strip())
        p = r.get("interaction_p")
        if name and p is not None:
            ax.text(1.02, y, f"p-int {p:.2g}", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        last = r["subgroup"]
    ax.axvline(1.0, color="0.5", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
