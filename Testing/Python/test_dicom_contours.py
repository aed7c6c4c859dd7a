"""The clinic's formats: RTSTRUCT round trips and use as the mask, DICOM SEG written by segment and read back by
highdicom. Test data are built here from both synthetic phantom families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.cli import main
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.overlap import dice
from NPCPrognosisLib.io.dicom_seg import read_seg
from NPCPrognosisLib.io.images import load_patient, read_image
from NPCPrognosisLib.io.rtstruct import read_rtstruct, write_rtstruct
from NPCPrognosisLib.resources import DEMO_NETWORK, RADIOMICS_FAST_PARAMS


def _patients():
    from NPCPrognosisLib.datasets import relaxometry_phantom, synth

    out = [synth.synthesize_patient(np.random.default_rng(seed), f"A{seed}") for seed in range(4)]
    for seed in range(3):
        patient = relaxometry_phantom.synthesize_patient(np.random.default_rng(seed), f"B{seed}")
        out.append(patient)
    return out


@pytest.fixture(scope="module")
def patients():
    return _patients()


def test_rtstruct_round_trip_reproduces_each_structure(patients, tmp_path):
    """mask -> RTSTRUCT -> mask on the synthetic cohorts (oblique grids included): Dice >= 0.98 per structure; a
    structure the mask does not hold gets no ROI (an empty one would import as contoured and empty)."""
    for patient in patients:
        path = write_rtstruct(patient.mask, tmp_path / f"{patient.patient_id}.dcm", patient_id=patient.patient_id)
        back, report = read_rtstruct(path, patient.t1c)
        truth, got = sitk.GetArrayFromImage(patient.mask), sitk.GetArrayFromImage(back)
        assert report["matched"] == {"GTVp": ["GTVp"], "GTVn": ["GTVn"] if (truth == 2).any() else []}
        assert report["unmatched"] == []
        for label in (1, 2):
            if (truth == label).any():
                assert dice(truth == label, got == label) >= 0.98, (patient.patient_id, label)
            else:
                assert not (got == label).any()


def test_rtstruct_rois_are_mapped_by_name_and_unused_ones_reported(patients, tmp_path):
    patient = patients[0]
    labels = sitk.GetArrayFromImage(patient.mask)
    extra = labels.copy()
    extra[:] = 0
    extra[2:4, 10:20, 10:20] = 3  # an organ at risk in the same structure set
    combined = sitk.GetImageFromArray(np.where(labels > 0, labels, extra).astype(np.uint8))
    combined.CopyInformation(patient.mask)
    path = write_rtstruct(combined, tmp_path / "plan.dcm", patient_id="A0",
                          names={1: "GTV_T", 2: "GTV_LN_R", 3: "Brainstem"})
    with pytest.raises(InputError, match="no ROI of the structure set is GTVp") as info:
        read_rtstruct(path, patient.t1c)
    assert "GTV_T" in str(info.value) and "--roi-map" in str(info.value)
    mask, report = read_rtstruct(path, patient.t1c, "GTVp=gtv_t,GTVn=GTV_LN*")
    assert report["unmatched"] == ["Brainstem"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), labels)


def test_an_rtstruct_is_accepted_as_the_mask_and_gives_the_same_features(patients, tmp_path):
    patient = patients[1]
    for key in ("t1", "t2", "t1c"):
        sitk.WriteImage(getattr(patient, key), str(tmp_path / f"{key}.nii.gz"))
    sitk.WriteImage(patient.mask, str(tmp_path / "mask.nii.gz"))
    write_rtstruct(patient.mask, tmp_path / "rs.dcm", patient_id="A1", names={1: "GTVnx", 2: "Brainstem"})
    loaded = load_patient("A1", {k: tmp_path / f"{k}.nii.gz" for k in ("t1", "t2", "t1c")}, tmp_path / "rs.dcm",
                          roi_map="GTVn=none")
    assert any("Brainstem" in w and "--roi-map" in w for w in loaded.warnings)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded.mask),
                                  (sitk.GetArrayFromImage(patient.mask) == 1).astype(np.uint8))
    write_rtstruct(patient.mask, tmp_path / "rs_both.dcm", patient_id="A1")
    rows = {"patient_id": "A1", "t1": "t1.nii.gz", "t2": "t2.nii.gz", "t1c": "t1c.nii.gz", "age": 50, "sex": "M",
            "t_stage": "T2", "n_stage": "N1", "ebv_dna": 100, "rene": 0, "ldh": 180}
    pd.DataFrame([dict(rows, mask="mask.nii.gz")]).to_csv(tmp_path / "nifti.csv", index=False)
    pd.DataFrame([dict(rows, mask="rs_both.dcm")]).to_csv(tmp_path / "rtstruct.csv", index=False)
    for name in ("nifti", "rtstruct"):
        assert main(["--quiet", "extract", "--manifest", str(tmp_path / f"{name}.csv"), "--out",
                     str(tmp_path / f"{name}_features.csv"), "--params", str(RADIOMICS_FAST_PARAMS)]) == 0
    assert (tmp_path / "nifti_features.csv").read_bytes() == (tmp_path / "rtstruct_features.csv").read_bytes()


def test_segment_writes_a_dicom_seg_that_highdicom_reads_back_with_the_same_labels(patients, tmp_path, capsys):
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[0]
    rng = np.random.default_rng(7)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    for number, key in enumerate(("t1", "t2", "t1c"), start=1):
        tags = {"0008|0060": "MR", "0010|0010": "SYNTHETIC^A0", "0010|0020": "A0", "0020|000d": study,
                "0020|0052": frame, "0008|103e": f"SYNTHETIC {key}", "0020|0011": str(number)}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), tmp_path / key, tags, dicom_uid(rng), rng)
    # without --patient-id the outputs are named by the CET1W series' PatientID, not 'patient'
    assert main(["--quiet", "segment", "--bundle", str(DEMO_NETWORK), "--t1", str(tmp_path / "t1"), "--t2",
                 str(tmp_path / "t2"), "--t1c", str(tmp_path / "t1c"), "--out", str(tmp_path / "auto.nii.gz")]) == 0
    printed = capsys.readouterr()
    assert "\nA0: GTVp" in "\n" + printed.out and "no --patient-id" not in printed.err
    assert f"RTSTRUCT: {tmp_path / 'auto_rtstruct.dcm'}" in printed.out
    reference = read_image(tmp_path / "t1c", role="t1c")
    nifti = sitk.ReadImage(str(tmp_path / "auto.nii.gz"))
    # the RT Structure Set for the planning system, filed with the CET1W's study, gives the mask back
    structures = read_rtstruct(tmp_path / "auto_rtstruct.dcm", reference)[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(structures), sitk.GetArrayFromImage(nifti))
    seg = read_seg(tmp_path / "auto_seg.dcm", reference, tmp_path / "t1c")[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(nifti))
    assert (sitk.GetArrayFromImage(seg) == 1).any()
    # the SEG is accepted as the mask of the same patient (it had been refused as a label map of 255s)
    given = load_patient("A0", {key: tmp_path / key for key in ("t1", "t2", "t1c")}, tmp_path / "auto_seg.dcm")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(given.mask), sitk.GetArrayFromImage(nifti))
    # but not on another series: its frames reference images the CET1W does not hold (the T1W series: the T2W one
    # is refused before, as its description names another sequence than the t1c column)
    with pytest.raises(InputError, match="the DICOM SEG was drawn on other images") as caught:
        load_patient("A0", {key: tmp_path / key for key in ("t1", "t2", "t1c")} | {"t1c": tmp_path / "t1"},
                     tmp_path / "auto_seg.dcm")
    assert "A0" in str(caught.value) and "auto_seg.dcm" in str(caught.value)
    import pydicom

    header = pydicom.dcmread(tmp_path / "auto_seg.dcm", stop_before_pixels=True)
    assert header.Modality == "SEG" and header.StudyInstanceUID == study
    rtstruct = pydicom.dcmread(tmp_path / "auto_rtstruct.dcm")
    assert (rtstruct.StudyInstanceUID, rtstruct.FrameOfReferenceUID, rtstruct.PatientID) == (study, frame, "A0")
    assert [str(s.SegmentLabel) for s in header.SegmentSequence][0] == "GTVp"



@pytest.mark.parametrize("failure", ["unreadable image", "network error", "no uncertainty asked for"])
def test_a_failed_single_patient_segment_leaves_no_contours_of_an_earlier_run(patients, tmp_path, capsys,
                                                                             monkeypatch, failure):
    """A cohort run removed a failed patient's mask, SEG and RTSTRUCT; a one-patient run that failed left the earlier
    run's files beside its error, where a PACS upload or a planning import would take them as this run's contours.
    A run that succeeds without ``--tta`` leaves no earlier uncertainty map beside its new mask either."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.deep import segmentation

    patient = patients[0]
    rng = np.random.default_rng(7)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    for number, key in enumerate(("t1", "t2", "t1c"), start=1):
        tags = {"0008|0060": "MR", "0010|0020": "A0", "0020|000d": study, "0020|0052": frame,
                "0008|103e": f"SYNTHETIC {key}", "0020|0011": str(number)}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), tmp_path / key, tags, dicom_uid(rng), rng)
    images = {key: str(tmp_path / key) for key in ("t1", "t2", "t1c")}

    def segment(tta="1", **given):
        return main(["--quiet", "segment", "--bundle", str(DEMO_NETWORK), "--out", str(tmp_path / "A0.nii.gz"),
                     "--tta", tta, *(part for key, path in (images | given).items() for part in (f"--{key}", path))])

    assert segment() == 0
    outputs = [tmp_path / name for name in ("A0.nii.gz", "A0_seg.dcm", "A0_rtstruct.dcm", "A0_uncertainty.nii.gz")]
    assert all(path.is_file() for path in outputs)
    capsys.readouterr()
    if failure == "unreadable image":
        (tmp_path / "broken_t2.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI")  # a transfer cut short
        assert segment(t2=str(tmp_path / "broken_t2.nii.gz")) == 2
        error = capsys.readouterr().err
        assert "patient 'A0'" in error and "broken_t2.nii.gz" in error and "truncated or corrupt" in error
    elif failure == "network error":
        def out_of_memory(*args, **kwargs):
            raise RuntimeError("CUDA out of memory")

        monkeypatch.setattr(segmentation, "segment_patient", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            segment()
    else:
        assert segment(tta="0") == 0
        assert [path.name for path in outputs if path.exists()] == ["A0.nii.gz", "A0_seg.dcm", "A0_rtstruct.dcm"]
        return
    assert [path.name for path in outputs if path.exists()] == []


def _broken_network(kind, folder):
    """A copy of the shipped network damaged as a transfer or a wrong path damages one: (its folder, the file the
    error must name, a word of the fix it must give)."""
    import shutil

    bundle = folder / kind
    if kind == "wrong bundle folder":  # e.g. the patient's folder given as --bundle
        bundle.mkdir()
        return bundle, bundle, "train-net"
    shutil.copytree(DEMO_NETWORK, bundle)
    if kind == "corrupt weights":
        with open(bundle / "network.safetensors", "r+b") as fh:  # one byte flipped on the way
            fh.seek(1000)
            byte = fh.read(1)
            fh.seek(1000)
            fh.write(bytes([byte[0] ^ 0xFF]))
        return bundle, bundle / "network.safetensors", "re-copy"
    if kind == "unreadable weights":  # damaged, then vouched for again by a tool that re-made the checksums
        import hashlib

        weights = bundle / "network.safetensors"
        weights.write_bytes(b"\x00" * 64)
        sums = bundle / "SHA256SUMS"
        sums.write_text("".join(f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  {name}\n"
                                if name == weights.name else f"{digest}  {name}\n"
                                for digest, name in (line.split(None, 1) for line in sums.read_text().splitlines())))
        return bundle, weights, "re-copy"
    (bundle / "bundle.json").unlink()
    return bundle, bundle / "bundle.json", "re-copy"


@pytest.mark.parametrize("kind", ["corrupt weights", "unreadable weights", "missing bundle.json",
                                  "wrong bundle folder"])
def test_a_network_bundle_that_fails_to_load_leaves_no_outputs_of_an_earlier_run(tmp_path, capsys, caplog, kind):
    """The network was loaded before the single-patient run's outputs were guarded, and before a cohort run started:
    a damaged bundle failed the command but left last run's contours (and a cohort's manifest.csv pointing at them)
    where they are taken for this run's. Now the run fails with the bundle's file and the fix named, before
    anything is written, and the earlier outputs are gone."""
    from NPCPrognosisLib.io.segment_outputs import SegmentOutputs
    from NPCPrognosisLib.resources import SAMPLE_CASE, sample_case_files

    files = sample_case_files(SAMPLE_CASE)
    images = [part for key in ("t1", "t2", "t1c") for part in (f"--{key}", str(files[key]))]
    bundle, named, fix = _broken_network(kind, tmp_path)
    single = SegmentOutputs.beside_mask(tmp_path / "single" / "A0.nii.gz")
    cohort = tmp_path / "cohort"
    in_cohort = SegmentOutputs.of_patient(cohort, "NPC-SAMPLE-001")
    earlier = [*single.files, *in_cohort.files, cohort / "manifest.csv", cohort / "deep_scores.csv",
               cohort / "SYNTHETIC_COHORT.json"]
    for path in earlier:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"an earlier run's output")
    pd.DataFrame({"patient_id": ["NPC-SAMPLE-001"], **{key: [str(files[key])] for key in ("t1", "t2", "t1c")}}
                 ).to_csv(tmp_path / "cohort.csv", index=False)
    # a --out that is no mask file is refused before the network loads, and removes nothing
    assert main(["--quiet", "segment", "--bundle", str(bundle), *images, "--out", str(tmp_path / "single")]) == 2
    assert "is not a mask file" in capsys.readouterr().err and all(path.exists() for path in earlier)
    for command, folder in ((["--out", str(single.mask), *images], single.mask.parent),
                            (["--manifest", str(tmp_path / "cohort.csv"), "--out", str(cohort)], cohort)):
        caplog.clear()
        assert main(["--quiet", "segment", "--bundle", str(bundle), *command]) == 2
        error = capsys.readouterr().err
        assert str(named) in error and fix in error, error
        assert f"an earlier run left in {folder}" in caplog.text  # the user is told what went
    assert [path.name for path in earlier if path.exists()] == []



