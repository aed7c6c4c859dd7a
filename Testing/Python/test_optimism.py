"""Harrell's optimism correction of the training C-index, checked against patients the models never saw."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from NPCPrognosisLib.datasets.synth import simulate_outcomes, tabular_radiomics
from NPCPrognosisLib.io.manifest import Manifest
from NPCPrognosisLib.pipeline.fit import fit_models
from NPCPrognosisLib.pipeline.internal_validation import optimism_corrected_c
from NPCPrognosisLib.radiomics.signature import RadiomicsSignature, SignatureSettings
from NPCPrognosisLib.survival.metrics import harrell_c

N_TRAIN, N_TEST, N_NOISE = 120, 2000, 150


def _features(records: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return tabular_radiomics(records, N_NOISE, rng)


@pytest.mark.slow
def test_optimism_corrected_c_predicts_the_c_on_new_patients():
    records = simulate_outcomes(N_TRAIN + N_TEST, 4242)
    features = _features(records, np.random.default_rng(7))
    train, test = records.iloc[:N_TRAIN].reset_index(drop=True), records.iloc[N_TRAIN:].reset_index(drop=True)
    train_features = features.iloc[:N_TRAIN].reset_index(drop=True)
    test_features = features.iloc[N_TRAIN:].reset_index(drop=True)
    manifest = Manifest(table=train, root=Path("."), source=Path("train.csv"))
    test_manifest = Manifest(table=test, root=Path("."), source=Path("test.csv"))
    settings = SignatureSettings(seed=0)
    models = fit_models(manifest, train_features, "dmfs", settings)
    time, event = manifest.outcome_arrays("dmfs")
    apparent = {name: harrell_c(time, event, risk) for name, risk in models.risks(manifest, train_features).items()}
    test_time, test_event = test_manifest.outcome_arrays("dmfs")
    held_out = {name: harrell_c(test_time, test_event, risk)
                for name, risk in models.risks(test_manifest, test_features).items()}
    report = optimism_corrected_c(manifest, train_features, "dmfs", settings, apparent, n_boot=20, seed=1,
                                  workers=2)
    for name in ("nomogram", "clinical"):
        block = report[name]
        print(f"{name}: apparent {block['apparent']:.3f}, optimism-corrected {block['corrected']:.3f}, "
              f"new patients {held_out[name]:.3f} ({block['replicates']} replicates)")
        assert block["replicates"] >= 18
        assert block["corrected"] == pytest.approx(block["apparent"] - block["optimism"])
        assert block["apparent"] > held_out[name]  # the training C is optimistic ...
        assert block["optimism"] > 0  # ... the bootstrap sees it ...
        # ... and the corrected value is closer to what new patients show, within 0.04
        assert abs(block["corrected"] - held_out[name]) < abs(block["apparent"] - held_out[name])
        assert abs(block["corrected"] - held_out[name]) < 0.04


def test_folds_keep_the_copies_of_a_patient_together():
    from NPCPrognosisLib.survival.splits import event_folds

    rng = np.random.default_rng(11)
    event = rng.random(150) < 0.4
    # distinct labels: the folds of the rows themselves, unchanged
    np.testing.assert_array_equal(event_folds(event, 5, 3, groups=[f"P{i}" for i in range(150)]),
                                  event_folds(event, 5, 3))
    rows = rng.integers(0, 150, 150)  # a bootstrap resample: about a third of the patients twice or more
    groups = np.array([f"P{i}" for i in rows])
    fold = event_folds(event[rows], 5, 3, groups=groups)
    for label in np.unique(groups):
        assert len(set(fold[groups == label])) == 1, label
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    # still stratified by event status: every fold holds close to the resample's share of events
    shares = [event[rows][fold == k].mean() for k in range(5)]
    assert max(shares) - min(shares) < 0.2
    # without the groups, copies of a patient land in different folds (what the groups prevent)
    plain = event_folds(event[rows], 5, 3)
    assert any(len(set(plain[groups == label])) > 1 for label in np.unique(groups))


def test_cross_fitted_rad_score_scores_the_copies_of_a_patient_from_one_fold():
    """Each copy of a resampled patient gets its out-of-fold Rad-score from a signature fitted without any copy
    of it: copies share a fold, so they share the score."""
    from NPCPrognosisLib.radiomics.signature import cross_fitted_rad_score

    records = simulate_outcomes(140, 77)
    features = _features(records, np.random.default_rng(5))
    rows = np.random.default_rng(6).integers(0, len(records), len(records))
    resample = features.iloc[rows].reset_index(drop=True)
    time = records["dmfs_time"].to_numpy(float)[rows]
    event = records["dmfs_event"].to_numpy(bool)[rows]
    groups = records["patient_id"].to_numpy()[rows]
    settings = SignatureSettings(seed=0)
    grouped = cross_fitted_rad_score(resample, time, event, settings, 5, groups=groups)
    plain = cross_fitted_rad_score(resample, time, event, settings, 5)
    duplicated = [g for g in np.unique(groups) if (groups == g).sum() > 1]
    assert len(duplicated) > 20
    assert all(np.ptp(grouped[groups == g]) < 1e-12 for g in duplicated)
    assert any(np.ptp(plain[groups == g]) > 1e-6 for g in duplicated)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_refits_warnings_are_counted_in_one_line_not_printed_as_the_bundles(workers, caplog, capfd):
    # 28 training patients: most bootstrap refits separate on a clinical factor or skip the Rad-score's
    # cross-fitting; each printed its warning under `train` ("Cox coefficient of 'ldh' is implausibly large ...",
    # "... the Cox models use the in-sample Rad-score"), read as findings about the bundle's models
    import logging
    import warnings

    from NPCPrognosisLib.pipeline.internal_validation import _bootstrap_optimism

    records = simulate_outcomes(28, 5)
    features = tabular_radiomics(records, 40, np.random.default_rng(3))
    manifest = Manifest(table=records, root=Path("."), source=Path("train.csv"))
    settings, apparent = SignatureSettings(seed=0), {"nomogram": 0.8, "clinical": 0.8}
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        report = optimism_corrected_c(manifest, features, "dmfs", settings, apparent, n_boot=4, seed=1,
                                      workers=workers)
    assert not [str(w.message) for w in caught] and "implausibly" not in capfd.readouterr().err
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, loud
    assert any(r.levelno == logging.INFO and "bootstrap refits of the optimism correction, " in r.getMessage()
               for r in caplog.records)  # each distinct one for --verbose
    # the count is the refits' own: each replicate run alone, with the warnings it collected
    seeds = [int(s) for s in np.random.SeedSequence(1).generate_state(4)]
    alone = [_bootstrap_optimism(manifest, features, "dmfs", settings, s) for s in seeds]
    warned = sum(bool(messages) for _, messages in alone)
    assert warned >= 1 and loud[0].startswith(f"{warned} of the 4 bootstrap refits of the optimism correction warned")
    fitted = [optimism for optimism, _ in alone if optimism is not None]
    assert report["nomogram"]["replicates"] == len(fitted)
    assert report["nomogram"]["optimism"] == pytest.approx(np.mean([r["nomogram"] for r in fitted]))


def _tabular_split(n_train: int, seed: int, n_test: int = 1000, n_noise: int = 150):
    """A tabular cohort as ``bench/bench_optimism.py`` draws it: training and new patients, manifest and features."""
    records = simulate_outcomes(n_train + n_test, 5000 + seed)
    features = tabular_radiomics(records, n_noise, np.random.default_rng(seed))
    parts = []
    for rows in (slice(0, n_train), slice(n_train, None)):
        parts.append((Manifest(table=records.iloc[rows].reset_index(drop=True), root=Path("."),
                               source=Path("train.csv")), features.iloc[rows].reset_index(drop=True)))
    return parts


def test_a_rad_score_the_refits_do_not_reproduce_is_rescaled_so_new_patients_survival_stays_between():
    """30 training patients, 10 events: the fold signatures select (almost) nothing, the full one seven features.
    Fitted on the narrow cross-fitted score, the nomogram's Rad-score weight (4.5) made 1,000 new patients' 36-month
    survival 0 % or 100 %; rescaled onto that scale it stays inside, and the radiomics model reads new patients'
    Rad-scores within the range it was fitted on."""
    (manifest, features), (new, new_features) = _tabular_split(30, 8)
    models = fit_models(manifest, features, "dmfs", SignatureSettings(seed=8))
    factors = models.inputs(new, new_features)
    survival = models.nomograms["nomogram"].survival(factors, [36])[:, 0]
    assert 0.05 < survival.min() and survival.max() < 0.995, (survival.min(), survival.max())
    radiomics = models.nomograms["radiomics"]
    inside = (factors["rad_score"] >= radiomics.low[0] - 0.1) & (factors["rad_score"] <= radiomics.high[0] + 0.1)
    assert inside.mean() > 0.95
    rescaling = models.rad_score_rescaling
    assert rescaling is not None and rescaling["slope"] < 0.3
    assert rescaling["sd_in_sample"] > 3 * rescaling["sd_cross_fitted"]
    assert "did not hold up" in rescaling["warning"]
    # the rescaled score is the least-squares line of the cross-fitted on the in-sample score
    raw = replace(models.signature, calibration_slope=1.0, calibration_offset=0.0).rad_score(features)
    slope, offset = np.polyfit(raw, models.cross_fitted_rad_score, 1)
    assert rescaling["slope"] == pytest.approx(slope) and rescaling["offset"] == pytest.approx(offset)
    # a bundle keeps it: the signature's dictionary round-trips, and one stored before reads unchanged
    again = RadiomicsSignature.from_dict(models.signature.to_dict())
    np.testing.assert_allclose(again.rad_score(new_features), factors["rad_score"])
    old = {k: v for k, v in models.signature.to_dict().items() if not k.startswith("calibration_")}
    np.testing.assert_allclose(RadiomicsSignature.from_dict(old).rad_score(features), raw)


def test_a_normal_cohorts_rad_score_is_read_as_fitted():
    # 160 training patients: the one of eight measured whose in-sample Rad-score is spread most beyond the
    # cross-fitted one (SD ratio 2.1, slope 0.42): still no rescaling
    (manifest, features), _ = _tabular_split(160, 3)
    models = fit_models(manifest, features, "dmfs", SignatureSettings(seed=3))
    assert models.rad_score_rescaling is None
    assert (models.signature.calibration_slope, models.signature.calibration_offset) == (1.0, 0.0)


def test_the_rescaling_rule_fires_below_the_slope_and_not_above():
    from NPCPrognosisLib.pipeline.fit import MIN_RAD_SCORE_SLOPE, rad_score_rescaling

    rng = np.random.default_rng(0)
    in_sample = rng.normal(size=200)
    noise = rng.normal(size=200)
    for slope in (0.1, MIN_RAD_SCORE_SLOPE - 0.02):
        record = rad_score_rescaling(in_sample, 0.05 + slope * in_sample + 0.01 * noise)
        assert record is not None and record["slope"] == pytest.approx(slope, abs=0.01)
        assert record["offset"] == pytest.approx(0.05, abs=0.01)
    assert rad_score_rescaling(in_sample, (MIN_RAD_SCORE_SLOPE + 0.02) * in_sample + 0.01 * noise) is None
    # a full score the refits rank the other way round carries nothing: slope 0, every patient the same score
    assert rad_score_rescaling(in_sample, -0.5 * in_sample)["slope"] == 0.0


def test_the_optimism_warning_fires_below_five_events_per_nomogram_factor_and_not_above():
    from NPCPrognosisLib.pipeline.internal_validation import too_few_events_warning

    assert too_few_events_warning(40, 8) is None and too_few_events_warning(60, 8) is None
    warning = too_few_events_warning(39, 8)
    assert warning is not None and warning.startswith("39 training events are too few") and "40" in warning
    assert too_few_events_warning(8, 8) is not None


def test_the_rad_score_variance_is_the_jackknife_of_the_fold_signatures():
    """Five fold signatures of one feature with coefficients c_k score a patient c_k * z: the delete-a-fold
    jackknife variance is 4/5 * sum (c_k - mean c)^2 * z^2, averaged over the patients."""
    from NPCPrognosisLib.radiomics.signature import rad_score_variance

    coef = np.array([0.2, 0.5, 0.3, 0.0, 0.4])
    signatures = [RadiomicsSignature(features=["t1c_gtvp_original_shape_MeshVolume"], impute=[0.0], mean=[1.0],
                                     sd=[2.0], coef=[float(c)], alpha=0.1) for c in coef]
    values = np.array([-3.0, 1.0, 2.0, 5.0])
    table = pd.DataFrame({"patient_id": list("abcd"), "t1c_gtvp_original_shape_MeshVolume": values})
    z = (values - 1.0) / 2.0
    expected = 4 / 5 * ((coef - coef.mean()) ** 2).sum() * np.mean(z ** 2)
    assert rad_score_variance(signatures, table) == pytest.approx(expected)


def test_a_nomograms_survival_interval_carries_the_rad_scores_own_variance():
    """The Cox covariance takes the Rad-score as measured; its selection on the training patients is not. Every
    model weighing the Rad-score keeps the jackknife variance of the cross-fitting signatures, and a new patient's
    interval of log H widens by the Rad-score weight squared times it (on 160 patients the intervals had held the
    8,000-patient refit's survival in 60-72 % of new patients; docs/generalisation.md). A patient at the training
    means gets a risk-score SE from it; the clinical model, without a Rad-score, is unchanged; a bundle keeps it."""
    import json

    from NPCPrognosisLib.radiomics.signature import fold_signatures, rad_score_variance
    from NPCPrognosisLib.survival.nomogram import Nomogram
    from NPCPrognosisLib.survival.patient import risk_uncertainty

    (manifest, features), (new, new_features) = _tabular_split(160, 3, n_test=50)
    models = fit_models(manifest, features, "dmfs", SignatureSettings(seed=3))
    time, event = manifest.outcome_arrays("dmfs")
    folds = fold_signatures(features, time, event, SignatureSettings(seed=3), 5,
                            groups=np.asarray(manifest.patient_ids))
    variance = rad_score_variance(folds[1], features)
    assert variance > 0.01
    nomogram, clinical = models.nomograms["nomogram"], models.nomograms["clinical"]
    assert nomogram.score_variance == {"rad_score": pytest.approx(variance)}
    assert models.nomograms["radiomics"].score_variance == nomogram.score_variance
    assert clinical.score_variance is None
    factors = models.inputs(new, new_features)
    months = [36.0, 60.0]
    weight = float(np.asarray(nomogram.model.coef)[nomogram.factors.index("rad_score")])
    assert weight > 0.1
    cox_se = nomogram.model.log_cumhaz_se(factors[nomogram.factors].to_numpy(float), months)
    survival = nomogram.survival(factors, months)
    lower, upper = nomogram.survival_interval(factors, months)
    half_width = np.log(np.log(lower) / np.log(survival))  # S ** exp(z se): log(-log) moves by z se
    np.testing.assert_allclose(half_width, 1.96 * np.sqrt(cox_se ** 2 + weight ** 2 * variance), rtol=1e-9)
    assert (half_width > 1.96 * cox_se * 1.05).all()
    again = Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    np.testing.assert_allclose(again.survival_interval(factors, months)[0], lower)
    means = dict(zip(nomogram.factors, nomogram.model.means))
    bundle = type("Bundle", (), {"nomograms": models.nomograms})()
    assert risk_uncertainty(bundle, means)["risk_se"] == pytest.approx(abs(weight) * math.sqrt(variance))
    clinical_lower = clinical.survival_interval(factors, months)[0]
    clinical_se = clinical.model.log_cumhaz_se(factors[clinical.factors].to_numpy(float), months)
    np.testing.assert_allclose(np.log(np.log(clinical_lower) / np.log(clinical.survival(factors, months))),
                               1.96 * clinical_se, rtol=1e-9)
