"""Cox proportional hazards models with the inference a nomogram paper needs, stored as plain JSON.

scikit-survival fits the coefficients but reports neither standard errors nor p-values, and its baseline
hazard is always Breslow's. A nomogram table needs hazard ratios with confidence intervals, and an Efron fit
should predict with an Efron baseline, so this module adds the observed information matrix and a
ties-consistent baseline cumulative hazard on top of the sksurv fit. The fitted model is a small dataclass
that round-trips through JSON exactly (never pickle), so a bundle written today predicts the same tomorrow.

Prediction (:meth:`CoxModel.survival_at`) needs only numpy; scikit-survival is imported when fitting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.checks import check_survival_arrays, row_location

#: Version of the dict written by :meth:`CoxModel.to_dict`; bump on incompatible changes.
FORMAT_VERSION = 1
_Z975 = 1.959963984540054  # standard normal 97.5% quantile


@dataclass
class CoxModel:
    """A fitted Cox model: coefficients, their uncertainty and the baseline needed to predict survival."""

    covariates: list
    coef: np.ndarray
    se: np.ndarray
    ties: str
    baseline_times: np.ndarray
    baseline_cumhaz: np.ndarray
    n: int
    events: int
    log_likelihood: float
    penalizer: float = 0.0
    covariance: np.ndarray | None = field(default=None, repr=False)
    #: Tsiatis' two sums behind :meth:`log_cumhaz_se`, at each baseline time and referred to the training covariate
    #: means: the baseline cumulative hazard's own variance and its drift (risk-set mean covariates times the
    #: jumps). None in models saved before they were stored.
    means: np.ndarray | None = field(default=None, repr=False)
    baseline_var: np.ndarray | None = field(default=None, repr=False)
    baseline_drift: np.ndarray | None = field(default=None, repr=False)
    #: The training cohort's longest follow-up: the baseline hazard, so every predicted survival, is unknown after
    #: it (NaN), where holding the last value would report a 60-month survival from 38 months of follow-up as if
    #: it were measured. None in models saved before it was stored (no limit, as they predicted).
    max_time: float | None = None
    #: Whether :attr:`penalizer` acted on the covariates standardised to SD 1 (the refit of a runaway fit,
    #: :func:`runaway_penalty`) rather than on them as given; the coefficients are in the covariates' own units
    #: either way, so prediction does not depend on it.
    penalty_per_sd: bool = False

    # ------------------------------------------------------------------ prediction
    def _design(self, X: Any) -> np.ndarray:
        """Pick and order the model's covariates so a DataFrame with extra or shuffled columns predicts right."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dependency
            pd = None
        if pd is not None and isinstance(X, pd.Series):
            X = X.to_frame().T
        if pd is not None and isinstance(X, pd.DataFrame):
            ids = _patient_ids(X)
            missing = [c for c in self.covariates if c not in X.columns]
            if missing:
                raise InputError(
                    f"the Cox model needs covariate(s) {missing} but the table has {list(X.columns)}",
                    column=missing[0],
                    fix="add the column (same name and coding as at training time)",
                )
            return _numeric_matrix(X, self.covariates, ids)
        arr = np.asarray(X, dtype=float)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1) if arr.shape[0] == len(self.covariates) else arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != len(self.covariates):
            raise InputError(
                f"expected {len(self.covariates)} covariate columns {self.covariates}, got array of shape "
                f"{np.shape(X)}",
                fix="pass a DataFrame with the named columns or an array with columns in that order",
            )
        if not np.all(np.isfinite(arr)):
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise InputError(
                f"non-finite value in row {row}", column=self.covariates[col], fix="impute or drop the row"
            )
        return arr

    def linear_predictor(self, X: Any) -> np.ndarray:
        """Risk score x'beta (higher = worse prognosis)."""
        return self._design(X) @ np.asarray(self.coef, dtype=float)

    def baseline_at(self, times: Any) -> np.ndarray:
        """H0(t), a right-continuous step; NaN after the training follow-up (:attr:`max_time`)."""
        times = np.atleast_1d(np.asarray(times, dtype=float))
        h0 = baseline_step(self.baseline_times, self.baseline_cumhaz, times)
        return h0 if self.max_time is None else np.where(times > self.max_time, np.nan, h0)

    def cumulative_hazard_at(self, X: Any, times: Any) -> np.ndarray:
        """H(t|x) = H0(t) exp(x'beta) as an (n_samples, n_times) matrix; NaN after the training follow-up."""
        return np.exp(self.linear_predictor(X))[:, None] * self.baseline_at(times)[None, :]

    def log_cumhaz_se(self, X: Any, times: Any) -> np.ndarray:
        """Standard error of log H(t|x), shape (n_samples, len(times)), by Tsiatis' (1981) variance of a predicted
        cumulative hazard: the baseline hazard's own variance plus the coefficients' covariance carried along the
        drift, q(t) = (x - mean) H0(t) - sum of the risk-set mean covariates times the baseline jumps.

        Why not the risk score's SE alone: it ignores the baseline and, measured from a reference patient, is 0
        there, which had printed a 95 % interval of zero width for a patient in the middle of the training ranges.
        NaN before the first event time, after the training follow-up, or when the model was saved without the
        sums.

        Parameters
        ----------
        X : array-like or DataFrame
            Covariates, as for :meth:`linear_predictor`.
        times : array-like
            Times (same unit as the training follow-up).

        Returns
        -------
        se : ndarray
            The SE of log H(t|x); a 95 % interval of S(t|x) is S ** exp(+-1.96 se).
        """
        times = np.atleast_1d(np.asarray(times, dtype=float))
        X = self._design(X)
        if self.means is None or self.baseline_var is None or self.baseline_drift is None or self.covariance is None:
            return np.full((len(X), len(times)), np.nan)
        beta = np.asarray(self.coef, dtype=float)
        index = np.searchsorted(self.baseline_times, times, side="right") - 1
        valid = index >= 0
        at = np.clip(index, 0, None)
        h0 = np.asarray(self.baseline_cumhaz, float)[at] * math.exp(float(self.means @ beta))  # at the means
        drift = np.asarray(self.baseline_drift, float).reshape(len(self.baseline_times), -1)[at]
        q = (X - self.means)[:, None, :] * h0[None, :, None] - drift[None, :, :]
        variance = np.asarray(self.baseline_var, float)[at][None, :] + np.einsum(
            "ntp,pq,ntq->nt", q, np.asarray(self.covariance, float), q)
        with np.errstate(divide="ignore", invalid="ignore"):
            se = np.sqrt(np.clip(variance, 0.0, None)) / h0[None, :]
        known = valid & (h0 > 0) & (times <= (np.inf if self.max_time is None else self.max_time))
        return np.where(known[None, :], se, np.nan)

    def survival_at(self, X: Any, times: Any) -> np.ndarray:
        """S(t|x) = exp(-H0(t) exp(x'beta)), shape (n_samples, len(times)).

        Before the first event time S = 1; from the last event time to the end of the training follow-up the
        baseline is held constant (no event was seen there, as in survival/lifelines); after the follow-up NaN.
        """
        return np.exp(-self.cumulative_hazard_at(X, times))

    # ------------------------------------------------------------------ reporting
    def summary(self) -> list:
        """One row per covariate: coef, hazard ratio with Wald 95% CI, SE, z and two-sided p."""
        from scipy.stats import norm

        rows = []
        for name, b, s in zip(self.covariates, np.asarray(self.coef), np.asarray(self.se)):
            b = float(b)
            s = float(s)
            z = b / s if s > 0 else float("nan")
            p = float(2.0 * norm.sf(abs(z))) if math.isfinite(z) else float("nan")
            rows.append(
                {
                    "covariate": str(name),
                    "coef": b,
                    "hr": _exp(b),
                    "hr_95ci": [_exp(b - _Z975 * s), _exp(b + _Z975 * s)],
                    "se": s,
                    "z": float(z),
                    "p": p,
                }
            )
        return rows

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """JSON-only representation; Python's float repr round-trips, so from_dict(to_dict()) is exact."""
        d = {
            "kind": "cox_ph",
            "format_version": FORMAT_VERSION,
            "covariates": [str(c) for c in self.covariates],
            "coef": [float(v) for v in np.asarray(self.coef, dtype=float)],
            "se": [float(v) for v in np.asarray(self.se, dtype=float)],
            "ties": str(self.ties),
            "baseline_times": [float(v) for v in np.asarray(self.baseline_times, dtype=float)],
            "baseline_cumhaz": [float(v) for v in np.asarray(self.baseline_cumhaz, dtype=float)],
            "n": int(self.n),
            "events": int(self.events),
            "log_likelihood": float(self.log_likelihood),
            "penalizer": float(self.penalizer),
        }
        if self.covariance is not None:
            d["covariance"] = [[float(v) for v in row] for row in np.asarray(self.covariance, dtype=float)]
        if self.means is not None and self.baseline_var is not None and self.baseline_drift is not None:
            d["means"] = [float(v) for v in np.asarray(self.means, dtype=float)]
            d["baseline_var"] = [float(v) for v in np.asarray(self.baseline_var, dtype=float)]
            d["baseline_drift"] = [[float(v) for v in row] for row in np.asarray(self.baseline_drift, dtype=float)]
        if self.max_time is not None:
            d["max_time"] = float(self.max_time)
        if self.penalty_per_sd:
            d["penalty_per_sd"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CoxModel:
        if not isinstance(d, dict) or d.get("kind", "cox_ph") != "cox_ph":
            raise InputError("not a Cox model dict", fix="pass the dict written by CoxModel.to_dict()")
        version = int(d.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise InputError(
                f"Cox model format version {version} is newer than this software ({FORMAT_VERSION})",
                fix="update NPCPrognosis",
            )
        try:
            cov = d.get("covariance")
            model = cls(
                covariates=list(d["covariates"]),
                coef=np.asarray(d["coef"], dtype=float),
                se=np.asarray(d["se"], dtype=float),
                ties=str(d["ties"]),
                baseline_times=np.asarray(d["baseline_times"], dtype=float),
                baseline_cumhaz=np.asarray(d["baseline_cumhaz"], dtype=float),
                n=int(d["n"]),
                events=int(d["events"]),
                log_likelihood=float(d["log_likelihood"]),
                penalizer=float(d.get("penalizer", 0.0)),
                covariance=None if cov is None else np.asarray(cov, dtype=float),
                **{key: np.asarray(d[key], dtype=float) if d.get(key) is not None else None
                   for key in ("means", "baseline_var", "baseline_drift")},
                max_time=None if d.get("max_time") is None else float(d["max_time"]),
                penalty_per_sd=bool(d.get("penalty_per_sd", False)),
            )
        except KeyError as exc:
            raise InputError(f"Cox model dict lacks key {exc.args[0]!r}", fix="re-export the model") from None
        times = model.baseline_times.shape[0]
        if (
            model.coef.shape != (len(model.covariates),)
            or model.baseline_times.shape != model.baseline_cumhaz.shape
            or (model.means is not None and model.means.shape != model.coef.shape)
            or (model.baseline_var is not None and model.baseline_var.shape != (times,))
            or (model.baseline_drift is not None and model.baseline_drift.size != times * len(model.covariates))
        ):
            raise InputError("Cox model dict has inconsistent array lengths", fix="re-export the model")
        return model


def cox_with_coefficients(
    X: np.ndarray,
    time: Any,
    event: Any,
    covariates: Sequence[str],
    coef: np.ndarray,
    covariance: np.ndarray,
    *,
    ties: str = "efron",
    penalizer: float = 0.0,
) -> CoxModel:
    """A Cox model whose coefficients were estimated elsewhere (e.g. by stacking); the baseline hazard and the
    partial log-likelihood are those of the training data at these coefficients, with the ``ties`` convention.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_covariates)
        Training covariates in the order of ``covariates``.
    time, event : array-like
        Training outcomes.
    covariates : sequence of str
        Covariate names.
    coef, covariance : ndarray
        The coefficients and their covariance (its diagonal gives the standard errors).

    Returns
    -------
    model : CoxModel
    """
    Xm = np.asarray(X, dtype=float)
    t, e = check_survival_arrays(time, event)
    beta = np.asarray(coef, dtype=float)
    means = Xm.mean(axis=0)
    sums = _partial_likelihood(Xm - means, t, e, beta, ties)
    return _cox_model(covariates, beta, np.asarray(covariance, dtype=float), means, sums, t, int(e.sum()), ties,
                      penalizer)


# ---------------------------------------------------------------------------------------------- helpers
def _exp(value: float) -> float:
    """exp that returns inf instead of raising: a separated fit (a group without events) has huge coefficients."""
    return float(np.exp(np.float64(value))) if value < 700 else float("inf")


def baseline_step(times_grid: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Evaluate a right-continuous step function that is 0 before its first jump."""
    idx = np.searchsorted(np.asarray(times_grid, dtype=float), times, side="right") - 1
    padded = np.concatenate(([0.0], np.asarray(values, dtype=float)))
    return padded[idx + 1]


def _patient_ids(df: Any) -> np.ndarray | None:
    if "patient_id" in getattr(df, "columns", []):
        return df["patient_id"].astype(str).to_numpy()
    if getattr(getattr(df, "index", None), "name", None) == "patient_id":
        return df.index.astype(str).to_numpy()
    return None


def _numeric_matrix(df: Any, columns: Sequence[str], ids: np.ndarray | None) -> np.ndarray:
    import pandas as pd

    out = np.empty((len(df), len(columns)), dtype=float)
    for j, col in enumerate(columns):
        s = df[col]
        if pd.api.types.is_bool_dtype(s):
            s = s.astype(float)
        if not pd.api.types.is_numeric_dtype(s):
            conv = pd.to_numeric(s, errors="coerce")
            bad = np.flatnonzero(conv.isna().to_numpy() & s.notna().to_numpy())
            if len(bad):
                r = int(bad[0])
                raise InputError(f"non-numeric value {s.iloc[r]!r} in row {r} (a Cox covariate must be a number)",
                                 column=str(col), fix="encode categories as 0/1 indicator columns or numeric codes",
                                 **row_location(ids, r))
            s = conv
        vals = s.to_numpy(dtype=float, na_value=np.nan)
        nonfinite = np.flatnonzero(~np.isfinite(vals))
        if len(nonfinite):
            r = int(nonfinite[0])
            raise InputError(f"missing or non-finite value in row {r} ({len(nonfinite)} row(s) affected)",
                             column=str(col), fix="impute the value or drop the patient before fitting",
                             **row_location(ids, r))
        out[:, j] = vals
    return out


def _check_design(X: np.ndarray, covariates: list) -> None:
    """Reject designs with no unique MLE before the optimiser produces NaNs or a LinAlgError."""
    for j, name in enumerate(covariates):
        if np.ptp(X[:, j]) == 0:
            raise InputError(
                f"covariate is constant (every patient has {X[0, j]!r}); its hazard ratio is not identifiable",
                column=str(name),
                fix="drop the column from the model",
            )
    Xc = X - X.mean(axis=0)
    Xs = Xc / np.sqrt((Xc**2).sum(axis=0))
    # Walk the columns and find the first one that adds no new direction.
    for j in range(1, Xs.shape[1]):
        if np.linalg.matrix_rank(Xs[:, : j + 1], tol=1e-10 * math.sqrt(X.shape[0])) <= j:
            raise InputError(
                f"covariate is a linear combination of {covariates[:j]} (singular design)",
                column=str(covariates[j]),
                fix="drop one of the collinear columns",
            )


class _RiskSetSums(NamedTuple):
    """What the risk sets at ``beta`` give: the partial likelihood and its derivatives for the coefficients' SEs,
    and per event time the baseline hazard's jump and Tsiatis' terms for the variance of a predicted cumulative
    hazard (the squared jump terms and the risk-set mean of ``Xc`` times each jump term), all at linear predictor
    0 of the centred ``Xc``."""

    loglik: float
    score: np.ndarray
    information: np.ndarray
    event_times: np.ndarray
    jumps: np.ndarray
    jump_variance: np.ndarray
    jump_drift: np.ndarray


def _partial_likelihood(Xc: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray,
                        ties: str) -> _RiskSetSums:
    """Partial log-likelihood, score, observed information, baseline hazard jumps and their variance terms at
    ``beta``.

    Computed on the risk sets directly (rather than trusting the optimiser's internals) so the SEs follow
    the textbook formulas for Breslow and Efron handling of tied event times. `Xc` should be centred: the
    quantities are shift-invariant and centring keeps exp() away from overflow. The baseline jumps refer to
    linear predictor 0 of `Xc`, i.e. to the covariate means.
    """
    _n, p = Xc.shape
    lp = Xc @ beta
    shift = lp.max()
    w = np.exp(lp - shift)  # rescaled to avoid overflow; undone in the loglik and baseline

    order = np.argsort(time, kind="mergesort")
    t_sorted = time[order]
    # Risk-set sums over {j: T_j >= t}: reverse cumulative sums, read at the first index of each time.
    ws = w[order]
    xs = Xc[order]
    s0_all = np.cumsum(ws[::-1])[::-1]
    s1_all = np.cumsum((ws[:, None] * xs)[::-1], axis=0)[::-1]
    s2_all = np.cumsum((ws[:, None, None] * xs[:, :, None] * xs[:, None, :])[::-1], axis=0)[::-1]

    ev_times = np.unique(time[event])
    loglik = 0.0
    score = np.zeros(p)
    info = np.zeros((p, p))
    jumps = np.empty(len(ev_times))
    variance = np.empty(len(ev_times))
    drift = np.empty((len(ev_times), p))
    first = np.searchsorted(t_sorted, ev_times, side="left")
    for k, (t, i0) in enumerate(zip(ev_times, first)):
        dmask = event & (time == t)
        d = int(dmask.sum())
        r0, r1, r2 = s0_all[i0], s1_all[i0], s2_all[i0]
        xd = Xc[dmask]
        wd = w[dmask]
        loglik += float(lp[dmask].sum())
        score += xd.sum(axis=0)
        if ties == "breslow" or d == 1:
            loglik -= d * (math.log(r0) + shift)
            m = r1 / r0
            score -= d * m
            info += d * (r2 / r0 - np.outer(m, m))
            jumps[k] = d / r0
            variance[k] = d / r0**2
            drift[k] = d * r1 / r0**2
        else:
            d0 = wd.sum()
            d1 = (wd[:, None] * xd).sum(axis=0)
            d2 = (wd[:, None, None] * xd[:, :, None] * xd[:, None, :]).sum(axis=0)
            jumps[k] = variance[k] = 0.0
            drift[k] = 0.0
            for ell in range(d):
                f = ell / d
                phi = r0 - f * d0
                m = (r1 - f * d1) / phi
                loglik -= math.log(phi) + shift
                score -= m
                info += (r2 - f * d2) / phi - np.outer(m, m)
                jumps[k] += 1.0 / phi
                variance[k] += 1.0 / phi**2
                drift[k] += (r1 - f * d1) / phi**2
    # Undo the rescaling of w: the jumps were computed with exp(lp - shift).
    scale = math.exp(-shift)
    return _RiskSetSums(loglik, score, info, ev_times, jumps * scale, variance * scale**2, drift * scale)


def _cox_model(covariates: Sequence[str], beta: np.ndarray, covariance: np.ndarray, means: np.ndarray,
               sums: _RiskSetSums, time: np.ndarray, events: int, ties: str, penalizer: float,
               penalty_per_sd: bool = False) -> CoxModel:
    """The model at ``beta``: its baseline re-referenced from the covariate means to x = 0, Tsiatis' sums kept at
    the means (where :meth:`CoxModel.log_cumhaz_se` centres a patient)."""
    return CoxModel(covariates=list(covariates), coef=beta, se=np.sqrt(np.clip(np.diag(covariance), 0.0, None)),
                    ties=ties, baseline_times=sums.event_times.astype(float),
                    baseline_cumhaz=np.cumsum(sums.jumps) * math.exp(-float(means @ beta)), n=len(time),
                    events=int(events), log_likelihood=float(sums.loglik), penalizer=float(penalizer),
                    covariance=covariance, means=means, baseline_var=np.cumsum(sums.jump_variance),
                    baseline_drift=np.cumsum(sums.jump_drift, axis=0), max_time=float(np.max(time)),
                    penalty_per_sd=penalty_per_sd)


# ---------------------------------------------------------------------------------------------- fitting
def fit_cox(
    X: Any,
    time: Any,
    event: Any,
    covariates: Sequence[str] | None = None,
    *,
    ties: str = "breslow",
    penalizer: float = 0.0,
    penalty_per_sd: bool = False,
) -> CoxModel:
    """Fit a Cox PH model with scikit-survival and add SEs, Wald tests and a ties-consistent baseline.

    X: DataFrame (covariates picked by name; a ``patient_id`` column, if any, is used in error messages and
    never as a covariate) or 2-D array (columns named by `covariates` or x0, x1, ...). `time` / `event` may
    be arrays or names of columns of X. `penalizer` is the ridge strength of sksurv's ``alpha``
    (penalised log-likelihood = loglik - penalizer/2 * ||beta||^2); the SEs then come from the penalised
    information, as R's coxph reports for ridge terms.

    ``penalty_per_sd``: the ridge acts on the log hazard ratio per SD of each covariate (SD over these rows),
    ``penalizer/2 * sum((beta_j * sd_j)^2)``: fitted on the standardised covariates, the coefficients and their
    covariance transformed back to the covariates' units, so the model predicts as any other. Why: a ridge on the
    covariates as given weighs each coefficient per unit, so per U/L of LDH (SD ~35) it is thousands of times
    weaker than per 0/1 factor (SD ~0.5) and the hazard ratios it leaves depend on the units a factor is written
    in; a penalty meant to tame implausible hazard ratios per SD (:func:`runaway_penalty`) must treat them alike.
    Without it (the default) the fit is exactly as before.
    """
    import pandas as pd

    if ties not in ("breslow", "efron"):
        raise InputError(f"ties must be 'breslow' or 'efron', got {ties!r}", fix="use one of the two")
    if not (isinstance(penalizer, (int, float)) and math.isfinite(penalizer) and penalizer >= 0):
        raise InputError(
            f"penalizer must be a finite number >= 0, got {penalizer!r}", fix="use 0 for no penalty"
        )

    ids = None
    if isinstance(X, pd.DataFrame):
        ids = _patient_ids(X)
        outcome_cols = {c for c in (time, event) if isinstance(c, str)}
        if isinstance(time, str):
            if time not in X.columns:
                raise InputError("time column not found", column=time, fix=f"columns are {list(X.columns)}")
            time = X[time].to_numpy()
        if isinstance(event, str):
            if event not in X.columns:
                raise InputError("event column not found", column=event, fix=f"columns are {list(X.columns)}")
            event = X[event].to_numpy()
        if covariates is None:
            covariates = [c for c in X.columns if c != "patient_id" and c not in outcome_cols]
        covariates = [str(c) if not isinstance(c, str) else c for c in covariates]
        missing = [c for c in covariates if c not in X.columns]
        if missing:
            raise InputError(
                f"covariate column(s) {missing} not in the table (columns: {list(X.columns)})",
                column=missing[0],
                fix="check the spelling or add the column",
            )
        Xm = _numeric_matrix(X, covariates, ids)
    else:
        Xm = np.asarray(X, dtype=float)
        if Xm.ndim == 1:
            Xm = Xm[:, None]
        if Xm.ndim != 2:
            raise InputError(f"X must be 2-D, got shape {Xm.shape}", fix="pass one row per patient")
        if covariates is None:
            covariates = [f"x{j}" for j in range(Xm.shape[1])]
        covariates = list(covariates)
        if len(covariates) != Xm.shape[1]:
            raise InputError(
                f"{len(covariates)} covariate names for {Xm.shape[1]} columns", fix="name every column once"
            )
        if not np.all(np.isfinite(Xm)):
            r, c = np.argwhere(~np.isfinite(Xm))[0]
            raise InputError(
                f"missing or non-finite value in row {r}", column=covariates[c], fix="impute or drop"
            )
    if len(covariates) == 0:
        raise InputError("no covariates given", fix="name at least one covariate column")

    t, e = check_survival_arrays(time, event, ids=ids)
    if t.shape[0] != Xm.shape[0]:
        raise InputError(
            f"{Xm.shape[0]} covariate rows but {t.shape[0]} survival times", fix="pass one row per patient"
        )
    if Xm.shape[0] < 2:
        raise InputError("a Cox model needs at least 2 patients", fix="add patients")
    if not e.any():
        raise InputError(
            f"no events among {len(e)} patients; hazard ratios are not estimable",
            fix="check the event coding (1 = event) or use a cohort with events",
        )
    _check_design(Xm, covariates)

    from sklearn.exceptions import ConvergenceWarning
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    means = Xm.mean(axis=0)
    Xc = Xm - means  # the partial likelihood is shift-invariant; centring only protects exp() from overflow
    # per SD: beta_j = beta_sd_j / sd_j; the design check above guarantees sd > 0
    unit = Xm.std(axis=0) if penalty_per_sd else np.ones(Xm.shape[1])
    est = CoxPHSurvivalAnalysis(alpha=float(penalizer), ties=ties, n_iter=200, tol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            est.fit(Xc / unit if penalty_per_sd else Xc, Surv.from_arrays(event=e, time=t))
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise InputError(
                f"the Cox fit failed ({exc}); often a covariate perfectly separates patients with and without "
                "events (monotone likelihood)",
                fix="drop or merge the separating covariate, or set a small penalizer",
            ) from None
    beta = np.asarray(est.coef_, dtype=float) / unit if penalty_per_sd else np.asarray(est.coef_, dtype=float)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            warnings.warn(
                "Cox fit did not converge; coefficients may be infinite (separation) - consider a penalizer",
                RuntimeWarning,
                stacklevel=2,
            )
    scaled = np.abs(beta) * Xm.std(axis=0)
    if np.any(scaled > 10):
        worst = covariates[int(np.argmax(scaled))]
        warnings.warn(
            f"Cox coefficient of {worst!r} is implausibly large (HR per SD > e^10): monotone likelihood / "
            "separation; its hazard ratio and p-value are meaningless - drop it or set a penalizer",
            RuntimeWarning,
            stacklevel=2,
        )
    if not np.all(np.isfinite(beta)):
        raise InputError(
            "the Cox fit produced non-finite coefficients (monotone likelihood)",
            fix="drop the separating covariate or set a small penalizer",
        )

    sums = _partial_likelihood(Xc, t, e, beta, ties)
    # the penalty's second derivative in the covariates' units: penalizer * sd_j^2 per SD (1 as given)
    info_pen = sums.information + float(penalizer) * np.diag(unit**2)
    try:
        cov = np.linalg.inv(info_pen)
    except np.linalg.LinAlgError:
        raise InputError(
            "the information matrix is singular at the optimum; standard errors are undefined",
            fix="drop collinear or nearly constant covariates",
        ) from None

    offset = float(means @ beta)
    if abs(offset) > 700:
        warnings.warn(
            "baseline hazard at x = 0 under/overflows because covariates are far from 0; standardise them",
            RuntimeWarning,
            stacklevel=2,
        )
    return _cox_model(covariates, beta, cov, means, sums, t, int(e.sum()), ties, penalizer, penalty_per_sd)


# ---------------------------------------------------------------------------------------------- runaway fits
#: Largest plausible log hazard ratio per standard deviation of a factor (HR e^2 = 7.4 per SD). Measured: the
#: clinical Cox models of eight 161-patient training cohorts (55-69 events) reached 0.39-0.86; those of 28-patient
#: ones with 6-10 events 2.5-16, and gave new patients 36-month survival down to 1e-271.
MAX_LOG_HR_PER_SD = 2.0
#: Growth of a coefficient (log hazard ratio per SD) when the ridge penalty is cut a hundredfold that marks it as
#: running off to infinity (monotone likelihood); a likelihood with a maximum moved the clinical models' by < 0.06.
MAX_GROWTH_PER_SD = 0.5
#: Ridge penalties tried for a runaway fit, from the default up (0.01 to 100, half a decade apart).
RUNAWAY_PENALTIES = tuple(0.01 * 10 ** (k / 2) for k in range(9))


def runaway_factors(X: np.ndarray, time: Any, event: Any, model: CoxModel) -> dict[str, float]:
    """The factors whose coefficient ran away in ``model`` (fitted on ``X``): the log hazard ratio per SD of each
    that is implausibly large (above :data:`MAX_LOG_HR_PER_SD`) or still growing as the ridge penalty goes to 0
    (by more than :data:`MAX_GROWTH_PER_SD` when it is cut a hundredfold).

    Why: these are the two signs of monotone likelihood in a Cox model (Heinze & Schemper 2002, Biometrics 58:
    131-136: a factor, or a combination of factors, orders the events perfectly, so the likelihood keeps rising
    as the coefficient grows) and of its near relative on few events per factor, a finite maximum far out. Either
    way the tiny default ridge leaves a hazard ratio of hundreds per SD, which turned new patients' predicted
    survival into 1e-46 to 1e-271 on 28-patient cohorts, written as confidently as any other.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_covariates)
        The training covariates, columns in the order of ``model.covariates``.
    time, event : array-like
        The training outcomes.
    model : CoxModel
        The fit to check.

    Returns
    -------
    factors : dict of str to float
        Each runaway factor's log hazard ratio per SD; empty when the fit is sound.
    """
    X = np.asarray(X, float)
    sd = X.std(axis=0)
    scaled = np.abs(np.asarray(model.coef, float)) * sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        looser = fit_cox(X, time, event, model.covariates, ties=model.ties, penalizer=model.penalizer / 100,
                         penalty_per_sd=model.penalty_per_sd)
    growth = np.abs(np.asarray(looser.coef, float)) * sd - scaled
    runaway = (scaled > MAX_LOG_HR_PER_SD) | (growth > MAX_GROWTH_PER_SD)
    return {str(name): float(value) for name, value, bad in zip(model.covariates, scaled, runaway) if bad}


def runaway_penalty(X: np.ndarray, time: Any, event: Any, covariates: Sequence[str], *, ties: str = "efron",
                    penalizer: float = 0.0) -> tuple[CoxModel, dict[str, Any] | None]:
    """The Cox fit to use: at ``penalizer`` when it is sound (then nothing changes, and the record is None), or,
    when its coefficients run away (:func:`runaway_factors`), refitted with the ridge penalty it needs.

    Why a ridge penalty: a penalised likelihood has a finite maximum whatever the data, as Heinze & Schemper (2002)
    proposed for monotone likelihood (they used Firth's penalty; a ridge one is what the Cox models here already
    carry, so the model, its SEs and its bundle stay the same kind). It acts per SD (``fit_cox(...,
    penalty_per_sd=True)``), as the limit it enforces does: on the factors as given it hardly acts on LDH per U/L
    or age per year and mostly on the 0/1 factors, and the refit changed when age was given in decades. Its strength
    is the smallest of :data:`RUNAWAY_PENALTIES` above ``penalizer`` at which no factor's log hazard ratio per SD
    exceeds :data:`MAX_LOG_HR_PER_SD`: the least shrinkage that gives finite, stable estimates (the largest, when
    none does). Measured on 28-patient training splits (``simulate_outcomes(40, seed)`` split as ``train --seed 1``
    splits, 12 new patients each): with 8 events (seed 2) the clinical model took penalty 1 per SD and its new
    patients' 36-month survival went from 1e-46-100 % to 4.8-100 % (1.7 % with the same penalty on the factors as
    given, which cut LDH from 3.7 to 1.3 per SD but male from 1.0 to 0.2), held-out C 0.54 -> 0.58; with 6 events
    (seed 4) penalty 0.32 per SD, from 1e-271 to 5e-5 (a new patient 1.9 SD above the mean LDH, with high stage and
    EBV DNA: every factor within 2 per SD, their sum is not), C 0.67 both. Unflagged fits are untouched.

    The sum is not capped: no bound on the training risk's SD separates sound fits from those that ran away
    together. Measured (same splits; 161 training patients from ``simulate_outcomes(230, 5000 + seed)``, seeds
    1-8): the clinical model's SD was 0.99-1.47 on 161 patients, while on 28 patients the fits giving a new patient
    36-month survival below 1e-3 had 1.69-3.38 and the others 1.39-2.64 (on 56 patients 2.97-3.27 against
    0.90-1.91); a bound 1.5 times above the sound fits (2.2) misses 1.69 (survival 1.6e-11), one below 1.69 sits
    within 15 % of sound fits. A new patient whose risk lies beyond every training patient's is flagged instead
    (:attr:`~NPCPrognosisLib.survival.nomogram.Nomogram.risk_range`).

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_covariates)
    time, event : array-like
    covariates : sequence of str
    ties : str
    penalizer : float
        The ridge strength the fit was asked for.

    Returns
    -------
    model : CoxModel
        The fit at ``penalizer``, or the refit at the chosen strength; the warnings of that fit are raised as
        :func:`fit_cox` raises them (those of the fits it replaced are not).
    record : dict or None
        ``factors`` (each runaway factor's log hazard ratio per SD at ``penalizer``), ``penalizer`` (the chosen
        strength, on the factors standardised to SD 1: ``penalty_per_sd`` True), ``asked_penalizer`` and
        ``factors_after`` (those still running away at the chosen strength: empty unless no strength of the grid
        sufficed).
    """
    X = np.asarray(X, float)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit = fit_cox(X, time, event, covariates, ties=ties, penalizer=penalizer)
    factors = runaway_factors(X, time, event, fit)
    if not factors:
        _say_again(said)
        return fit, None
    tried = [p for p in RUNAWAY_PENALTIES if p > penalizer] or [max(RUNAWAY_PENALTIES)]
    for strength in tried:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            fit = fit_cox(X, time, event, covariates, ties=ties, penalizer=strength, penalty_per_sd=True)
        # the size alone from here: against a hundredth of a large penalty, any coefficient grows by its shrinkage
        scaled = np.abs(np.asarray(fit.coef, float)) * X.std(axis=0)
        after = {str(n): float(v) for n, v in zip(covariates, scaled) if v > MAX_LOG_HR_PER_SD}
        if not after:
            break
    _say_again(said)
    return fit, {"factors": factors, "penalizer": float(strength), "penalty_per_sd": True,
                 "asked_penalizer": float(penalizer), "factors_after": after}


def _say_again(caught: Sequence[warnings.WarningMessage]) -> None:
    """Raise again the warnings a fit raised while they were held back: those of the fit that is kept."""
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)


def runaway_warning(model_name: str, record: dict[str, Any], events: int, n_factors: int) -> str:
    """The sentence ``train`` prints and every result repeats for a model refitted by :func:`runaway_penalty`:
    which model, which factors, what was done and what the user can do."""
    factors = ", ".join(f"{name} {value:.1f}" for name, value in record["factors"].items())
    return (f"the {model_name} model's Cox fit ran away (log hazard ratio per SD: {factors}; {events} events for "
            f"{n_factors} factor(s): monotone or nearly monotone likelihood), which would give new patients "
            f"survival near 0 % or 100 %; it was refitted with ridge penalty {record['penalizer']:g} on the factors "
            f"standardised to SD 1 in place of {record['asked_penalizer']:g} (the smallest at which none runs away), "
            f"so its hazard ratios are shrunk towards 1 and unproven - more events, or fewer factors, would let them "
            f"be estimated")
