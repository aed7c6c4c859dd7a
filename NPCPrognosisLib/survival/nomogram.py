"""Cox nomograms: survival at 1/3/5 years and the points per factor a clinician reads off the chart.

The same class serves the clinical model (clinical factors only) and the combined nomogram (Rad-score, deep
score and clinical factors); which factors enter is data, not code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.cox import CoxModel, fit_cox

#: Months at which survival is reported (1, 3 and 5 years).
REPORT_MONTHS = (12, 36, 60)


@dataclass
class Nomogram:
    """A fitted Cox model plus the training range of each factor (for points and extrapolation warnings)."""

    name: str
    model: CoxModel
    low: list[float]
    high: list[float]
    #: Mean linear predictor of the training cohort: risk 0 is the average training patient, so a score
    #: means something to a clinician (log hazard ratio against that patient) whatever the factors' units.
    center: float = 0.0

    @property
    def factors(self) -> list[str]:
        return list(self.model.covariates)

    def _matrix(self, table: pd.DataFrame | Mapping[str, float]) -> np.ndarray:
        if isinstance(table, Mapping):
            table = pd.DataFrame([dict(table)])
        missing = [f for f in self.factors if f not in table.columns]
        if missing:
            raise InputError(f"the {self.name} model needs factor(s) {missing}",
                             fix="provide every factor of the model")
        values = table[self.factors].to_numpy(float)
        if np.isnan(values).any():
            bad = [f for f, col in zip(self.factors, np.isnan(values).any(axis=0)) if col]
            raise InputError(f"missing value(s) for {bad} in the {self.name} model", column=bad[0])
        return values

    def risk(self, table: pd.DataFrame | Mapping[str, float]) -> np.ndarray:
        """Log hazard ratio against the average training patient; higher means worse prognosis."""
        return self.model.linear_predictor(self._matrix(table)) - self.center

    def survival(self, table: pd.DataFrame | Mapping[str, float],
                 months: Sequence[float] = REPORT_MONTHS) -> np.ndarray:
        return self.model.survival_at(self._matrix(table), np.asarray(months, float))

    def survival_for_risk(self, risk: float, months: Sequence[float]) -> np.ndarray:
        """Survival curve of a patient with this risk score (e.g. a risk group's median: the reference curves)."""
        h0 = self.model.cumulative_hazard_at(np.zeros((1, len(self.factors))), np.asarray(months, float))[0]
        return np.exp(-np.asarray(h0) * np.exp(float(risk) + self.center))

    def _scale(self) -> tuple[np.ndarray, np.ndarray, float]:
        coef = np.asarray(self.model.coef, float)
        low, high = np.asarray(self.low), np.asarray(self.high)
        span = np.abs(coef) * (high - low)
        # the value scoring 0 points: the most favourable one seen in training
        reference = np.where(coef >= 0, low, high)
        return coef, reference, float(span.max()) if span.max() > 0 else 1.0

    def points(self, values: Mapping[str, float]) -> dict[str, Any]:
        """Nomogram points: 100 for the full training range of the strongest factor, 0 at each factor's best value."""
        coef, reference, top = self._scale()
        x = self._matrix(values)[0]
        per_factor = {f: float(100.0 * c * (v - r) / top) for f, c, v, r in zip(self.factors, coef, x, reference)}
        return {"per_factor": per_factor, "total": float(sum(per_factor.values())),
                "points_per_unit_log_hazard": 100.0 / top}

    def chart_scale(self, months: Sequence[float] = REPORT_MONTHS) -> dict[str, Any]:
        """What a printed nomogram needs, as JSON: each factor's coefficient, training range and 0-point value,
        the points per unit log hazard, and the baseline cumulative hazard at ``months``.

        With it a chart maps total points back to survival without the bundle:
        ``S(t) = exp(-H0(t) * exp(total / points_per_unit_log_hazard + offset))``, ``offset = sum(coef * zero)``.
        """
        coef, reference, top = self._scale()
        months = [float(m) for m in months]
        h0 = self.model.cumulative_hazard_at(np.zeros((1, len(self.factors))), np.asarray(months, float))[0]
        return {"factors": self.factors, "coef": [float(c) for c in coef], "low": [float(v) for v in self.low],
                "high": [float(v) for v in self.high], "zero_point_value": [float(v) for v in reference],
                "points_per_unit_log_hazard": 100.0 / top, "offset": float(np.dot(coef, reference)),
                "center": float(self.center), "months": months,
                "baseline_cumulative_hazard": [float(v) for v in h0]}

    def out_of_range(self, values: Mapping[str, float]) -> list[str]:
        """Factors outside the training range: the model is extrapolating there."""
        x = self._matrix(values)[0]
        return [f"{f} = {v:.3g} is outside the training range [{lo:.3g}, {hi:.3g}]"
                for f, v, lo, hi in zip(self.factors, x, self.low, self.high) if v < lo or v > hi]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(), "low": self.low, "high": self.high,
                "center": self.center}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Nomogram:
        return cls(name=data["name"], model=CoxModel.from_dict(data["model"]), low=list(data["low"]),
                   high=list(data["high"]), center=float(data.get("center", 0.0)))


def fit_nomogram(name: str, table: pd.DataFrame, factors: Sequence[str], time: np.ndarray, event: np.ndarray,
                 *, ties: str = "efron", penalizer: float = 0.0) -> Nomogram:
    """Fit a Cox model on ``factors`` of the training table and remember their observed ranges."""
    values = table[list(factors)].to_numpy(float)
    model = fit_cox(values, np.asarray(time, float), np.asarray(event, bool), covariates=list(factors), ties=ties,
                    penalizer=penalizer)
    return Nomogram(name=name, model=model, low=[float(v) for v in values.min(axis=0)],
                    high=[float(v) for v in values.max(axis=0)],
                    center=float(np.mean(model.linear_predictor(values))))
