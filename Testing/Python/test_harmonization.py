"""ComBat harmonisation: simulated centres with known scanner effects, checked against neuroCombat itself."""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.radiomics.harmonization import ComBatModel, fit_combat, harmonised_training

# `neuroCombat.neuroCombat` is the function (the package re-exports it), so reach the module through importlib.
nc = importlib.import_module("neuroCombat.neuroCombat")

CENTRES = ("A", "B", "C")
N_FEATURES = 30
FEATURES = [f"t1c_gtvp_original_firstorder_F{j}" for j in range(N_FEATURES)]


class Scanners:
    """Per-feature location/scale and per-centre additive shift and multiplicative scale, all known."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.mu = rng.uniform(5.0, 50.0, N_FEATURES)
        self.sd = rng.uniform(0.5, 5.0, N_FEATURES)
        # Centre A reads low and compressed, C high and stretched; each feature reacts somewhat differently.
        self.shift = np.array([-1.0, 0.0, 1.2])[:, None] + rng.normal(0.0, 0.5, (3, N_FEATURES))
        self.scale = np.array([0.6, 1.0, 1.6])[:, None] * np.exp(rng.normal(0.0, 0.2, (3, N_FEATURES)))

    def cohort(self, n_per_centre: int, seed: int, prefix: str = "p"):
        """Features table (with a patient_id column), centre labels and the true signal of each patient."""
        rng = np.random.default_rng(seed)
        centre = np.repeat(np.arange(3), n_per_centre)
        signal = rng.normal(size=(len(centre), N_FEATURES))
        noise = 0.2 * rng.normal(size=signal.shape)
        values = self.mu + self.sd * (self.shift[centre] + self.scale[centre] * (signal + noise))
        table = pd.DataFrame(values, columns=FEATURES)
        table.insert(0, "patient_id", [f"{prefix}{k:03d}" for k in range(len(centre))])
        return table, [CENTRES[c] for c in centre], signal


@pytest.fixture(scope="module")
def scanners() -> Scanners:
    return Scanners()


@pytest.fixture(scope="module")
def training(scanners):
    table, batch, signal = scanners.cohort(40, seed=1)
    return table, batch, signal, fit_combat(table, batch)


def _direct_neurocombat(table: pd.DataFrame, batch) -> dict:
    """neuroCombat called directly (it prints its progress; keep the test output clean)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return nc.neuroCombat(dat=table[FEATURES].to_numpy(float).T, covars=pd.DataFrame({"batch": batch}),
                              batch_col="batch")


def _centre_gaps(table: pd.DataFrame, batch) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: range of the centre means in pooled within-centre SD units, and max/min centre SD."""
    batch = np.asarray(batch)
    x = table[FEATURES].to_numpy(float)
    means = np.array([np.nanmean(x[batch == c], axis=0) for c in CENTRES])
    sds = np.array([np.nanstd(x[batch == c], axis=0, ddof=1) for c in CENTRES])
    pooled = np.sqrt((sds ** 2).mean(axis=0))
    return (means.max(axis=0) - means.min(axis=0)) / pooled, sds.max(axis=0) / sds.min(axis=0)


def _signal_correlation(table: pd.DataFrame, signal: np.ndarray) -> np.ndarray:
    x = table[FEATURES].to_numpy(float)
    return np.array([np.corrcoef(x[:, j], signal[:, j])[0, 1] for j in range(N_FEATURES)])


def test_training_centres_agree_after_harmonisation(training):
    table, batch, signal, model = training
    assert model.features == FEATURES  # patient_id is not numeric: not fitted
    assert model.batches == list(CENTRES)
    harmonised = harmonised_training(table, batch, model)
    gap_before, ratio_before = _centre_gaps(table, batch)
    gap_after, ratio_after = _centre_gaps(harmonised, batch)
    assert gap_before.mean() > 1.5 and gap_before.max() > 3.0
    assert gap_after.max() < 0.35 and gap_after.mean() < 0.15
    assert ratio_before.max() > 4.0
    assert ratio_after.max() < 1.6 and np.median(ratio_after) < 1.25
    corr_before, corr_after = _signal_correlation(table, signal), _signal_correlation(harmonised, signal)
    assert corr_after.min() > 0.9
    assert corr_after.mean() > corr_before.mean() + 0.2
    pd.testing.assert_series_equal(harmonised["patient_id"], table["patient_id"])


def test_apply_reproduces_neurocombat_on_training_rows(training):
    """Independent reference: the stored estimates alone give neuroCombat's own harmonised training data."""
    table, batch, _, model = training
    direct = _direct_neurocombat(table, batch)["data"]
    np.testing.assert_allclose(model.apply(table, batch)[FEATURES].to_numpy(float), direct.T, rtol=0, atol=1e-8)