@pytest.mark.parametrize("bundle", ["shipped network", "missing bundle.json"])
def test_segment_writes_no_cohort_into_the_folder_of_its_manifest(tmp_path, capsys, bundle):
    """With --out the manifest's own folder, a bundle that failed to load removed the input manifest.csv (taken for an
    earlier run's), and a run that finished replaced it with its own, the mask column now the automatic masks. The
    folder is refused before anything is read or written."""
    from NPCPrognosisLib.resources import SAMPLE_CASE, sample_case_files

    files = sample_case_files(SAMPLE_CASE)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = cohort / "manifest.csv"
    pd.DataFrame({"patient_id": ["NPC-SAMPLE-001"], **{key: [str(files[key])] for key in ("t1", "t2", "t1c", "mask")}}
                 ).to_csv(manifest, index=False)
    before = manifest.read_bytes()
    network = DEMO_NETWORK if bundle == "shipped network" else _broken_network(bundle, tmp_path)[0]
    assert main(["--quiet", "segment", "--bundle", str(network), "--manifest", str(manifest),
                 "--out", str(cohort / ".")]) == 2
    error = capsys.readouterr().err
    assert f"file '{manifest}'" in error and "is the folder of the manifest itself" in error, error
    assert "--out seg/" in error
    assert sorted(cohort.iterdir()) == [manifest] and manifest.read_bytes() == before


