"""ROC and calibration figures of binary endpoints, ready to paste into a report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from NPCPrognosisLib.survival.plots import _new_figure, _save


def plot_roc(path: Any, y: Any, probs: Mapping[str, np.ndarray], metrics: Mapping[str, Mapping[str, Any]],
             title: str) -> str:
    """One ROC curve per model with its AUC and DeLong 95% CI in the legend."""
    from sklearn.metrics import roc_curve

    fig = _new_figure((6.0, 6.0))
    ax = fig.add_axes((0.12, 0.1, 0.83, 0.82))
    for k, (name, prob) in enumerate(probs.items()):
        fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), prob)
        m = metrics[name]
        ax.plot(fpr, tpr, color=f"C{k % 10}", lw=1.4,
                label=f"{name}: AUC {m['auc']:.2f} ({m['auc_95ci'][0]:.2f}-{m['auc_95ci'][1]:.2f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_calibration_binary(path: Any, calibration: Mapping[str, Any], title: str) -> str:
    """Observed vs predicted probability by group, with the calibration slope and intercept."""
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_axes((0.14, 0.12, 0.8, 0.78))
    groups = calibration["groups"]
    ax.plot([g["predicted"] for g in groups], [g["observed"] for g in groups], "o-", color="C0")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Predicted probability")
    ax.set_ylabel("Observed proportion")
    ax.set_title(title, fontsize=10)
    ax.text(0.04, 0.94, f"slope {calibration['slope']:.2f}, intercept {calibration['intercept']:.2f}",
            transform=ax.transAxes, fontsize=9, va="top")
    return _save(fig, path)