def test_apply_matches_neurocombat_from_training_on_new_patients(scanners, training, monkeypatch):
    """Same numbers as the library's neuroCombatFromTraining, which NumPy >= 2.4 stops at ``int(array)``.

    Shadowing ``int`` in the library's module (test only) lets its own formula run unchanged otherwise.
    """
    table, batch, _, model = training
    fitted = _direct_neurocombat(table, batch)
    new, new_batch, _ = scanners.cohort(15, seed=5, prefix="n")
    monkeypatch.setattr(nc, "int", lambda v: builtins.int(np.asarray(v).reshape(-1)[0]), raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        library = nc.neuroCombatFromTraining(dat=new[FEATURES].to_numpy(float).T, batch=np.asarray(new_batch),
                                             estimates=fitted["estimates"])["data"]
    np.testing.assert_allclose(model.apply(new, new_batch)[FEATURES].to_numpy(float), library.T, rtol=0, atol=1e-8)


def test_new_patients_of_known_centres_are_corrected(scanners, training):
    _, _, _, model = training
    new, batch, signal = scanners.cohort(100, seed=2, prefix="n")
    harmonised = model.apply(new, batch)
    gap_before, ratio_before = _centre_gaps(new, batch)
    gap_after, ratio_after = _centre_gaps(harmonised, batch)
    assert gap_before.mean() > 1.5
    assert gap_after.mean() < 0.45 and gap_after.mean() < 0.2 * gap_before.mean()
    assert np.median(ratio_after) < 1.35 < np.median(ratio_before)
    assert _signal_correlation(harmonised, signal).min() > 0.9
    # One patient alone is harmonised exactly as within the cohort (the formula is per patient).
    one = model.apply(new.iloc[[7]], [batch[7]])
    np.testing.assert_array_equal(one[FEATURES].to_numpy(), harmonised[FEATURES].to_numpy()[[7]])


def test_json_round_trip_and_restrict(scanners, training):
    _, _, _, model = training
    new, batch, _ = scanners.cohort(10, seed=3, prefix="n")
    expected = model.apply(new, batch)
    document = json.dumps(model.to_dict())
    assert "NaN" not in document and "Infinity" not in document
    restored = ComBatModel.from_dict(json.loads(document))
    assert restored == model
    np.testing.assert_array_equal(restored.apply(new, batch)[FEATURES].to_numpy(), expected[FEATURES].to_numpy())

    kept = [FEATURES[12], FEATURES[3], "deep_score", FEATURES[20]]
    small = restored.restrict(kept)
    assert small.features == [FEATURES[3], FEATURES[12], FEATURES[20]]  # model order; unknown names dropped
    assert small.batches == model.batches and len(small.gamma_star[0]) == 3 and len(small.delta_star) == 3
    out = ComBatModel.from_dict(json.loads(json.dumps(small.to_dict()))).apply(new, batch)
    np.testing.assert_array_equal(out[small.features].to_numpy(), expected[small.features].to_numpy())
    others = [f for f in FEATURES if f not in small.features]
    pd.testing.assert_frame_equal(out[others], new[others])


def test_int_labels_and_label_normalisation(scanners):
    table, batch, _ = scanners.cohort(10, seed=4)
    as_int = [CENTRES.index(b) + 1 for b in batch]
    model = fit_combat(table, as_int)
    assert model.batches == ["1", "2", "3"]
    # 2.0 from a CSV column with gaps, " 2 " with stray spaces and numpy ints all mean centre 2.
    variants = [2.0, " 2 ", np.int64(2), "2", "2.0"]
    rows = table.iloc[[12] * len(variants)]
    out = model.apply(rows, variants)
    assert np.ptp(out[FEATURES].to_numpy(), axis=0).max() == 0.0


def test_missing_cells_and_unharmonisable_columns(scanners):
    table, batch, _ = scanners.cohort(20, seed=6)
    rng = np.random.default_rng(0)
    table["scanner_model"] = rng.choice(["Achieva", "Skyra"], len(table))
    table["const_in_B"] = rng.normal(size=len(table))
    table.loc[np.asarray(batch) == "B", "const_in_B"] = 3.0
    table["all_missing"] = np.nan
    table["flag"] = rng.integers(0, 2, len(table)).astype(bool)
    # a contour's volume differs between centres by case mix, not by scanner: it is never harmonised, so the tumour
    # volumes other models read are the same numbers in training and for a new patient
    table["t1c_gtvp_original_shape_VoxelVolume"] = table[FEATURES[0]] * 100.0
    holes = table.copy()
    holes.loc[[0, 25, 50], FEATURES[4]] = np.nan
    holes.loc[25, FEATURES[9]] = np.nan

    model = fit_combat(holes, batch)
    assert model.features == FEATURES
    out = model.apply(holes, batch)
    for column in ("patient_id", "scanner_model", "const_in_B", "all_missing", "flag",
                   "t1c_gtvp_original_shape_VoxelVolume"):
        pd.testing.assert_series_equal(out[column], holes[column])
    assert out.loc[[0, 25, 50], FEATURES[4]].isna().all() and np.isnan(out.loc[25, FEATURES[9]])
    assert out[FEATURES].isna().sum().sum() == 4
    # The other cells of a row with a hole are harmonised exactly as without the hole.
    full = model.apply(table, batch)
    others = [f for f in FEATURES if f not in (FEATURES[4], FEATURES[9])]
    np.testing.assert_array_equal(out.loc[25, others].to_numpy(float), full.loc[25, others].to_numpy(float))
    assert not np.allclose(out.loc[25, others].to_numpy(float), table.loc[25, others].to_numpy(float))


def test_errors_name_the_centre_and_patient(training):
    table, batch, _, model = training
    new = table.iloc[:4].copy()
    new["patient_id"] = ["x1", "x2", "x3", "x4"]
    with pytest.raises(InputError, match=r"'x3'.*centre 'D'") as caught:
        model.apply(new, ["A", "B", "D", "D"])
    assert "training centres: A, B, C" in caught.value.fix
    with pytest.raises(InputError, match="'x2'.*centre .*missing"):
        model.apply(new, ["A", "  ", "B", "C"])
    with pytest.raises(InputError, match="lacks 1 harmonised"):
        model.apply(new.drop(columns=FEATURES[5]), ["A"] * 4)


def test_fit_errors(scanners):
    table, batch, _ = scanners.cohort(10, seed=8)
    with pytest.raises(InputError, match="at least two centres.*'A'"):
        fit_combat(table, ["A"] * len(table))
    few = table.iloc[:23]  # A 10, B 10, C 3
    with pytest.raises(InputError, match=r"centre 'C' has only 3 training patient\(s\)") as caught:
        fit_combat(few, batch[:23])
    assert "merge small centres" in caught.value.fix
    fit_combat(few, batch[:23], min_per_batch=3)
    labels = list(batch)
    labels[11] = np.nan
    with pytest.raises(InputError, match="patient 'p011'.*centre .*missing"):
        fit_combat(table, labels)
    labels[11] = None
    with pytest.raises(InputError, match="patient 'p011'"):
        fit_combat(table, labels)
    with pytest.raises(InputError, match="only 1 column"):
        fit_combat(table[["patient_id", FEATURES[0]]], batch)
    with pytest.raises(InputError, match="not a ComBat model"):
        ComBatModel.from_dict({"kind": "cox_ph"})
    broken = fit_combat(table, batch).to_dict()
    broken["gamma_star"][0].pop()
    with pytest.raises(InputError, match="inconsistent lengths"):
        ComBatModel.from_dict(broken)


def test_a_centre_column_with_a_gap_names_the_same_centres_as_training_and_prediction(scanners, tmp_path):
    """A spreadsheet column of centre numbers with one empty cell comes out as 1.0, 2.0: it must still be centre 1
    of training when a later manifest or `predict --centre 1` names it, never an unseen centre left unharmonised."""
    from types import SimpleNamespace

    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline.models import LoadedBundle

    table, batch, _ = scanners.cohort(10, seed=8)
    numbers = [CENTRES.index(b) + 1 for b in batch]
    rows = pd.DataFrame({"patient_id": table["patient_id"], "centre": [float(v) for v in numbers]})
    rows.loc[3, "centre"] = np.nan
    rows.to_csv(tmp_path / "m.csv", index=False)
    labels = read_manifest(tmp_path / "m.csv", require_images=False, require_clinical=False).centre_labels
    assert labels[:3] == ["1", "1", "1"] and labels[3] is None
    model = fit_combat(table, [float(v) for v in numbers])
    assert model.batches == ["1", "2", "3"]
    stale = ComBatModel.from_dict({**model.to_dict(), "batches": ["1.0", "2.0", "3.0"]})  # a bundle of before
    for fitted in (model, stale):
        out, warnings = LoadedBundle.harmonised(SimpleNamespace(combat=fitted), table.iloc[[0, 12]], ["1", 2.0],
                                                ["p000", "p012"])
        assert warnings == []
        np.testing.assert_allclose(out[FEATURES].to_numpy(), model.apply(table.iloc[[0, 12]], [1, 2])[FEATURES])