PATIENT_STUDY_HEADER = {"0010|0010": "DOE^JANE", "0010|0030": "19600101", "0010|0040": "F", "0008|0050": "ACC42",
                        "0008|0020": "20260102", "0008|0030": "093000", "0020|0010": "S7",
                        "0008|0090": "REFERRER^R"}


def _rtstruct_plane_images(rtstruct, folder):
    """For every contour of ``rtstruct``: the SOPInstanceUID it names and the one image of ``folder`` whose plane
    holds its points, found from the images' own ImagePositionPatient and ImageOrientationPatient."""
    import pydicom

    images = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    pairs = []
    for roi in rtstruct.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            in_plane = []
            for image in images:
                orientation = np.asarray(image.ImageOrientationPatient, float)
                normal = np.cross(orientation[:3], orientation[3:])
                if np.abs((points - np.asarray(image.ImagePositionPatient, float)) @ normal).max() < 0.01:
                    in_plane.append(str(image.SOPInstanceUID))
            named = [str(item.ReferencedSOPInstanceUID) for item in contour.ContourImageSequence]
            pairs.append((named, in_plane))
    return pairs, images


@pytest.mark.parametrize("index", [0, 1, 4], ids=["flipped-slices", "oblique-A", "oblique-B"])
def test_rtstruct_of_a_dicom_series_is_filed_with_its_study_and_names_the_image_of_each_contour(patients, tmp_path,
                                                                                                index):
    """The RTSTRUCT a planning system imports: it had a study UID of its own and referenced no image, so it would
    not attach to the patient's scan. It now carries the series' patient, study and frame of reference, lists every
    image of the series, and each contour names the image whose plane it lies on (checked here from the images'
    own headers), on a series whose slices run feet-to-head against the phantom's and on oblique ones."""
    import pydicom

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[index]
    rng = np.random.default_rng(100 + index)
    study, frame, series_uid = dicom_uid(rng), dicom_uid(rng), dicom_uid(rng)
    tags = {"0008|0060": "MR", "0010|0020": patient.patient_id, "0020|000d": study, "0020|0052": frame,
            "0008|103e": "T1 post contrast", "0020|0011": "3", **PATIENT_STUDY_HEADER}
    write_dicom_series(sitk.Cast(patient.t1c, sitk.sitkInt16), tmp_path / "t1c", tags, series_uid, rng)
    for f in (tmp_path / "t1c").iterdir():  # a name beyond ASCII keeps its character set
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Müller^Zoë"
        ds.save_as(f)
    reference = read_image(tmp_path / "t1c", role="t1c")
    mask = sitk.Resample(patient.mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    path = write_rtstruct(mask, tmp_path / "rs.dcm", patient_id=patient.patient_id, source=tmp_path / "t1c")
    rtstruct = pydicom.dcmread(path)
    source = pydicom.dcmread(next((tmp_path / "t1c").iterdir()), stop_before_pixels=True)
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID"):
        assert str(rtstruct[keyword].value) == str(source[keyword].value) != "", keyword
    assert (rtstruct.SpecificCharacterSet, str(rtstruct.PatientName)) == ("ISO_IR 192", "Müller^Zoë")
    assert rtstruct.SeriesInstanceUID != series_uid and rtstruct.ApprovalStatus == "UNAPPROVED"
    assert "research" in rtstruct.SeriesDescription.lower() and "OperatorsName" in rtstruct
    referenced_frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    referenced_study = referenced_frame.RTReferencedStudySequence[0]
    referenced_series = referenced_study.RTReferencedSeriesSequence[0]
    assert referenced_frame.FrameOfReferenceUID == frame
    assert (referenced_study.ReferencedSOPClassUID, referenced_study.ReferencedSOPInstanceUID) == (
        "1.2.840.10008.3.1.2.3.1", study)
    assert referenced_series.SeriesInstanceUID == series_uid
    pairs, images = _rtstruct_plane_images(rtstruct, tmp_path / "t1c")
    listed = [str(item.ReferencedSOPInstanceUID) for item in referenced_series.ContourImageSequence]
    assert sorted(listed) == sorted(str(image.SOPInstanceUID) for image in images) and len(set(listed)) == len(images)
    assert {str(item.ReferencedSOPClassUID) for item in referenced_series.ContourImageSequence} == {
        "1.2.840.10008.5.1.4.1.1.4"}
    assert pairs and all(len(in_plane) == 1 and named == in_plane for named, in_plane in pairs)
    assert {roi.ReferencedFrameOfReferenceUID for roi in rtstruct.StructureSetROISequence} == {frame}
    back, report = read_rtstruct(path, reference)
    assert report["frames_of_reference"] == [frame] and report["skipped_contours"] == 0
    truth, got = sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(back)
    for label in (1, 2):
        if (truth == label).any():  # measured: Dice 1.0 (every voxel) for each structure of the three series
            assert dice(truth == label, got == label) == 1.0, label


def test_seg_and_rtstruct_file_each_structure_as_automatic_corrected_or_drawn_by_hand(patients, tmp_path):
    """Contours a radiologist corrected (or drew) in the panel must not reach the PACS or the planning system as the
    network's own: each structure carries its origin (SEG SegmentAlgorithmType, RTSTRUCT ROIGenerationAlgorithm),
    a hand-drawn segment names no algorithm, and ``segment``'s own files stay AUTOMATIC."""
    import highdicom as hd
    import pydicom

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.io.dicom_contours import EDITED_SERIES_DESCRIPTION, SERIES_DESCRIPTION
    from NPCPrognosisLib.io.dicom_seg import write_seg

    patient = next(p for p in patients if (sitk.GetArrayViewFromImage(p.mask) == 2).any())
    rng = np.random.default_rng(7)
    tags = {"0008|0060": "MR", "0010|0020": patient.patient_id, "0020|000d": dicom_uid(rng),
            "0020|0052": dicom_uid(rng), **PATIENT_STUDY_HEADER}
    write_dicom_series(sitk.Cast(patient.t1c, sitk.sitkInt16), tmp_path / "t1c", tags, dicom_uid(rng), rng)
    reference = read_image(tmp_path / "t1c", role="t1c")
    mask = sitk.Resample(patient.mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor)

    def written(origins, name):
        seg = hd.seg.segread(write_seg(mask, tmp_path / "t1c", tmp_path / f"{name}_seg.dcm",
                                       patient_id=patient.patient_id, origins=origins))
        rtstruct = pydicom.dcmread(write_rtstruct(mask, tmp_path / f"{name}_rs.dcm", patient_id=patient.patient_id,
                                                  source=tmp_path / "t1c", origins=origins))
        by_seg = {item.SegmentLabel: (item.SegmentAlgorithmType, "SegmentationAlgorithmIdentificationSequence" in item)
                  for item in seg.SegmentSequence}
        by_roi = {roi.ROIName: roi.ROIGenerationAlgorithm for roi in rtstruct.StructureSetROISequence}
        return by_seg, by_roi, (seg.SeriesDescription, rtstruct.SeriesDescription)

    assert written(None, "auto") == ({"GTVp": ("AUTOMATIC", True), "GTVn": ("AUTOMATIC", True)},
                                     {"GTVp": "AUTOMATIC", "GTVn": "AUTOMATIC"},
                                     (SERIES_DESCRIPTION, SERIES_DESCRIPTION))
    assert written({1: "semiautomatic", 2: "MANUAL"}, "edited") == (
        {"GTVp": ("SEMIAUTOMATIC", True), "GTVn": ("MANUAL", False)}, {"GTVp": "SEMIAUTOMATIC", "GTVn": "MANUAL"},
        (EDITED_SERIES_DESCRIPTION, EDITED_SERIES_DESCRIPTION))
    assert len(EDITED_SERIES_DESCRIPTION) <= 64  # DICOM LO
    with pytest.raises(ValueError, match="unknown contour origin 'EDITED'"):
        write_rtstruct(mask, tmp_path / "bad_rs.dcm", patient_id=patient.patient_id, source=tmp_path / "t1c",
                       origins={1: "edited"})
    assert not (tmp_path / "bad_rs.dcm").exists()


def test_rtstruct_of_a_dicom_series_refuses_a_mask_it_was_not_drawn_on(patients, tmp_path):
    """A mask of another grid would have its contours filed against images they do not lie on."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[1]
    rng = np.random.default_rng(12)
    tags = {"0008|0060": "MR", "0010|0020": "A1", "0020|000d": dicom_uid(rng), "0020|0052": dicom_uid(rng)}
    write_dicom_series(sitk.Cast(patient.t1c, sitk.sitkInt16), tmp_path / "t1c", tags, dicom_uid(rng), rng)
    reference = read_image(tmp_path / "t1c", role="t1c")
    mask = sitk.Resample(patient.mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    short = mask[:, :, 1:]
    with pytest.raises(InputError, match="the mask has .* slices but the series .* images") as caught:
        write_rtstruct(short, tmp_path / "short.dcm", patient_id="A1", source=tmp_path / "t1c")
    assert "A1" in str(caught.value) and not (tmp_path / "short.dcm").exists()
    shifted = sitk.Image(mask)
    shifted.SetOrigin([v + 0.5 * mask.GetSpacing()[2] * n for v, n in
                       zip(mask.GetOrigin(), np.array(mask.GetDirection()).reshape(3, 3)[:, 2])])
    with pytest.raises(InputError, match="does not lie on a slice of the mask") as caught:
        write_rtstruct(shifted, tmp_path / "shifted.dcm", patient_id="A1", source=tmp_path / "t1c")
    assert "A1" in str(caught.value) and not (tmp_path / "shifted.dcm").exists()
    with pytest.raises(ValueError, match="series' frame of reference"):
        write_rtstruct(mask, tmp_path / "two_frames.dcm", patient_id="A1", source=tmp_path / "t1c",
                       frame_of_reference_uid=dicom_uid(rng))
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    (tmp_path / "earlier.dcm").write_bytes(b"an earlier run's RTSTRUCT")
    assert write_rtstruct(empty, tmp_path / "earlier.dcm", patient_id="A1", source=tmp_path / "t1c") is None
    assert not (tmp_path / "earlier.dcm").exists()


def test_a_folder_with_several_series_needs_the_series_named(patients, tmp_path):
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[2]
    rng = np.random.default_rng(3)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    uids = {}
    for number, key in enumerate(("t2", "t1c"), start=1):
        uids[key] = dicom_uid(rng)
        tags = {"0008|0060": "MR", "0010|0020": "A2", "0020|000d": study, "0020|0052": frame,
                "0008|103e": {"t2": "T2 TSE axial", "t1c": "T1 post contrast"}[key], "0020|0011": str(number)}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), tmp_path / "study" / key, tags,
                            uids[key], rng)
    # Both series in one folder, as a PACS export often delivers them.
    (tmp_path / "mixed").mkdir()
    for key in ("t2", "t1c"):
        for f in (tmp_path / "study" / key).iterdir():
            (tmp_path / "mixed" / f"{key}_{f.name}").write_bytes(f.read_bytes())
    with pytest.raises(InputError, match="the folder holds 2 series") as info:
        read_image(tmp_path / "mixed", patient_id="A2", role="t1c")
    assert "T1 post contrast" in str(info.value) and "::" in str(info.value)
    by_description = read_image(f"{tmp_path / 'mixed'}::post contrast", patient_id="A2", role="t1c")
    by_uid = read_image(f"{tmp_path / 'mixed'}::{uids['t1c']}", patient_id="A2", role="t1c")
    alone = read_image(tmp_path / "study" / "t1c", role="t1c")
    for image in (by_description, by_uid):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(alone))
    with pytest.raises(InputError, match="no series matches 'FLAIR'"):
        read_image(f"{tmp_path / 'mixed'}::FLAIR", patient_id="A2", role="t1c")
    # a subtraction series whose description contains the CET1W's whole description: the whole one still names it
    tags = {"0008|0060": "MR", "0010|0020": "A2", "0020|000d": study, "0020|0052": frame,
            "0008|103e": "T1 post contrast SUB", "0020|0011": "3"}
    write_dicom_series(sitk.Cast(patient.t1c * 0.5, sitk.sitkInt16), tmp_path / "mixed", tags, dicom_uid(rng), rng)
    exact = read_image(f"{tmp_path / 'mixed'}::t1 post contrast", patient_id="A2", role="t1c")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exact), sitk.GetArrayFromImage(alone))
    with pytest.raises(InputError, match="several series match 'post contrast'"):
        read_image(f"{tmp_path / 'mixed'}::post contrast", patient_id="A2", role="t1c")


def test_a_dicom_series_with_a_missing_duplicate_or_stray_slice_is_refused_by_name(tmp_path):
    """SimpleITK's reader stacks such a series anyway (one warning on stderr) with a wrong slice spacing, so every
    voxel would sit in the wrong place; a whole series, shuffled file names and an oblique grid read as written."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    rng = np.random.default_rng(5)
    image = sitk.GetImageFromArray(rng.integers(100, 1000, (8, 20, 20)).astype(np.int16))
    image.SetSpacing((1.0, 1.2, 3.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    angle = np.deg2rad(20.0)
    image.SetDirection((1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle)))
    tags = {"0008|0060": "MR", "0010|0020": "P7", "0020|000d": dicom_uid(rng), "0020|0052": dicom_uid(rng)}
    write_dicom_series(image, tmp_path / "whole", tags, dicom_uid(rng), rng)
    files = sorted((tmp_path / "whole").iterdir())
    for k, f in enumerate(files[::-1]):  # file names no longer in slice order
        f.rename(tmp_path / "whole" / f"X{k:02d}.dcm")
    whole = read_image(tmp_path / "whole", patient_id="P7", role="t1c")
    assert whole.GetSize() == image.GetSize() and np.allclose(whole.GetSpacing(), image.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(whole), sitk.GetArrayFromImage(image))

    def variant(name, change):
        folder = tmp_path / name
        write_dicom_series(image, folder, tags, dicom_uid(rng), rng)
        change(folder, sorted(folder.iterdir()))
        return folder

    missing = variant("missing", lambda folder, files: files[4].unlink())
    with pytest.raises(InputError, match="a slice is missing") as info:
        read_image(missing, patient_id="P7", role="t1c")
    assert "P7" in str(info.value) and "missing" in str(info.value) and "6.00 mm" in str(info.value)

    def duplicate(folder, files):
        import pydicom

        copy = pydicom.dcmread(files[3])
        copy.SOPInstanceUID = dicom_uid(rng)
        copy.save_as(folder / "echo2.dcm")

    with pytest.raises(InputError, match="9 DICOM images of the series lie at 8 slice positions"):
        read_image(variant("duplicate", duplicate), patient_id="P7", role="t1c")

    def stray(folder, files):
        import pydicom

        other = pydicom.dcmread(files[2])
        other.SOPInstanceUID = dicom_uid(rng)
        other.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal localiser filed in the same series
        other.save_as(folder / "localiser.dcm")

    with pytest.raises(InputError, match="mixes slice orientations"):
        read_image(variant("stray", stray), patient_id="P7", role="t1c")

    def edit(change):
        def apply(folder, files):
            import pydicom

            for k, f in enumerate(files):
                ds = pydicom.dcmread(f)
                change(ds, k)
                ds.save_as(f)
        return apply

    def shear(ds, k):  # positions stepping 1 mm sideways per slice: gantry tilt
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 1.0 * k, *ds.ImagePositionPatient[1:]]

    with pytest.raises(InputError, match="step 1.00 mm sideways for every 3.00 mm .* gantry tilt"):
        read_image(variant("tilted", edit(shear)), patient_id="P7", role="t1c")
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]

    def drift(ds, k):  # every gap within 10 % of the median (3.0, then 3.29 mm), yet slices drift half a millimetre
        extra = 0.29 * max(k - 3, 0)
        ds.ImagePositionPatient = [float(v) + extra * n for v, n in zip(ds.ImagePositionPatient, normal)]

    with pytest.raises(InputError, match="lies 0.50 mm from where an evenly spaced stack puts it"):
        read_image(variant("drift", edit(drift)), patient_id="P7", role="t1c")

    def other_patient(ds, k):
        if k == 5:
            ds.PatientID, ds.PixelSpacing = "P8", [0.5, 0.5]

    with pytest.raises(InputError, match="mixes (PixelSpacing|PatientID) values"):
        read_image(variant("mixed", edit(other_patient)), patient_id="P7", role="t1c")
    rounded = read_image(variant("rounded", edit(lambda ds, k: setattr(ds, "PixelSpacing", ["1.20", "1.000"]))),
                         patient_id="P7", role="t1c")  # the same spacing written with other digits
    assert np.allclose(rounded.GetSpacing(), image.GetSpacing())


