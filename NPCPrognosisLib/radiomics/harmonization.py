"""ComBat harmonisation of radiomics features across centres (scanners, protocols).

The same tumour scanned on two MR systems gives different radiomics values: field strength, coil, sequence timing
and reconstruction add a centre-specific offset and scale to every feature. A model trained on a pooled cohort then
learns "which hospital" as much as "which tumour", and a new hospital's patients land off the training distribution.
ComBat (Johnson et al., Biostatistics 2007; for imaging Fortin et al., NeuroImage 2017/2018; for radiomics Orlhac
et al., J Nucl Med 2018) models each feature as ``x = alpha + gamma_centre + delta_centre * error`` and removes the
additive (gamma) and multiplicative (delta) centre effects, shrinking the per-centre estimates towards their mean
over features (empirical Bayes) so that small centres are not over-corrected.

The fit is done by the maintained reference implementation (``neuroCombat`` by J.-P. Fortin), on the TRAINING
patients only: harmonising training and test patients together would let the test patients shape the correction
applied to the training ones (leakage). The estimates are kept as plain numbers (:class:`ComBatModel`, JSON through
``to_dict``/``from_dict``, never pickle) so a model bundle harmonises a new patient of a known centre exactly as the
training patients were harmonised.

``neuroCombat.neuroCombatFromTraining`` (0.2.12) cannot run under NumPy >= 2.4: it converts a one-element array with
``int(np.where(...)[0])``, which NumPy 2.4 turns from a deprecation into a ``TypeError``. :meth:`ComBatModel.apply`
therefore applies the same closed-form formula itself (``(x - stand_mean) / sqrt(var_pooled)``, minus the centre's
``gamma_star``, divided by ``sqrt(delta_star)``, scaled back); the tests check it against the library's own output.

No biological covariates are protected: ComBat is fitted with the centre as its only variable. When the centres'
case mix differs strongly (e.g. one centre sees mostly T4 tumours) part of a real difference is removed too.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.manifest import centre_label

#: Version of the dict written by :meth:`ComBatModel.to_dict`.
FORMAT_VERSION = 1
#: PyRadiomics' shape class in a column name: geometry of the contour, never harmonised.
SHAPE_MARK = "_shape_"
#: What produced the estimates, stored with them so a bundle documents its harmonisation.
METHOD = "ComBat (neuroCombat 0.2.12), parametric empirical Bayes, location and scale, no covariates"
_FIX_FROM_DICT = "re-export the model with ComBatModel.to_dict() (or retrain the bundle)"


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class ComBatModel:
    """ComBat estimates learned on the training patients: enough to harmonise a new patient of a known centre."""

    #: Harmonised feature columns, in order.
    features: list[str]
    #: Centre labels seen in training (as normalised strings), in the row order of ``gamma_star``/``delta_star``.
    batches: list[str]
    #: Pooled residual variance of each feature (ComBat's standardisation scale).
    var_pooled: list[float]
    #: Location of each feature: ``stand.mean[:, 0] + mod.mean.mean(axis=1)``, as neuroCombatFromTraining uses it.
    stand_mean: list[float]
    #: Empirical-Bayes additive centre effect, centre x feature, in standardised units.
    gamma_star: list[list[float]]
    #: Empirical-Bayes multiplicative centre effect (a variance ratio), centre x feature.
    delta_star: list[list[float]]

    def restrict(self, features: Sequence[str]) -> ComBatModel:
        """The estimates of ``features`` only, so a bundle stores what its model uses.

        The per-feature estimates do not depend on which other features are kept (the empirical-Bayes priors were
        pooled at fit time and are baked into ``gamma_star``/``delta_star``), so the restricted model harmonises
        those columns exactly as the full one. Asked features that were not harmonised are dropped silently: they
        are used raw by the model, as they were in training.

        Parameters
        ----------
        features : sequence of str
            Columns to keep; the model's own order is kept.

        Returns
        -------
        ComBatModel
            A new model holding only the kept features.
        """
        wanted = {str(f) for f in features}
        keep = [j for j, name in enumerate(self.features) if name in wanted]
        return ComBatModel(
            features=[self.features[j] for j in keep],
            batches=list(self.batches),
            var_pooled=[self.var_pooled[j] for j in keep],
            stand_mean=[self.stand_mean[j] for j in keep],
            gamma_star=[[row[j] for j in keep] for row in self.gamma_star],
            delta_star=[[row[j] for j in keep] for row in self.delta_star],
        )

    def apply(self, table: pd.DataFrame, batch: Sequence[Any], *,
              patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Harmonise the model's features of ``table`` with the stored training estimates.

        The formula is ComBat's (as in ``neuroCombatFromTraining``) and works cell by cell: a patient's harmonised
        value depends only on its own value, its centre and the stored estimates, never on the other patients in
        ``table``, so one patient is scored the same alone or within a cohort. Missing (NaN) cells stay missing so
        the downstream imputation, not ComBat, decides what they become.

        Parameters
        ----------
        table : pandas.DataFrame
            One row per patient; must hold every column in :attr:`features`. Other columns are copied untouched.
        batch : sequence
            Centre of each row (ints or strings; compared as ``str(value).strip()``); every centre must be one of
            :attr:`batches`.
        patient_ids : sequence of str, optional
            Names used in error messages; by default the ``patient_id`` column, else the row index.

        Returns
        -------
        pandas.DataFrame
            A copy of ``table`` with the model's features harmonised (as float).

        Raises
        ------
        InputError
            A missing or unknown centre, a missing feature column or a non-numeric value in a feature column.
        """
        ids = _patient_labels(table, patient_ids)
        labels = _batch_labels(batch, ids)
        known = {centre_label(b): k for k, b in enumerate(self.batches)}  # also a bundle stored with "1.0"
        for label, pid in zip(labels, ids):
            if label not in known:
                raise InputError(
                    f"centre {label!r} was not among the training centres, so its scanner effect is unknown",
                    patient_id=pid,
                    fix=f"harmonisation needs the centre among the training centres: {', '.join(self.batches)}; "
                        "give the patient the label of the training centre with the same scanner and protocol, or "
                        "use a model trained without harmonisation",
                )
        result = table.copy()
        if not self.features or len(table) == 0:
            return result
        missing = [f for f in self.features if f not in table.columns]
        if missing:
            raise InputError(f"table lacks {len(missing)} harmonised feature(s), e.g. {missing[:3]}",
                             column=missing[0],
                             fix="extract features with the same radiomics parameter file as the training cohort")
        values = np.column_stack([_numeric_column(table[f], f, ids) for f in self.features])
        rows = np.array([known[label] for label in labels], dtype=int)
        gamma = np.asarray(self.gamma_star, dtype=float)[rows]
        delta = np.asarray(self.delta_star, dtype=float)[rows]
        scale = np.sqrt(np.asarray(self.var_pooled, dtype=float))
        location = np.asarray(self.stand_mean, dtype=float)
        absent = ~np.isfinite(values)
        # Any finite stand-in works (the formula is per cell); the training location keeps the arithmetic tame.
        filled = np.where(absent, location, values)
        standardised = (filled - location) / scale
        harmonised = (standardised - gamma) / np.sqrt(delta) * scale + location
        harmonised[absent] = values[absent]
        # one block assignment: ten thousand column-by-column writes would fragment the frame and take seconds
        block = pd.DataFrame(harmonised, columns=self.features, index=table.index)
        return pd.concat([result.drop(columns=self.features), block], axis=1)[list(table.columns)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-only representation; Python's float repr round-trips, so ``from_dict(to_dict())`` is exact.

        Returns
        -------
        dict
            Plain lists, strings and floats, with ``kind``, ``format_version`` and ``method``.
        """
        return {
            "kind": "combat",
            "format_version": FORMAT_VERSION,
            "method": METHOD,
            "features": [str(f) for f in self.features],
            "batches": [str(b) for b in self.batches],
            "var_pooled": [float(v) for v in self.var_pooled],
            "stand_mean": [float(v) for v in self.stand_mean],
            "gamma_star": [[float(v) for v in row] for row in self.gamma_star],
            "delta_star": [[float(v) for v in row] for row in self.delta_star],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComBatModel:
        """Rebuild a model from :meth:`to_dict`'s output, checking shapes so a garbled bundle fails here, not later.

        Parameters
        ----------
        data : dict
            As written by :meth:`to_dict` (e.g. after a JSON round trip).

        Returns
        -------
        ComBatModel

        Raises
        ------
        InputError
            Not a ComBat dict, a newer format, a missing key, inconsistent lengths or non-finite estimates.
        """
        if not isinstance(data, dict) or data.get("kind", "combat") != "combat":
            raise InputError("not a ComBat model dict", fix=_FIX_FROM_DICT)
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise InputError(f"ComBat model format version {version} is newer than this software ({FORMAT_VERSION})",
                             fix="update NPCPrognosis")
        try:
            model = cls(
                features=[str(f) for f in data["features"]],
                batches=[str(b) for b in data["batches"]],
                var_pooled=[float(v) for v in data["var_pooled"]],
                stand_mean=[float(v) for v in data["stand_mean"]],
                gamma_star=[[float(v) for v in row] for row in data["gamma_star"]],
                delta_star=[[float(v) for v in row] for row in data["delta_star"]],
            )
        except KeyError as exc:
            raise InputError(f"ComBat model dict lacks key {exc.args[0]!r}", fix=_FIX_FROM_DICT) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"ComBat model dict holds a non-number ({exc})", fix=_FIX_FROM_DICT) from None
        n_features, n_batches = len(model.features), len(model.batches)
        shapes_ok = (
            len(model.var_pooled) == n_features
            and len(model.stand_mean) == n_features
            and len(model.gamma_star) == n_batches
            and len(model.delta_star) == n_batches
            and all(len(row) == n_features for row in model.gamma_star + model.delta_star)
        )
        if not shapes_ok:
            raise InputError("ComBat model dict has inconsistent lengths", fix=_FIX_FROM_DICT)
        numbers = model.var_pooled + model.stand_mean + [v for row in model.gamma_star + model.delta_star for v in row]
        positive = model.var_pooled + [v for row in model.delta_star for v in row]
        if not all(math.isfinite(v) for v in numbers) or not all(v > 0 for v in positive):
            raise InputError("ComBat model dict holds non-finite or non-positive estimates", fix=_FIX_FROM_DICT)
        return model


# ---------------------------------------------------------------------------------------------- fitting
def fit_combat(table: pd.DataFrame, batch: Sequence[Any], *, min_per_batch: int = 5, seed: int = 0,
               patient_ids: Sequence[str] | None = None) -> ComBatModel:
    """Fit ComBat on the training rows, one column per feature, with ``neuroCombat.neuroCombat``.

    Columns that cannot be harmonised are left out of the model (and so left untouched by
    :meth:`ComBatModel.apply`): non-numeric or boolean columns (IDs, labels), all-missing columns, and columns with
    fewer than two observed values or a single repeated value within any centre (ComBat divides by the within-centre
    spread). Shape features (``_shape_`` columns: volume, surface, elongation) are left out too: they are measured
    on the contour, not on the scanner's intensities, so a centre effect in them is case mix, and the tumour
    volumes that other models read from them must be the same numbers in training and for a new patient. Missing
    cells are filled with the column mean for fitting only: the library cannot fit around them, and the mean adds
    no centre effect. Infinite values count as missing.

    Parameters
    ----------
    table : pandas.DataFrame
        Training patients, one row each. A ``patient_id`` column (or any non-numeric column) is simply not fitted.
    batch : sequence
        Centre of each row (ints or strings; stored and compared as ``str(value).strip()``).
    min_per_batch : int, default 5
        Fewest training patients a centre may have: with fewer, its scale (a variance) cannot be estimated.
    seed : int, default 0
        Accepted so every fitting step shares a signature; parametric ComBat is deterministic and does not use it.
    patient_ids : sequence of str, optional
        Names used in error messages; by default the ``patient_id`` column, else the row index.

    Returns
    -------
    ComBatModel
        The estimates for the harmonisable columns, centres sorted as the library sorts them.

    Raises
    ------
    InputError
        A missing centre label, fewer than two centres, a centre with fewer than ``min_per_batch`` patients, or fewer
        than two harmonisable columns (the empirical-Bayes priors are estimated across features).
    """
    from neuroCombat.neuroCombat import neuroCombat  # only training fits; applying needs no library

    del seed  # deterministic; see the docstring
    if min_per_batch < 2:
        raise InputError(f"min_per_batch={min_per_batch} is too small",
                         fix="use at least 2: a centre's scale is a variance and needs two patients")
    ids = _patient_labels(table, patient_ids)
    labels = _batch_labels(batch, ids)
    label_array = np.asarray(labels, dtype=str)
    centres, counts = np.unique(label_array, return_counts=True)
    if len(centres) < 2:
        only = repr(str(centres[0])) if len(centres) else "none"
        raise InputError(f"ComBat needs patients from at least two centres; the training set has one ({only})",
                         fix="train without harmonisation, or add patients from another centre")
    small = [(str(c), int(n)) for c, n in zip(centres, counts) if n < min_per_batch]
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in small)
        raise InputError(
            f"centre {small[0][0]!r} has only {small[0][1]} training patient(s); ComBat needs at least "
            f"{min_per_batch} per centre to estimate its scanner effect (too small: {listed})",
            fix="merge small centres into the label of a centre with the same scanner and protocol, or leave the "
                "centre column out and train without harmonisation",
        )
    members = [np.flatnonzero(label_array == c) for c in centres]
    features, columns = [], []
    for name in table.columns:
        if SHAPE_MARK in str(name):
            continue
        values = _fittable(table[name], members)
        if values is not None:
            features.append(str(name))
            columns.append(values)
    if len(features) < 2:
        raise InputError(
            f"only {len(features)} column(s) can be harmonised (numeric, observed and varying within every centre); "
            "ComBat's empirical-Bayes step pools its priors over at least two features",
            fix="harmonise a features table with more columns, or train without harmonisation",
        )
    matrix = np.column_stack(columns)
    means = np.nanmean(matrix, axis=0)
    matrix = np.where(np.isnan(matrix), means, matrix)
    covars = pd.DataFrame({"batch": np.asarray(labels, dtype=object)})
    # A float64 array, not a DataFrame: neuroCombat casts DataFrames to float32. It prints progress to stdout and
    # may divide 0 by 0 in its convergence test; the estimates are checked for finiteness below instead.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = neuroCombat(dat=matrix.T.astype(np.float64), covars=covars, batch_col="batch")
    estimates = fitted["estimates"]
    batches = [str(b) for b in estimates["batches"]]
    if batches != [str(c) for c in centres]:  # the library's row order of gamma/delta must be ours
        raise RuntimeError(f"neuroCombat ordered the centres {batches}, expected {list(centres)}")
    var_pooled = np.asarray(estimates["var.pooled"], dtype=float).reshape(-1)
    mod_mean = np.asarray(estimates["mod.mean"], dtype=float)
    stand_mean = np.asarray(estimates["stand.mean"], dtype=float)[:, 0] + (
        mod_mean.mean(axis=1) if mod_mean.ndim == 2 else float(mod_mean))
    gamma_star = np.asarray(estimates["gamma.star"], dtype=float)
    delta_star = np.asarray(estimates["delta.star"], dtype=float)
    bad = ~(np.isfinite(var_pooled) & np.isfinite(stand_mean) & np.isfinite(gamma_star).all(axis=0)
            & np.isfinite(delta_star).all(axis=0) & (delta_star > 0).all(axis=0) & (var_pooled > 0))
    if bad.any():
        names = [features[j] for j in np.flatnonzero(bad)]
        raise InputError(f"ComBat estimates are not finite for {len(names)} column(s), e.g. {names[:3]}",
                         column=names[0], fix="leave these columns out of the harmonised table")
    return ComBatModel(
        features=features,
        batches=batches,
        var_pooled=[float(v) for v in var_pooled],
        stand_mean=[float(v) for v in stand_mean],
        gamma_star=[[float(v) for v in row] for row in gamma_star],
        delta_star=[[float(v) for v in row] for row in delta_star],
    )


def harmonised_training(table: pd.DataFrame, batch: Sequence[Any], model: ComBatModel, *,
                        patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The training rows harmonised with their own fitted estimates (what the downstream model is trained on).

    Goes through :meth:`ComBatModel.apply` rather than neuroCombat's own output so that training and new patients
    are harmonised by the same code path and missing cells stay missing in both.

    Parameters
    ----------
    table : pandas.DataFrame
        The training rows ``model`` was fitted on.
    batch : sequence
        Their centres.
    model : ComBatModel
        From :func:`fit_combat`.
    patient_ids : sequence of str, optional
        Names used in error messages.

    Returns
    -------
    pandas.DataFrame
        A harmonised copy of ``table``.
    """
    return model.apply(table, batch, patient_ids=patient_ids)


# ---------------------------------------------------------------------------------------------- helpers
def _patient_labels(table: pd.DataFrame, patient_ids: Sequence[str] | None) -> list[str]:
    """How each row is named in an error: the given IDs, the ``patient_id`` column, else the index label."""
    if patient_ids is not None:
        ids = [str(p) for p in patient_ids]
        if len(ids) != len(table):
            raise InputError(f"{len(ids)} patient IDs for {len(table)} rows", fix="pass one ID per table row")
        return ids
    if "patient_id" in table.columns:
        return [str(p) for p in table["patient_id"]]
    return [str(p) for p in table.index]


def _batch_labels(batch: Sequence[Any], ids: list[str]) -> list[str]:
    values = list(batch)
    if len(values) != len(ids):
        raise InputError(f"{len(values)} centre labels for {len(ids)} rows", fix="pass one centre per table row")
    labels = []
    for value, pid in zip(values, ids):
        label = centre_label(value)
        if label is None:
            raise InputError("the centre (scanner) label is missing", patient_id=pid,
                             fix="fill in the patient's centre; harmonisation corrects each centre's scanner effect")
        labels.append(label)
    return labels


def _fittable(series: pd.Series, members: list[np.ndarray]) -> np.ndarray | None:
    """The column as float with non-finite values as NaN, or None when ComBat cannot harmonise it."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return None
    values = series.to_numpy(dtype=float, na_value=np.nan)
    values = np.where(np.isfinite(values), values, np.nan)
    for rows in members:
        observed = values[rows]
        observed = observed[~np.isnan(observed)]
        if observed.size < 2 or observed.min() == observed.max():
            return None
    return values


def _numeric_column(series: pd.Series, name: str, ids: list[str]) -> np.ndarray:
    """A feature column as float, naming the first patient whose value is not a number."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=float, na_value=np.nan)
    converted = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(converted.isna().to_numpy() & series.notna().to_numpy())
    if bad.size or pd.api.types.is_bool_dtype(series):
        row = int(bad[0]) if bad.size else 0
        raise InputError(f"value {series.iloc[row]!r} is not a number", patient_id=ids[row], column=name,
                         fix="the harmonised features must be numeric; check the features table")
    return converted.to_numpy(dtype=float, na_value=np.nan)
