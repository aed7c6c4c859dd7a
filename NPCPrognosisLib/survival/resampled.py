"""The bootstrap's metrics, computed from what stays the same between resamples of one cohort.

``evaluate`` bootstraps Harrell's C, Uno's C, the time-dependent AUCs and the integrated Brier score on 1000
resamples of every model's patients. Through scikit-survival each call re-validates its inputs (sklearn
``check_array``, about two thirds of the time) and refits the censoring Kaplan-Meier, which never changes: the
censoring distribution is that of the whole evaluated cohort, and a patient's weight depends only on its own
follow-up. Here the censoring distribution is fitted once (sksurv's own ``CensoringDistributionEstimator``), each
patient's weights are looked up once, and a resample only indexes them.

The arithmetic is sksurv 0.28's, operation for operation and summed in the same order (the concordance sums
run over the events in ``np.argsort(time)`` order, as ``_estimate_concordance_index`` loops), so every bootstrap
draw, and so every interval, is bit-identical to calling :func:`~NPCPrognosisLib.survival.metrics.harrell_c`,
``uno_c``, ``td_auc`` and ``integrated_brier`` on the resample (``Testing/Python/test_resampled_metrics.py``
pins that against a plain loop). The concordance counts every comparable pair at once (an n x n matrix per
resample: meant for cohorts of up to a few thousand patients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIED_TOL = 1e-8  # sksurv's default tolerance for tied risk scores


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weight: np.ndarray,
                tied_tol: float = TIED_TOL) -> float:
    """sksurv's weighted concordance (``_estimate_concordance_index``) without its per-event Python loop.

    Harrell's C with unit weights; Uno's C with weights 1 / G(t)^2 for the events before tau and 0 otherwise.

    Parameters
    ----------
    time, event, risk, weight : ndarray
        One value per patient (float, bool, float, float), checked by the caller.
    tied_tol : float
        Risk scores this close count as tied (half a concordant pair).

    Returns
    -------
    c : float
        NaN when the comparable pairs carry no weight (sksurv divides 0 by 0 there).

    Raises
    ------
    ValueError
        Where sksurv raises: fewer than two patients, or no event before the last follow-up
        (``NoComparablePairException``, a ValueError).
    """
    if len(time) < 2:
        raise ValueError("Need a minimum of two samples")
    order = np.argsort(time)  # sksurv's (unstable) sort: the same order of tied events, so the same sums
    visited = order[event[order]]  # the events, in the order sksurv's loop visits them
    if not len(visited) or (len(visited) == 1 and visited[0] == order[-1] and time[order[-1]] > time[order[-2]]):
        raise ValueError("Data has no comparable pairs, cannot estimate concordance index.")
    # an event is comparable with every later patient and with the censored at its own time
    t_i, r_i = time[visited][:, None], risk[visited][:, None]
    comparable = (time[None, :] > t_i) | ((time[None, :] == t_i) & ~event[None, :])
    ties = comparable & (np.absolute(risk[None, :] - r_i) <= tied_tol)
    n_con = (comparable & (risk[None, :] < r_i) & ~ties).sum(axis=1)
    n_ties = ties.sum(axis=1)
    n_pairs = comparable.sum(axis=1)
    w = weight[visited]
    # numerator += w_i * n_con + 0.5 * w_i * n_ties, one event after another: a sequential (cumulative) sum
    numerator = np.cumsum(w * n_con + 0.5 * w * n_ties)[-1]
    denominator = np.cumsum(w * n_pairs)[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(numerator / denominator)


@dataclass(frozen=True)
class ResampledIPCW:
    """One cohort's censoring weights, looked up once per patient, for the metrics of its bootstrap resamples.

    Built by :meth:`fit`; every method takes a resample's ``rows`` (indices into the cohort) and its arrays.
    ``*_bad`` marks the patients whose censoring survival is 0 (sksurv raises for a sample that holds one).
    """

    horizon: float
    uno_weight: np.ndarray
    uno_bad: np.ndarray
    auc_ipcw: np.ndarray
    auc_bad: np.ndarray
    clipped_time: np.ndarray
    brier_g_at_time: np.ndarray
    brier_grid: np.ndarray | None
    brier_g_at_grid: np.ndarray | None

    @classmethod
    def fit(cls, censoring_time: np.ndarray, censoring_event: np.ndarray, time: np.ndarray, event: np.ndarray,
            horizon: float, brier_grid: np.ndarray | None = None) -> ResampledIPCW:
        """The censoring Kaplan-Meier of ``censoring_*`` (sksurv ``CensoringDistributionEstimator``, as every
        IPCW metric of :mod:`~NPCPrognosisLib.survival.metrics` fits it) and each scored patient's weights.

        Parameters
        ----------
        censoring_time, censoring_event : ndarray
            What the censoring distribution is estimated from (the scored cohort's own outcomes).
        time, event : ndarray
            The scored cohort, checked.
        horizon : float
            :func:`~NPCPrognosisLib.survival.metrics.ipcw_horizon` of ``censoring_time``: Uno's tau and the clip
            of the scored times.
        brier_grid : ndarray, optional
            The months of the integrated Brier score (sorted and made unique, as sksurv does).
        """
        from sksurv.nonparametric import CensoringDistributionEstimator
        from sksurv.util import Surv

        cens = CensoringDistributionEstimator().fit(Surv.from_arrays(event=censoring_event.astype(bool),
                                                                     time=censoring_time.astype(float)))
        # Uno's C: 1 / G(T) squared for the events before tau (concordance_index_ipcw); G at T < tau is defined
        uno = event & (time < horizon)
        g_uno = np.ones(len(time))
        if uno.any():  # sksurv's check_array refuses an empty array
            g_uno[uno] = cens.predict_proba(time[uno])
        with np.errstate(divide="ignore"):
            uno_weight = np.where(uno, np.square(1.0 / g_uno), 0.0)
        # the td-AUC and the Brier score score the times clipped below the horizon (metrics._clip_test_times)
        clipped = np.minimum(time, horizon)
        g_clip = cens.predict_proba(clipped)
        with np.errstate(divide="ignore"):
            auc_ipcw = np.where(event, 1.0 / g_clip, 0.0)  # predict_ipcw
        g_brier = g_clip.copy()
        g_brier[g_brier == 0] = np.inf  # brier_score's handling of a zero censoring survival
        g_grid = None
        if brier_grid is not None:
            brier_grid = np.unique(np.asarray(brier_grid, float))
            g_grid = cens.predict_proba(brier_grid)
            g_grid[g_grid == 0] = np.inf
        return cls(horizon=float(horizon), uno_weight=uno_weight, uno_bad=uno & (g_uno == 0), auc_ipcw=auc_ipcw,
                   auc_bad=event & (g_clip == 0), clipped_time=clipped, brier_g_at_time=g_brier,
                   brier_grid=brier_grid, brier_g_at_grid=g_grid)

    def uno_c(self, rows: np.ndarray, time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
        """Uno's C of a resample up to the horizon (``metrics.uno_c`` with tau = horizon)."""
        if not (event & (time < self.horizon)).any():
            raise ValueError("no test events before tau")
        if self.uno_bad[rows].any():
            raise ValueError("censoring survival function is zero at one or more time points")
        return concordance(time, event, risk, self.uno_weight[rows])

    def td_auc(self, rows: np.ndarray, event: np.ndarray, risk: np.ndarray, t: float) -> float:
        """Cumulative/dynamic AUC of a resample at ``t`` (``metrics.td_auc``'s value, NaN where it gives None):
        sksurv's ``cumulative_dynamic_auc`` for one time point."""
        tc = self.clipped_time[rows]
        if not (t >= tc.min() and t < tc.max() and t < self.horizon and (event & (tc <= t)).any()
                and (tc > t).any()) or self.auc_bad[rows[event]].any():
            return float("nan")
        estimate = risk[:, np.newaxis]
        o = np.argsort(-estimate, axis=0)
        test_time = np.take_along_axis(tc[:, np.newaxis], o, axis=0)
        test_event = np.take_along_axis(event[:, np.newaxis], o, axis=0)
        estimate = np.take_along_axis(estimate, o, axis=0)
        ipcw = np.take_along_axis(self.auc_ipcw[rows][:, np.newaxis], o, axis=0)
        times_2d = np.full((len(rows), 1), float(t))
        is_case = (test_time <= times_2d) & test_event
        is_control = test_time > times_2d
        estimate_diff = np.concatenate((np.broadcast_to(np.inf, (1, 1)), estimate))
        is_tied = np.absolute(np.diff(estimate_diff, axis=0)) <= TIED_TOL
        cumsum_tp = np.cumsum(is_case * ipcw, axis=0)
        cumsum_fp = np.cumsum(is_control, axis=0)
        true_pos = (cumsum_tp / cumsum_tp[-1])[:, 0]
        false_pos = (cumsum_fp / is_control.sum(axis=0))[:, 0]
        idx = np.flatnonzero(is_tied[:, 0]) - 1  # only the last estimate of tied risk scores
        auc = float(np.trapezoid(np.r_[0, np.delete(true_pos, idx)], np.r_[0, np.delete(false_pos, idx)]))
        return auc if np.isfinite(auc) else float("nan")

    def integrated_brier(self, rows: np.ndarray, event: np.ndarray, survival: np.ndarray) -> float:
        """Integrated Brier score of a resample (sksurv ``integrated_brier_score``) over the months of
        :attr:`brier_grid` inside its follow-up, NaN with fewer than two (``metrics.integrated_brier``'s rules);
        ``survival`` is the resample's (patients, grid) predicted survival."""
        tc = self.clipped_time[rows]
        keep = (self.brier_grid >= tc.min()) & (self.brier_grid < tc.max()) & (self.brier_grid < self.horizon)
        grid, survival = self.brier_grid[keep], survival[:, keep]
        if len(grid) < 2 or not np.all(np.isfinite(survival)):
            return float("nan")
        g_time, g_grid = self.brier_g_at_time[rows], self.brier_g_at_grid[keep]
        scores = np.empty(len(grid), dtype=float)
        for i, t in enumerate(grid):
            est = survival[:, i]
            is_case = (tc <= t) & event
            is_control = tc > t
            scores[i] = np.mean(np.square(est) * is_case.astype(int) / g_time
                                + np.square(1.0 - est) * is_control.astype(int) / g_grid[i])
        ibs = float(np.trapezoid(scores, grid) / (grid[-1] - grid[0]))
        return ibs if np.isfinite(ibs) else float("nan")