def test_an_enhanced_multi_frame_series_reads_as_its_single_frame_original(tmp_path):
    """One file holding every frame had been refused as 'not a 3D volume (size (20, 20, 8, 1))'; no SEG is written
    for it, which the message says, rather than failing the patient."""
    import warnings

    import highdicom as hd
    import pydicom

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.io.dicom_contours import ContoursNotWritten
    from NPCPrognosisLib.io.dicom_seg import write_seg

    rng = np.random.default_rng(6)
    image = sitk.GetImageFromArray(rng.integers(100, 1000, (8, 20, 20)).astype(np.int16))
    image.SetSpacing((1.0, 1.2, 3.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    tags = {"0008|0060": "MR", "0010|0020": "P6", "0020|000d": dicom_uid(rng), "0020|0052": dicom_uid(rng)}
    write_dicom_series(image, tmp_path / "single", tags, dicom_uid(rng), rng)
    sources = [pydicom.dcmread(f) for f in sorted((tmp_path / "single").iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(sources[::-1], series_instance_uid=hd.UID(),
                                                            series_number=9, sop_instance_uid=hd.UID(),
                                                            instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(str(tmp_path / "enhanced" / "mr.dcm"))
    read = read_image(tmp_path / "enhanced", patient_id="P6", role="t1c")
    original = read_image(tmp_path / "single", patient_id="P6", role="t1c")
    assert read.GetSize() == original.GetSize()
    resampled = sitk.Resample(read, original, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(original))
    mask = sitk.Image(read.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(read)
    mask[5, 5, 3] = 1
    with pytest.raises(ContoursNotWritten, match="multi-frame"):
        write_seg(mask, tmp_path / "enhanced", tmp_path / "mr_seg.dcm", patient_id="P6")
    with pytest.raises(ContoursNotWritten, match="no RTSTRUCT is written for an enhanced .multi-frame."):
        write_rtstruct(mask, tmp_path / "mr_rs.dcm", patient_id="P6", source=tmp_path / "enhanced")
    assert not (tmp_path / "mr_rs.dcm").exists()
    # nor is a SEG read onto it: its one image would have been broadcast onto every slice
    single_mask = sitk.Image(original.GetSize(), sitk.sitkUInt8)
    single_mask.CopyInformation(original)
    single_mask[5, 5, 3] = 1
    write_seg(single_mask, tmp_path / "single", tmp_path / "single_seg.dcm", patient_id="P6")
    with pytest.raises(InputError, match="holds 1 image.s. for 8 slices"):
        read_seg(tmp_path / "single_seg.dcm", read, tmp_path / "enhanced", patient_id="P6")


@pytest.mark.parametrize("name, structure", [
    ("GTVp", "GTVp"), ("GTV-P", "GTVp"), ("gtv_p", "GTVp"), ("GTVnx", "GTVp"), ("GTVp_2", "GTVp"),
    ("GTVn", "GTVn"), ("GTVn_L", "GTVn"), ("GTVn_R", "GTVn"), ("GTVn1", "GTVn"), ("GTVn 2", "GTVn"),
    ("GTVnd_R", "GTVn"), ("GTVn_left", "GTVn"), ("GTV_node_L", "GTVn"),
    # structures a planning system builds from a GTV are not the GTV: joined, they had grown GTVp six-fold
    ("GTVp_ring", None), ("GTVp_PRV", None), ("GTVp+5mm", None), ("GTVnx_exp", None), ("GTVn-CTV", None),
    ("GTVn_PRV", None), ("GTVn_ring", None), ("GTVn_66Gy", None), ("CTV", None), ("Parotid_L", None),
])
def test_default_roi_names_take_gtvs_in_pieces_but_not_structures_built_from_them(name, structure):
    from NPCPrognosisLib.io.dicom_contours import parse_roi_map, roi_structure

    assert roi_structure(name, parse_roi_map(None)) == structure


def test_an_anonymised_series_gets_its_seg_or_a_reason_and_its_mask_either_way(tmp_path):
    """Anonymisers drop the patient's name and ID, the accession number and the study date: a SEG copies them empty.
    A series without a frame of reference cannot have one: the mask is still written, with the reason. A mask
    that cannot be written takes this run's SEG with it."""
    import pydicom

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.io.dicom_contours import ContoursNotWritten
    from NPCPrognosisLib.io.dicom_seg import write_seg
    from NPCPrognosisLib.pipeline.segment import write_contours

    rng = np.random.default_rng(16)
    image = sitk.GetImageFromArray(rng.integers(100, 1000, (6, 16, 16)).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 3.0))
    write_dicom_series(image, tmp_path / "anon", {"0008|0060": "MR", "0020|000d": dicom_uid(rng),
                                                  "0020|0052": dicom_uid(rng)}, dicom_uid(rng), rng)
    for f in (tmp_path / "anon").iterdir():
        ds = pydicom.dcmread(f)
        for tag in ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"):
            if tag in ds:
                delattr(ds, tag)
        ds.save_as(f)
    reference = read_image(tmp_path / "anon", role="t1c")
    mask = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(reference)
    mask[4:9, 4:9, 2:4] = 1
    write_seg(mask, tmp_path / "anon", tmp_path / "anon_seg.dcm", patient_id="ANON")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_seg(tmp_path / "anon_seg.dcm", reference,
                                                                  tmp_path / "anon")[0]),
                                  sitk.GetArrayFromImage(mask))
    # so does the RTSTRUCT, its type-2 patient and study attributes present and empty
    rtstruct = pydicom.dcmread(write_rtstruct(mask, tmp_path / "anon_rs.dcm", patient_id="ANON",
                                              source=tmp_path / "anon"))
    assert all(tag in rtstruct and str(rtstruct[tag].value or "") == "" for tag in
               ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_rtstruct(tmp_path / "anon_rs.dcm", reference)[0]),
                                  sitk.GetArrayFromImage(mask))
    # a SEG and an RTSTRUCT written, then a mask that cannot be: none is left behind
    (tmp_path / "blocked").write_text("a file where the mask's folder should be")
    with pytest.raises(Exception):  # noqa: B017 - whatever the writer raises, the SEG must go
        write_contours(mask, tmp_path / "anon", tmp_path / "blocked" / "ANON_mask.nii.gz", tmp_path / "run_seg.dcm",
                       tmp_path / "run_rs.dcm", patient_id="ANON")
    assert not (tmp_path / "run_seg.dcm").exists() and not (tmp_path / "run_rs.dcm").exists()
    for f in (tmp_path / "anon").iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    with pytest.raises(ContoursNotWritten, match="no FrameOfReferenceUID"):
        write_seg(mask, tmp_path / "anon", tmp_path / "no_frame_seg.dcm", patient_id="ANON")
    with pytest.raises(ContoursNotWritten, match="no RTSTRUCT is written: the CET1W series has no "
                                                 "FrameOfReferenceUID") as caught:
        write_rtstruct(mask, tmp_path / "no_frame_rs.dcm", patient_id="ANON", source=tmp_path / "anon")
    assert "ANON" in str(caught.value) and not (tmp_path / "no_frame_rs.dcm").exists()
    (tmp_path / "out").mkdir()
    for name in ("ANON_seg.dcm", "ANON_rtstruct.dcm"):  # an earlier run's files would contradict this run's mask
        (tmp_path / "out" / name).write_bytes(b"an earlier run's contours")
    out = tmp_path / "out"
    written, seg, rs, warnings = write_contours(mask, tmp_path / "anon", out / "ANON_mask.nii.gz",
                                                out / "ANON_seg.dcm", out / "ANON_rtstruct.dcm", patient_id="ANON")
    assert written.exists() and seg is None and rs is None
    assert ["DICOM SEG" in warnings[0], "RTSTRUCT" in warnings[1]] == [True, True]
    assert all("FrameOfReferenceUID" in w for w in warnings) and len(warnings) == 2
    assert not (tmp_path / "out" / "ANON_seg.dcm").exists() and not (tmp_path / "out" / "ANON_rtstruct.dcm").exists()


def test_rtstruct_contours_on_finer_planes_sample_the_nearest_plane_not_cancel_out(tmp_path):
    """Contours drawn on 1 mm planes (a planning CT) read onto a 3 mm grid: three planes fall within half a slice of
    each slice centre, and even-odd filling across them cancelled pairs; each slice now takes its nearest plane."""
    fine = sitk.Image(40, 40, 24, sitk.sitkUInt8)
    fine.SetSpacing((1.0, 1.0, 1.0))
    labels = np.zeros((24, 40, 40), np.uint8)
    labels[5:17, 10:20, 10:20] = 1  # a 12 mm tall box: two of its planes fall within half a slice of z = 16
    labels[9:15, 14:17, 14:17] = 0  # with a hole through its middle planes
    labels[3:9, 25:33, 25:33] = 2
    fine = sitk.GetImageFromArray(labels)
    fine.SetSpacing((1.0, 1.0, 1.0))
    path = write_rtstruct(fine, tmp_path / "planning.dcm", patient_id="P9")
    coarse = sitk.Image(40, 40, 8, sitk.sitkInt16)
    coarse.SetSpacing((1.0, 1.0, 3.0))
    coarse.SetOrigin((0.0, 0.0, 1.0))  # slice centres at z = 1, 4, 7, ... mm: on every third fine plane
    mask, report = read_rtstruct(path, coarse)
    expected = sitk.GetArrayFromImage(sitk.Resample(fine, coarse, sitk.Transform(), sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    assert (expected == 1).sum() == 4 * 100 - 2 * 9 and report["skipped_contours"] == 0
    assert report["contours_between_slices"] > 0


def test_rtstruct_contours_on_coarser_planes_fill_the_slices_between_as_nearest_neighbour_resampling_does(tmp_path):
    """Contours drawn every 3 mm read onto 1 mm slices: the slices between planes had stayed empty, a third of the
    volume, without a word. Each slice now takes the plane whose slab holds it, and the patient is told."""
    coarse = sitk.Image(40, 40, 8, sitk.sitkUInt8)
    labels = np.zeros((8, 40, 40), np.uint8)
    labels[2:5, 10:20, 10:20] = 1
    labels[3, 14:17, 14:17] = 0  # a hole in the middle plane
    labels[1:3, 25:33, 25:33] = 2
    coarse = sitk.GetImageFromArray(labels)
    coarse.SetSpacing((1.0, 1.0, 3.0))
    coarse.SetOrigin((0.0, 0.0, 1.0))
    path = write_rtstruct(coarse, tmp_path / "coarse.dcm", patient_id="P9")
    fine = sitk.Image(40, 40, 24, sitk.sitkInt16)
    fine.SetSpacing((1.0, 1.0, 1.0))
    mask, report = read_rtstruct(path, fine)
    expected = sitk.GetArrayFromImage(sitk.Resample(coarse, fine, sitk.Transform(), sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    assert (expected == 1).sum() == 9 * 100 - 3 * 9 and report["slices_from_nearest_plane"] > 0


def test_an_outline_and_its_hole_a_rounding_apart_stay_on_one_plane(tmp_path):
    """Points rounded in the file put a plane's outline and its hole a hundredth of a slice apart; rounded to a
    hundredth they fell on two planes, each slice took one, and the hole (or the outline) was lost."""
    import pydicom

    labels = np.zeros((6, 30, 30), np.uint8)
    labels[1:5, 5:25, 5:25] = 1
    labels[1:5, 12:18, 12:18] = 0
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 1.0, 2.0))
    path = write_rtstruct(image, tmp_path / "rs.dcm", patient_id="P10")
    ds = pydicom.dcmread(path)
    for contour in ds.ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        if np.ptp(points[:, 0]) < 10:  # the holes: shifted by 0.03 mm = 0.015 slice, rounded to another hundredth
            points[:, 2] += 0.03
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    ds.save_as(path)
    mask, report = read_rtstruct(path, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), labels)
    assert report["contours_between_slices"] == 0


def test_contours_of_a_slightly_tilted_series_keep_their_holes_and_a_steep_tilt_is_refused(tmp_path):
    """A planning series tilted a degree or two puts an outline and its off-centre hole a tenth of a slice apart:
    they are one plane (the hole had been lost from 1 degree on). Past half a slice of spread the outline cannot be
    placed, and dropping it while keeping its hole would leave the hole as the tumour: refused."""
    labels = np.zeros((12, 60, 60), np.uint8)
    labels[4:9, 10:40, 15:45] = 1
    labels[4:9, 30:36, 27:33] = 0  # a hole near one edge of the outline
    mr = sitk.Image(60, 60, 12, sitk.sitkInt16)
    mr.SetSpacing((1.0, 1.0, 3.0))
    mr.SetOrigin((-30.0, -30.0, -18.0))
    for degrees in (1.5, 3.0):
        angle = np.radians(degrees)
        tilted = sitk.GetImageFromArray(labels)
        tilted.CopyInformation(mr)
        tilted.SetDirection([1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle)])
        path = write_rtstruct(tilted, tmp_path / f"tilt{degrees}.dcm", patient_id="T1")
        if degrees < 2:
            got = sitk.GetArrayFromImage(read_rtstruct(path, mr)[0]) == 1
            nearest = sitk.GetArrayFromImage(sitk.Resample(tilted, mr, sitk.Transform(), sitk.sitkNearestNeighbor))
            np.testing.assert_array_equal(got, nearest == 1)
        else:
            with pytest.raises(InputError, match="5 GTVp contour.s. are not parallel to the slices"):
                read_rtstruct(path, mr, patient_id="T1")


def test_contour_planes_half_a_slice_off_give_each_slice_once(tmp_path):
    """Planes and slices of one thickness, offset by half a slice: both end slices took a plane (a closed slab),
    and the structure gained a slice."""
    labels = np.zeros((12, 30, 30), np.uint8)
    labels[3:9, 10:20, 10:20] = 1  # six planes
    drawn = sitk.GetImageFromArray(labels)
    drawn.SetSpacing((1.0, 1.0, 3.0))
    path = write_rtstruct(drawn, tmp_path / "half.dcm", patient_id="T2")
    mr = sitk.Image(30, 30, 12, sitk.sitkInt16)
    mr.SetSpacing((1.0, 1.0, 3.0))
    mr.SetOrigin((0.0, 0.0, -1.5))
    got = sitk.GetArrayFromImage(read_rtstruct(path, mr)[0]) == 1
    assert got.any(axis=(1, 2)).sum() == 6


def test_contours_drawn_across_the_slices_are_named_not_called_an_empty_gtvp(tmp_path):
    import pydicom

    labels = np.zeros((6, 30, 30), np.uint8)
    labels[1:5, 5:25, 5:25] = 1
    image = sitk.GetImageFromArray(labels)
    path = write_rtstruct(image, tmp_path / "rs.dcm", patient_id="P11")
    ds = pydicom.dcmread(path)
    for contour in ds.ROIContourSequence[0].ContourSequence:  # the same outlines, drawn in sagittal planes
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        contour.ContourData = [f"{v:.3f}" for v in points[:, [2, 1, 0]].ravel()]
    ds.save_as(path)
    with pytest.raises(InputError, match="GTVp contour.s. are not parallel to the slices of the image") as caught:
        read_rtstruct(path, image, patient_id="P11")
    assert "P11" in str(caught.value) and "rs.dcm" in str(caught.value)


def test_segment_writes_the_seg_of_a_series_named_in_a_shared_folder_and_none_for_an_empty_mask(patients, tmp_path):
    """A PACS export puts the three series in one folder, the manifest names each by its description; the SEG must
    reference the named CET1W series. A mask without contours has no segment for a SEG to describe."""
    import pydicom

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.io.dicom_seg import write_seg

    patient = patients[4]
    rng = np.random.default_rng(11)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    names = {"t1": "T1 pre", "t2": "T2 TSE", "t1c": "T1 post contrast"}
    for number, key in enumerate(("t1", "t2", "t1c"), start=1):
        tags = {"0008|0060": "MR", "0010|0020": "B1", "0020|000d": study, "0020|0052": frame,
                "0008|103e": names[key], "0020|0011": str(number)}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), tmp_path / "parts" / key, tags,
                           dicom_uid(rng), rng)
    (tmp_path / "study").mkdir()
    for key in names:
        for f in (tmp_path / "parts" / key).iterdir():
            (tmp_path / "study" / f"{key}_{f.name}").write_bytes(f.read_bytes())
    pd.DataFrame([{"patient_id": "B1", **{key: f"study::{name}" for key, name in names.items()}}]).to_csv(
        tmp_path / "manifest.csv", index=False)
    assert main(["--quiet", "segment", "--bundle", str(DEMO_NETWORK), "--manifest", str(tmp_path / "manifest.csv"),
                 "--out", str(tmp_path / "seg")]) == 0
    reference = read_image(f"{tmp_path / 'study'}::post contrast", role="t1c")
    nifti = sitk.ReadImage(str(tmp_path / "seg" / "B1_mask.nii.gz"))
    assert (sitk.GetArrayFromImage(nifti) == 1).any()
    seg = read_seg(tmp_path / "seg" / "B1_seg.dcm", reference, f"{tmp_path / 'study'}::post contrast")[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(nifti))
    # the RTSTRUCT references the named series, not the first of the folder, and gives the mask back
    rtstruct = pydicom.dcmread(tmp_path / "seg" / "B1_rtstruct.dcm")
    referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert [str(s.SeriesInstanceUID) for s in referenced.RTReferencedSeriesSequence] == [
        str(pydicom.dcmread(next((tmp_path / "parts" / "t1c").iterdir()), stop_before_pixels=True).SeriesInstanceUID)]
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_rtstruct(tmp_path / "seg" / "B1_rtstruct.dcm", reference)[0]),
        sitk.GetArrayFromImage(nifti))
    # each segment says what it is and where, as a viewer lists it: the nodes are metastases in a lymph node
    coded = {str(item.SegmentLabel): (str(item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning),
                                      str(item.AnatomicRegionSequence[0].CodeMeaning))
             for item in pydicom.dcmread(tmp_path / "seg" / "B1_seg.dcm").SegmentSequence}
    assert coded["GTVp"] == ("Neoplasm, Primary", "Nasopharynx")
    assert (sitk.GetArrayFromImage(nifti) == 2).any()
    assert coded["GTVn"] == ("Neoplasm, metastatic (morphologic abnormality)", "Lymph Node")
    empty = sitk.Image(nifti.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(nifti)
    assert write_seg(empty, f"{tmp_path / 'study'}::post contrast", tmp_path / "empty_seg.dcm") is None
    assert not (tmp_path / "empty_seg.dcm").exists()
    # a re-run whose mask is empty removes the earlier run's SEG, which would contradict it
    assert write_seg(empty, f"{tmp_path / 'study'}::post contrast", tmp_path / "seg" / "B1_seg.dcm") is None
    assert not (tmp_path / "seg" / "B1_seg.dcm").exists()
    # a SEG that cannot be made (a mask of another series) names the patient, and no mask of the run is left
    short = sitk.Image([*nifti.GetSize()[:2], nifti.GetSize()[2] - 1], sitk.sitkUInt8)
    short[5, 5, 1] = 1
    with pytest.raises(InputError, match="the mask has .* slices but the series") as caught:
        write_seg(short, f"{tmp_path / 'study'}::post contrast", tmp_path / "short_seg.dcm", patient_id="B1")
    assert "B1" in str(caught.value) and not (tmp_path / "short_seg.dcm").exists()


def test_a_sequence_of_another_patient_is_refused_and_one_of_another_frame_of_reference_noted(patients, tmp_path):
    """Box overlap was the only check before T1W and T2W were resampled onto the CET1W: a T2W series of another
    patient was accepted with a note that it had been resampled."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[3]
    rng = np.random.default_rng(8)
    study, frame = dicom_uid(rng), dicom_uid(rng)

    def series(key, owner="A3", frame_uid=frame):
        folder = tmp_path / f"{key}_{owner}_{frame_uid[-6:]}"
        tags = {"0008|0060": "MR", "0010|0020": owner, "0020|000d": study, "0020|0052": frame_uid}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), folder, tags, dicom_uid(rng), rng)
        return folder

    paths = {key: series(key) for key in ("t1", "t2", "t1c")}
    assert not [w for w in load_patient("A3", paths).warnings if "frame of reference" in w]
    with pytest.raises(InputError, match="the t2 series belongs to patient 'B7', the t1c series to 'A3'") as caught:
        load_patient("A3", {**paths, "t2": series("t2", owner="B7")})
    assert "A3" in str(caught.value) and "Fix:" in str(caught.value)
    moved = load_patient("A3", {**paths, "t1": series("t1", frame_uid=dicom_uid(rng))})
    assert any("t1 series lies in another frame of reference" in w for w in moved.warnings)


def test_series_of_another_patient_are_refused_by_their_patient_id(patients, tmp_path, capsys):
    """A CET1W series whose PatientID is OTHER-999, given with --patient-id NPC-SAMPLE-001, was predicted with exit
    0 and no warning and filed as NPC-SAMPLE-001. One patient (predict, segment) is checked against its ID; a
    cohort, whose manifest may use pseudonyms, only against its other patients' IDs."""
    import json

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.resources import DEMO_BUNDLE

    patient = patients[3]
    rng = np.random.default_rng(9)
    study, frame = dicom_uid(rng), dicom_uid(rng)

    def series(key, owner):
        folder = tmp_path / f"{key}_{owner or 'anonymous'}"
        tags = {"0008|0060": "MR", "0020|000d": study, "0020|0052": frame} | ({"0010|0020": owner} if owner else {})
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), folder, tags, dicom_uid(rng), rng)
        return folder

    other = {key: series(key, "OTHER-999") for key in ("t1", "t2", "t1c")}
    with pytest.raises(InputError) as caught:
        load_patient("NPC-SAMPLE-001", other, foreign_ids=None)
    for words in ("NPC-SAMPLE-001", "'OTHER-999'", "t1c_OTHER-999", "Fix: pass NPC-SAMPLE-001's own t1c series",
                  "--patient-id OTHER-999"):
        assert words in str(caught.value)
    assert load_patient("OTHER-999", other, foreign_ids=None).patient_id == "OTHER-999"
    # anonymised series carry no PatientID: nothing to compare
    anonymous = {key: series(key, None) for key in ("t1", "t2", "t1c")}
    assert load_patient("NPC-SAMPLE-001", anonymous, foreign_ids=None).reference is not None
    # two series of one patient that disagree, though the CET1W (a NIfTI file) carries no ID
    sitk.WriteImage(patient.t1c, str(tmp_path / "t1c.nii.gz"))
    mixed = {"t1": other["t1"], "t2": series("t2", "B7"), "t1c": tmp_path / "t1c.nii.gz"}
    with pytest.raises(InputError, match="the t2 series belongs to patient 'B7', the t1 series to 'OTHER-999'"):
        load_patient("OTHER-999", mixed)
    # a pseudonymised cohort (manifest ID S-01, the hospital's ID in the DICOM) runs; a row pointing at the series
    # of another patient of the same manifest does not
    assert load_patient("S-01", other, foreign_ids={"S-01", "S-02"}).patient_id == "S-01"
    with pytest.raises(InputError, match="another patient of the manifest") as caught:
        load_patient("S-01", other, foreign_ids={"S-01", "OTHER-999"})
    assert "correct the t1c path in S-01's row" in str(caught.value)
    # the reviewer's command: refused before any work, and nothing filed under the patient's name
    sitk.WriteImage(patient.t1, str(tmp_path / "t1.nii.gz"))
    sitk.WriteImage(patient.t2, str(tmp_path / "t2.nii.gz"))
    sitk.WriteImage(patient.mask, str(tmp_path / "mask.nii.gz"))
    args = ["--quiet", "predict", "--bundle", str(DEMO_BUNDLE), "--t1", str(tmp_path / "t1.nii.gz"), "--t2",
            str(tmp_path / "t2.nii.gz"), "--t1c", str(other["t1c"]), "--mask", str(tmp_path / "mask.nii.gz"),
            "--out", str(tmp_path / "out"), "--clinical", "age=48", "sex=F", "t_stage=T2", "n_stage=N1", "rene=0",
            "ldh=138"]
    assert main([*args, "--patient-id", "NPC-SAMPLE-001"]) == 2
    error = capsys.readouterr().err
    assert "'OTHER-999'" in error and "NPC-SAMPLE-001" in error and "--patient-id OTHER-999" in error
    assert not (tmp_path / "out" / "prediction.json").exists()
    # a cohort run: a row pointing at another row's series is that patient's failure, named with the file
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"patient_id": pid, "t1": str(other["t1"]), "t2": str(other["t2"]), "t1c": str(other["t1c"]),
                   "mask": str(tmp_path / "mask.nii.gz"), "age": 50, "sex": "M", "t_stage": "T2", "n_stage": "N1",
                   "rene": 0, "ldh": 180} for pid in ("B7", "OTHER-999")]).to_csv(manifest, index=False)
    assert main(["--quiet", "extract", "--manifest", str(manifest), "--out", str(tmp_path / "features.csv"),
                 "--params", str(RADIOMICS_FAST_PARAMS), "--workers", "1"]) == 0
    failures = pd.read_csv(tmp_path / "features.failures.csv")
    assert failures["patient_id"].tolist() == ["B7"] and "another patient of the manifest" in failures["error"][0]
    assert json.loads((tmp_path / "features.meta.json").read_text())["n_patients"] == 1


