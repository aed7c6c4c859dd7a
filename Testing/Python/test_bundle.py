"""Bundles are JSON with checksums: they round-trip, and tampered or foreign bundles are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.errors import BundleError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_image
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
