"""What the training split says about new patients before any external test: Harrell's bootstrap optimism
correction of the training C-index and the nested cross-validated C-index, each refitting the whole procedure.

Why both: the apparent C of a model scored on the patients it was fitted to is optimistic (the LASSO chose
features that happen to rank them), and the model selection picks the best of many candidates by
cross-validation, so its own cross-validated C is optimistic too. The bootstrap refits the chosen procedure on
resamples; the nested cross-validation repeats the selection inside each outer fold.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.manifest import Manifest
from NPCPrognosisLib.pipeline.fit import COX_PENALIZER, RAD_SCORE_FOLDS, ebv_fill_value, fit_models
from NPCPrognosisLib.radiomics.signature import SignatureSettings
from NPCPrognosisLib.survival.splits import event_folds

log = logging.getLogger(__name__)

#: Bootstrap replicates of the optimism correction printed by ``train`` (each refits the whole procedure).
OPTIMISM_BOOTSTRAPS = 20
#: Outer folds of the nested cross-validation of the whole procedure, model selection included.
NESTED_FOLDS = 5
#: Fewest training events per factor of the nomogram for its optimism-corrected C to be read as an estimate
#: (:func:`too_few_events_warning`).
MIN_EVENTS_PER_FACTOR = 5


class _Collector(logging.Handler):
    """This package's log records of WARNING and above, kept as text; lower ones go on to the root's handlers
    (``--verbose`` still shows them)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())
        else:
            logging.getLogger().handle(record)


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The warnings raised inside (``warnings.warn`` and this package's WARNING log records), as a list of texts,
    instead of printed.

    Why: a refit of the whole procedure on a bootstrap resample or an outer fold warns as ``train`` does (a Cox
    fit separating on 'ldh', "Rad-score cross-fitting skipped ...; the Cox models use the in-sample Rad-score"),
    and twenty refits printed dozens of such lines under ``train``, read as findings about the bundle's models,
    which had none of them. The refits' warnings are counted instead (:func:`refit_warnings_note`).
    """
    messages: list[str] = []
    logger = logging.getLogger("NPCPrognosisLib")
    handler, propagate = _Collector(messages), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def refit_warnings_note(per_refit: Sequence[Sequence[str]], what: str) -> str | None:
    """One line for the user about the warnings of ``what`` (e.g. "bootstrap refits of the optimism correction"),
    each refit's list in ``per_refit``; None when none warned. Each distinct warning is logged at INFO with the
    number of refits that gave it."""
    warned = [messages for messages in per_refit if messages]
    if not warned:
        return None
    counts = Counter(message for messages in warned for message in dict.fromkeys(messages))
    for message, n in counts.most_common():
        log.info("%s, %d of %d: %s", what, n, len(per_refit), message)
    common, n = counts.most_common(1)[0]
    return (f"{len(warned)} of the {len(per_refit)} {what} warned (refits on parts or resamples of the training "
            f"patients, not the bundle's models; {len(counts)} distinct warning(s), each listed with --verbose); the "
            f"commonest, in {n}: {common}")


def _bootstrap_optimism(manifest: Manifest, features: pd.DataFrame, endpoint: str,
                        settings: SignatureSettings | None, seed: int,
                        choices: dict[str, Any] | None = None) -> tuple[dict[str, float] | None, list[str]]:
    """One of Harrell's bootstrap replicates: the whole procedure refitted on a resample, its C on the resample
    minus its C on the original patients (module-level so a process pool can run it), and the refit's warnings
    (:func:`collected_warnings`). None for the C when the resample cannot be fitted (e.g. too few events)."""
    from NPCPrognosisLib.survival.metrics import harrell_c

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(manifest.table), len(manifest.table))
    resample = manifest.subset(rows)
    resampled_features = features.iloc[rows].reset_index(drop=True)
    with collected_warnings() as messages:
        try:
            models = fit_models(resample, resampled_features, endpoint, settings, **(choices or {}))
        except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            # a resample with too few events, or one on which the Coxnet path diverges: it counts as not fitted
            # (the report says how many replicates were), it does not stop training
            log.info("bootstrap replicate %d skipped: %s", seed, exc)
            return None, messages
        time_b, event_b = resample.outcome_arrays(endpoint)
        time, event = manifest.outcome_arrays(endpoint)
        on_resample = models.risks(resample, resampled_features)
        on_original = models.risks(manifest, features)
        optimism = {name: harrell_c(time_b, event_b, on_resample[name]) - harrell_c(time, event, on_original[name])
                    for name in models.nomograms}
    return optimism, messages


def optimism_corrected_c(manifest: Manifest, features: pd.DataFrame, endpoint: str,
                         settings: SignatureSettings | None, apparent: dict[str, float], *,
                         n_boot: int = OPTIMISM_BOOTSTRAPS, seed: int = 0, workers: int = 2,
                         choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """Harrell's bootstrap optimism correction of the training C-index of every model.

    The apparent C of a model fitted and scored on the same patients is optimistic (the LASSO chose features that
    happen to rank these patients). Each replicate refits the whole procedure (feature selection, cross-fitted
    Rad-score, Cox models) on a bootstrap resample and measures how much better it ranks the resample than the
    original patients; the mean of that optimism is subtracted from the apparent C (Harrell, Lee & Mark 1996).
    It tells a user what to expect on new patients of the same population before any external test.

    Parameters
    ----------
    manifest, features : Manifest, pandas.DataFrame
        The training patients, aligned row by row.
    endpoint : str
        ``dmfs``, ``os`` or ``pfs``.
    settings : SignatureSettings or None
        The Rad-score settings the models were fitted with.
    apparent : dict of str to float
        Each model's C-index on the training patients.
    n_boot : int
        Bootstrap replicates (each a full refit).
    seed : int
        Seed of the resamples.
    workers : int
        Replicates run in parallel processes.
    choices : dict, optional
        ``fit_models`` keywords fixed by the model selection (robustness, clinical coding, nomogram factors):
        each replicate refits with the same choices; the selection itself is not repeated.

    Returns
    -------
    report : dict
        Per model ``apparent``, ``optimism``, ``corrected`` and the number of replicates that could be fitted.
    """

    from NPCPrognosisLib.processes import worker_pool

    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_boot)]
    if workers > 1 and n_boot > 1:
        with worker_pool(workers) as pool:
            futures = [pool.submit(_bootstrap_optimism, manifest, features, endpoint, settings, s, choices)
                       for s in seeds]
            replicates = [f.result() for f in futures]
    else:
        replicates = [_bootstrap_optimism(manifest, features, endpoint, settings, s, choices) for s in seeds]
    if note := refit_warnings_note([messages for _, messages in replicates],
                                   "bootstrap refits of the optimism correction"):
        log.warning(note)
    fitted = [r for r, _ in replicates if r is not None]
    report: dict[str, Any] = {}
    for name, value in apparent.items():
        optimism = float(np.mean([r[name] for r in fitted])) if fitted else float("nan")
        corrected = float(value) - optimism
        # at or below chance once corrected: whatever the apparent C, this model will not rank new patients
        report[name] = {"apparent": float(value), "optimism": optimism, "corrected": corrected,
                        "replicates": len(fitted), "no_better_than_chance": bool(not corrected > 0.5)}
    return report


def too_few_events_warning(events: int, factors: int) -> str | None:
    """What ``train`` prints and stores beside the optimism-corrected C when the training split has fewer than
    :data:`MIN_EVENTS_PER_FACTOR` events per factor of the nomogram (``factors``); None when it has enough.

    Why: Harrell's bootstrap corrects the optimism of a procedure it can refit the same way on resamples. Below
    about 5 events per variable Cox coefficients are biased and unstable (Vittinghoff & McCulloch 2007, Am J
    Epidemiol 165:710; the usual rule asks 10, Peduzzi et al. 1995, J Clin Epidemiol 48:1503), and the bootstrap's
    corrected C is itself optimistic at low events per variable (Austin & Steyerberg 2017, Stat Methods Med Res
    26:796); a C-index to be trusted needs about 100 events (Collins, Ogundimu & Altman 2016, Stat Med 35:214).
    Measured here: 28 training patients with 8 events gave an optimism-corrected C of 0.83 beside 0.52 on the held-out
    patients, while 120-160 training patients (45-67 events, 8-factor nomogram) give a corrected C within 0.04 of
    new patients' (``Testing/Python/test_optimism.py``, ``bench/bench_optimism.py``).

    Parameters
    ----------
    events : int
        Events among the training patients.
    factors : int
        Factors of the nomogram.

    Returns
    -------
    warning : str or None
    """
    needed = MIN_EVENTS_PER_FACTOR * max(int(factors), 1)
    if events >= needed:
        return None
    return (f"{events} training events are too few for the optimism-corrected C-index to mean much: a nomogram of "
            f"{factors} factor(s) needs at least {needed} ({MIN_EVENTS_PER_FACTOR} per factor); on so few events "
            f"the correction is itself optimistic and uncertain, so judge the models only by `evaluate` on "
            f"held-out patients")


def _nested_fold(manifest: Manifest, features: pd.DataFrame, endpoint: str, settings: SignatureSettings,
                 icc: pd.Series | None, held: np.ndarray) -> tuple[dict[str, float] | None, list[str]]:
    """One outer fold of :func:`nested_cv_c`: select and fit without ``held``, score ``held`` (module-level for
    process pools), and the fold's warnings (:func:`collected_warnings`); None for the C when the fold cannot be
    fitted."""
    from NPCPrognosisLib.pipeline.selection import select_models
    from NPCPrognosisLib.survival.metrics import harrell_c

    time, event = manifest.outcome_arrays(endpoint)
    inner, outer = manifest.subset(~held), manifest.subset(held)
    inner_features = features[~held].reset_index(drop=True)
    with collected_warnings() as messages:
        try:
            selection = select_models(inner.clinical_table(ebv_fill_value(inner)), inner_features, time[~held],
                                      event[~held], settings, icc, rad_score_folds=RAD_SCORE_FOLDS,
                                      penalizer=COX_PENALIZER, workers=1, centres=inner.centres)
            models = fit_models(inner, inner_features, endpoint, selection.settings, icc=icc,
                                clinical_coding=selection.clinical_coding, nomogram_factors=selection.nomogram,
                                harmonise=selection.harmonise)
            risks = models.risks(outer, features[held].reset_index(drop=True))
            scores = {name: harrell_c(time[held], event[held], risks[name]) for name in risks.columns}
        except (InputError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            log.info("nested cross-validation fold skipped: %s", exc)
            scores = None
    return scores, messages


def nested_cv_c(manifest: Manifest, features: pd.DataFrame, endpoint: str, settings: SignatureSettings,
                icc: pd.Series | None, *, folds: int = NESTED_FOLDS, seed: int = 0,
                workers: int = 2) -> dict[str, Any]:
    """Nested cross-validated C-index of every model: the whole procedure, model selection included, refitted
    without each outer fold and scored on it.

    The selection picks the best of dozens of candidates by cross-validation, so its own cross-validated C is the
    best of several noisy numbers; only a selection repeated inside each outer fold says what the chosen model will
    do on patients the choice never saw. (The per-feature ICCs are outcome-free and are reused.)

    Parameters
    ----------
    manifest, features : Manifest, pandas.DataFrame
        The training patients, aligned row by row.
    endpoint : str
        ``dmfs``, ``os`` or ``pfs``.
    settings : SignatureSettings
        The base configuration the selection starts from.
    icc : pandas.Series or None
        Per-feature robustness.
    folds : int
        Outer folds.
    seed : int
        Seed of the outer folds.
    workers : int
        Processes of each inner selection.

    Returns
    -------
    report : dict
        Per model the mean C over outer folds, its standard error and the folds that could be fitted.
    """

    from NPCPrognosisLib.processes import worker_pool

    _, event = manifest.outcome_arrays(endpoint)
    fold = event_folds(event, folds, seed + 104723)
    args = [(manifest, features, endpoint, settings, icc, fold == k) for k in range(folds)]
    if workers > 1:
        # outer folds in parallel, each selection on one process: the selection's serial parts parallelise too
        with worker_pool(workers) as pool:
            results = list(pool.map(_nested_fold, *zip(*args)))
    else:
        results = [_nested_fold(*a) for a in args]
    if note := refit_warnings_note([messages for _, messages in results],
                                   "outer folds of the nested cross-validation"):
        log.warning(note)
    scores: dict[str, list[float]] = {}
    for result, _ in results:
        for name, value in (result or {}).items():
            scores.setdefault(name, []).append(value)
    report = {}
    for name, values in scores.items():
        values_array = np.asarray(values, float)
        se = float(values_array.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        report[name] = {"c_index": float(values_array.mean()), "se": se, "folds": len(values)}
    return report