def test_contours_drawn_in_another_frame_of_reference_are_refused(patients, tmp_path):
    """An RTSTRUCT drawn on a planning CT the MR was not resampled into (or on another study) holds coordinates
    that mean something else on this scan; its frame of reference is compared with the CET1W series'."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    patient = patients[1]
    rng = np.random.default_rng(5)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    paths = {}
    for number, key in enumerate(("t1", "t2", "t1c"), start=1):
        tags = {"0008|0060": "MR", "0010|0020": "F1", "0020|000d": study, "0020|0052": frame,
                "0008|103e": key, "0020|0011": str(number)}
        write_dicom_series(sitk.Cast(getattr(patient, key), sitk.sitkInt16), tmp_path / key, tags, dicom_uid(rng), rng)
        paths[key] = tmp_path / key
    same = write_rtstruct(patient.mask, tmp_path / "same.dcm", patient_id="F1", frame_of_reference_uid=frame)
    loaded = load_patient("F1", paths, same)
    assert dice(sitk.GetArrayFromImage(loaded.mask) == 1, sitk.GetArrayFromImage(patient.mask) == 1) > 0.95
    other = write_rtstruct(patient.mask, tmp_path / "other.dcm", patient_id="F1",
                           frame_of_reference_uid=dicom_uid(rng))
    with pytest.raises(InputError, match="frame of reference") as info:
        load_patient("F1", paths, other)
    assert "F1" in str(info.value) and "other.dcm" in str(info.value)
    # a NIfTI CET1W carries no frame of reference: nothing to compare, the contours are placed as before
    nifti = {key: tmp_path / f"{key}.nii.gz" for key in paths}
    for key, path in nifti.items():
        sitk.WriteImage(getattr(patient, key), str(path))
    assert load_patient("F1", nifti, other).mask is not None
