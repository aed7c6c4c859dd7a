"""Bundles are JSON with checksums: they round-trip, and tampered or foreign bundles are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.errors import BundleError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_image, preprocess_images, preprocessed_as
from NPCPrognosisLib.io.bundle import CHECKSUM_FILE, FORMAT_VERSION, read_bundle, write_bundle


def test_bundle_round_trip_and_checksums(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\x00\x01weights")
    out = write_bundle(tmp_path / "b", {"endpoint": "dmfs", "coef": np.array([0.5, -1.25])},
                       extra_files={"weights/net.safetensors": weights})
    document = read_bundle(out)
    assert document["coef"] == [0.5, -1.25] and document["format_version"] == FORMAT_VERSION
    assert "numpy" in document["software"]
    sums = (out / CHECKSUM_FILE).read_text(encoding="utf-8")
    assert "bundle.json" in sums and "weights/net.safetensors" in sums
    assert not list(tmp_path.glob(".b.*")), "no temporary folder is left behind"


def test_tampered_bundle_is_refused(tmp_path):
    out = write_bundle(tmp_path / "b", {"endpoint": "dmfs", "coef": [0.5]})
    text = (out / "bundle.json").read_text(encoding="utf-8").replace("0.5", "5.0")
    (out / "bundle.json").write_text(text)
    with pytest.raises(BundleError, match="checksum mismatch"):
        read_bundle(out)


def test_a_bundle_document_that_is_not_a_json_object_is_refused_even_with_matching_checksums(tmp_path):
    from NPCPrognosisLib.io.bundle import sha256

    for name, text in (("broken", "{not json"), ("list", "[1, 2]")):
        out = write_bundle(tmp_path / name, {"endpoint": "dmfs"})
        (out / "bundle.json").write_text(text, encoding="utf-8")
        (out / CHECKSUM_FILE).write_text(f"{sha256(out / 'bundle.json')}  bundle.json\n", encoding="utf-8")
        with pytest.raises(BundleError, match="not valid JSON" if name == "broken" else "JSON list"):
            read_bundle(out)
    out = write_bundle(tmp_path / "outside", {"endpoint": "dmfs"})
    (tmp_path / "elsewhere.json").write_text("{}", encoding="utf-8")
    with open(out / CHECKSUM_FILE, "a", encoding="utf-8") as sums:
        sums.write(f"{sha256(tmp_path / 'elsewhere.json')}  ../elsewhere.json\n")
    with pytest.raises(BundleError, match="outside the bundle"):
        read_bundle(out)


def test_extra_file_and_wrong_version_are_refused(tmp_path):
    out = write_bundle(tmp_path / "b", {"endpoint": "dmfs"})
    (out / "evil.pkl").write_bytes(b"x")
    with pytest.raises(BundleError, match="unlisted"):
        read_bundle(out)
    (out / "evil.pkl").unlink()
    document = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    document["format_version"] = FORMAT_VERSION + 1
    write_bundle(tmp_path / "c", {k: v for k, v in document.items() if k not in ("format", "format_version")})
    raw = json.loads((tmp_path / "c" / "bundle.json").read_text(encoding="utf-8"))
    assert raw["format_version"] == FORMAT_VERSION  # the writer always stamps its own version
    with pytest.raises(BundleError, match="not a model bundle"):
        read_bundle(tmp_path / "nowhere")


def test_write_refuses_non_json_objects(tmp_path):
    with pytest.raises(TypeError, match="JSON only"):
        write_bundle(tmp_path / "b", {"model": object()})
    assert not (tmp_path / "b").exists()


def test_n4_removes_a_bias_field_and_normalisation_is_zscore_x100():
    z, y, x = np.mgrid[0:24, 0:64, 0:64]
    head = ((x - 32) ** 2 + (y - 32) ** 2) < 26 ** 2
    rng = np.random.default_rng(0)
    truth = np.where(head, 400 + 40 * rng.normal(size=head.shape), 5).astype(np.float32)
    bias = 1 + 0.6 * x / 64
    image = sitk.GetImageFromArray((truth * bias).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 4.0))
    corrected = sitk.GetArrayFromImage(preprocess_image(image, PreprocessConfig()))
    inside = head & (((x - 32) ** 2 + (y - 32) ** 2) < 22 ** 2)
    before = abs(np.corrcoef((truth * bias)[inside], x[inside])[0, 1])
    after = abs(np.corrcoef(corrected[inside], x[inside])[0, 1])
    assert before > 0.5 and after < 0.1, (before, after)
    plain = sitk.GetArrayFromImage(preprocess_image(image, PreprocessConfig(n4=False)))
    assert abs(plain[head].mean()) < 20 and 80 < plain[head].std() < 120
    # the same scan gives the same intensities whatever the machine's core count (and ITK's setting is restored)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
        on_four = sitk.GetArrayFromImage(preprocess_image(image, PreprocessConfig()))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 4
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    assert np.array_equal(on_four, corrected)


def test_preprocessed_images_are_reused_only_when_made_with_the_same_settings():
    z, y, x = np.mgrid[0:8, 0:32, 0:32]
    head = ((x - 16) ** 2 + (y - 16) ** 2) < 12 ** 2
    image = sitk.GetImageFromArray(np.where(head, 300.0 + x, 3.0).astype(np.float32))
    plain, scaled = PreprocessConfig(n4=False), PreprocessConfig(n4=False, scale=1.0)
    prepared = preprocess_images({"t2": image}, plain)
    same = preprocessed_as({"t2": image}, PreprocessConfig(n4=False), prepared, plain)
    assert same["t2"] is prepared["t2"]  # equal settings: the costly preprocessing is not repeated
    other = preprocessed_as({"t2": image}, scaled, prepared, plain)
    expected = sitk.GetArrayFromImage(preprocess_image(image, scaled))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(other["t2"]), expected)
    assert not np.allclose(expected, sitk.GetArrayFromImage(prepared["t2"]))  # the settings do differ


def test_n4_fitted_on_32_samples_per_axis_removes_a_bias_field_as_64_did_and_older_settings_keep_64():
    """A 320 x 320 matrix (as scanners with 0.6-0.7 mm pixels write): the default fit on at most 32 samples per
    axis removes a smooth bias field to below 1 % of the intensity, as the fit on 64 does (what bundles written
    before the setting existed ran with, and still run with)."""
    z, y, x = np.mgrid[0:12, 0:320, 0:320]
    head = ((x - 160) ** 2 + (y - 160) ** 2) < 130 ** 2
    rng = np.random.default_rng(4)
    truth = np.where(head, 400 + 40 * rng.normal(size=head.shape), 5).astype(np.float32)
    bias = 1 + 0.5 * x / 320 + 0.3 * np.sin(np.pi * y / 320)
    image = sitk.GetImageFromArray((truth * bias).astype(np.float32))
    image.SetSpacing((0.7, 0.7, 4.0))
    assert PreprocessConfig().n4_max_fit_size == 32
    legacy = PreprocessConfig.from_dict({"n4": True, "n4_shrink": 4})
    assert legacy.n4_max_fit_size == 64
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()
    inside = head & (((x - 160) ** 2 + (y - 160) ** 2) < 110 ** 2)
    corrected = {}
    for name, config in (("default", PreprocessConfig(scale=1.0)), ("legacy", PreprocessConfig(n4_max_fit_size=64,
                                                                                                scale=1.0))):
        corrected[name] = sitk.GetArrayFromImage(preprocess_image(image, config))
        for axis in (x, np.sin(np.pi * y / 320)):
            assert abs(np.corrcoef(corrected[name][inside], axis[inside])[0, 1]) < 0.1
    assert abs(np.corrcoef((truth * bias)[inside], x[inside])[0, 1]) > 0.4
    # what is left of the bias: the part of the corrected intensities a linear map of the true ones does not
    # explain, in z-scores (one unit is about 11 % of the tissue's intensity here): 0.057 at 32 samples, 0.040 at
    # 64, 0.12 at 16; the bias field spanned 80 % of the intensity
    design = np.c_[truth[inside], np.ones(int(inside.sum()))]
    left = {name: float(np.std(c[inside] - design @ np.linalg.lstsq(design, c[inside], rcond=None)[0]))
            for name, c in corrected.items()}
    assert left["default"] < 0.08 and left["legacy"] < 0.06, left


def test_smooth_fields_on_a_2_mm_grid_match_the_full_grid_and_older_settings_keep_the_full_grid():
    """The head mask's smoothing and the bias field are computed on a grid of about 2 mm and interpolated: on a
    0.7 mm matrix the preprocessed intensities agree with the full-grid computation (what bundles written before
    the setting ran with, and still run with) to a few hundredths of an SD, and the head masks to their edge."""
    from NPCPrognosisLib.imaging.preprocess import LEGACY_FIELD_GRID_MM, coarse_factors, head_mask

    z, y, x = np.mgrid[0:12, 0:256, 0:256]
    head = ((x - 128) ** 2 + (y - 120) ** 2) < 100 ** 2
    rng = np.random.default_rng(6)
    truth = np.where(head, 400 + 40 * rng.normal(size=head.shape), 5 + rng.normal(size=head.shape))
    bias = 1 + 0.5 * x / 256 + 0.3 * np.sin(np.pi * y / 256)
    image = sitk.GetImageFromArray((truth * bias).astype(np.float32))
    image.SetSpacing((0.7, 0.7, 4.0))
    assert PreprocessConfig().field_grid_mm == 2.0
    assert PreprocessConfig.from_dict({"n4": True}).field_grid_mm == LEGACY_FIELD_GRID_MM == 0.0
    coarse, full = (sitk.GetArrayFromImage(head_mask(image, grid)) > 0 for grid in (2.0, 0.0))
    assert (coarse != full).mean() < 5e-4 and abs(int(coarse.sum()) - int(full.sum())) < 5e-4 * full.sum()
    out = {grid: sitk.GetArrayFromImage(preprocess_image(image, PreprocessConfig(field_grid_mm=grid, scale=1.0)))
           for grid in (2.0, 0.0)}
    difference = np.abs(out[2.0] - out[0.0])[head]
    assert np.percentile(difference, 99) < 0.015 and difference.max() < 0.04, (np.percentile(difference, 99),
                                                                              difference.max())
    inside = head & (((x - 128) ** 2 + (y - 120) ** 2) < 85 ** 2)
    assert abs(np.corrcoef(out[2.0][inside], x[inside])[0, 1]) < 0.1
    # a short axis is binned only as far as the smoothing allows (four voxels left), so a thin stack still runs
    thin = sitk.GetImageFromArray(truth[:8, :64, :64].astype(np.float32))
    thin.SetSpacing((0.5, 0.5, 0.5))
    assert coarse_factors(thin, 2.0) == [4, 4, 2]
    assert sitk.GetArrayFromImage(preprocess_image(thin, PreprocessConfig())).shape == (8, 64, 64)


def test_the_head_mask_separates_air_not_bright_fat_on_a_tightly_cropped_scan():
    """A CET1W without fat suppression (fat at 300, muscle 100, tumour 170), once with air around the neck and once
    cropped to a third of air: one Otsu threshold split the fat from the rest on the cropped scan (the z-scored
    tumour came out at -14.5 against +0.48 uncropped); the head mask's lower threshold keeps the tumour's level
    (+0.49 both), and the contour check does not call the tumour "darker than the head"."""
    from NPCPrognosisLib.io.images import contour_warnings

    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[0:20, 0:96, 0:96]
    head = ((x - 48) ** 2 + (y - 48) ** 2) < 30 ** 2
    tumour = head & (((x - 42) ** 2 + (y - 46) ** 2 + (2 * (z - 10)) ** 2) < 8 ** 2)
    fat = head & ~tumour & (x > 64)  # a sixth of the head
    truth = np.where(fat, 300.0, np.where(tumour, 170.0, np.where(head, 100.0, 2.0)))
    scan = (truth * (1 + 0.03 * rng.normal(size=truth.shape))).astype(np.float32)
    levels = {}
    for name, box in (("wide", np.s_[:, :, :]), ("cropped", np.s_[:, 16:80, 16:80])):
        image = sitk.GetImageFromArray(scan[box])
        out = sitk.GetArrayFromImage(preprocess_image(image, PreprocessConfig(n4=False, scale=1.0)))
        levels[name] = float(out[tumour[box]].mean())
        labels = sitk.GetImageFromArray(tumour[box].astype(np.uint8))
        labels.CopyInformation(image)
        assert not [w for w in contour_warnings(labels, image) if "darker than the head" in w], name
    assert levels["wide"] == pytest.approx(0.49, abs=0.05) and levels["cropped"] == pytest.approx(0.49, abs=0.05)


def test_features_from_other_preprocessing_or_another_network_are_refused_by_the_bundle():
    from NPCPrognosisLib.errors import InputError
    from NPCPrognosisLib.io.bundle import network_checksum
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.resources import DEMO_BUNDLE, DEMO_NETWORK

    bundle = load_bundle(DEMO_BUNDLE)
    same = {"settings_hash": bundle.document["radiomics"]["settings_hash"],
            "preprocessing": PreprocessConfig().to_dict(), "network_sha256": network_checksum(DEMO_NETWORK)}
    bundle.check_features(same, "features.csv")
    bundle.check_features({}, "own_table.csv")  # a table without a sidecar: nothing to compare
    with pytest.raises(InputError, match="image preprocessing.*re-extract"):
        bundle.check_features({**same, "preprocessing": {**same["preprocessing"], "n4": False}}, "features.csv")
    with pytest.raises(InputError, match="network 000000000000 but the bundle was trained with network 478b2783"):
        bundle.check_features({**same, "network_sha256": "0" * 64}, "features.csv")


def test_two_writers_of_one_file_do_not_take_each_others_temporary_file(tmp_path):
    """A shared cache can be written by two processes at once: with one temporary name per target the second
    writer's rename took the first one's file away, and the first failed with FileNotFoundError."""
    from NPCPrognosisLib.io.atomic import atomic_path

    target = tmp_path / "cache.json"
    with atomic_path(target) as first:
        first.write_text("first")
        with atomic_path(target) as second:
            second.write_text("second")
        assert target.read_text() == "second"
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left behind


def test_a_file_is_on_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """The rename is atomic, but without a flush a power cut soon after could leave the finished name on an empty
    file: the temporary file is synced first."""
    import os

    from NPCPrognosisLib.io.atomic import write_json_atomic

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "out.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json_atomic(tmp_path / "out.json", {"a": 1})
    assert len(synced) == 1 and ".out.json." in synced[0][0] and synced[0][1] is False
    assert (tmp_path / "out.json").read_text() == '{\n  "a": 1\n}\n'
