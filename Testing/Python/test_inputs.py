"""Bad input gets a clear error naming the patient, the column or the file, and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import same_geometry
from NPCPrognosisLib.io.clinical import encode_clinical, parse_clinical, parse_key_values
from NPCPrognosisLib.io.images import align_patient, load_patient, read_image
from NPCPrognosisLib.io.manifest import check_outcomes, follow_up_warning, load_column_map, read_manifest

GOOD = {"age": 52, "sex": "M", "t_stage": "T2", "n_stage": "N1", "ebv_dna": 1500, "rene": 1, "ldh": 180,
        "chemo": 1, "ccnd": 200}


def _image(shape=(8, 20, 20), spacing=(1.0, 1.0, 3.0), value=None, origin=(0.0, 0.0, 0.0)):
    array = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32) if value is None else value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _mask(shape=(8, 20, 20), labels=(1, 2)):
    array = np.zeros(shape, np.uint8)
    if 1 in labels:
        array[2:6, 5:10, 5:10] = 1
    if 2 in labels:
        array[2:5, 12:16, 12:16] = 2
    mask = sitk.GetImageFromArray(array)
    mask.SetSpacing((1.0, 1.0, 3.0))
    return mask


def _like(reference, array):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _write_cohort(tmp_path, rows):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("t1", "t2", "t1c"):
        sitk.WriteImage(_image(), str(images / f"{name}.nii.gz"))
    sitk.WriteImage(_mask(), str(images / "mask.nii.gz"))
    table = []
    for i, overrides in enumerate(rows):
        row = {"patient_id": f"P{i:03d}", "t1": "images/t1.nii.gz", "t2": "images/t2.nii.gz",
               "t1c": "images/t1c.nii.gz", "mask": "images/mask.nii.gz", **GOOD,
               "dmfs_time": 30.0 + i, "dmfs_event": i % 2, "os_time": 40.0, "os_event": 0}
        row.update(overrides)
        table.append(row)
    path = tmp_path / "manifest.csv"
    pd.DataFrame(table).to_csv(path, index=False)
    return path


def test_clinical_parsing_accepts_common_spellings_and_encodes():
    record = parse_clinical({**GOOD, "t_stage": "t4a", "n_stage": "3", "sex": "male", "ebv_dna": ""}, "P1")
    assert (record.t_stage, record.n_stage, record.sex, record.ebv_dna) == ("T4", "N3", "M", None)
    encoded = encode_clinical(record, ebv_fill=2.5)
    assert encoded["t_stage"] == 4 and encoded["n_stage"] == 3 and encoded["male"] == 1
    assert encoded["log10_ebv_dna"] == 2.5
    assert [encoded[name] for name in ("t_stage_T2", "t_stage_T3", "t_stage_T4")] == [0, 0, 1]
    assert [encoded[name] for name in ("n_stage_N1", "n_stage_N2", "n_stage_N3")] == [0, 0, 1]
    assert encode_clinical(parse_clinical(GOOD))["log10_ebv_dna"] == pytest.approx(np.log10(1501))


@pytest.mark.parametrize("field,value,words", [
    ("t_stage", "T5", ["P9", "t_stage", "T5", "T1"]),
    ("n_stage", "Nx", ["P9", "n_stage", "Nx"]),
    ("sex", "X", ["P9", "sex"]),
    ("sex", "1", ["P9", "sex", "MALE"]),  # 1 is male in one cohort and female in the next
    ("chemo", 0.5, ["P9", "chemo", "0 or 1"]),
    ("ebv_dna", "<500", ["P9", "ebv_dna", "detection limit"]),
    ("age", "fifty", ["P9", "age"]),
    ("rene", 3, ["P9", "rene"]),
    ("ldh", None, ["P9", "ldh", "missing"]),
    ("t_stage", "\u00b3", ["P9", "t_stage", "T1, T2, T3, T4 (AJCC 8th"]),  # a digit to Python, not to float()
    ("t_stage", "T0", ["P9", "T0", "not supported"]),
    ("rene", True, ["P9", "rene", "grade"]),  # a yes/no column: True would be grade 1
])
def test_clinical_errors_name_patient_and_column(field, value, words):
    with pytest.raises(InputError) as info:
        parse_clinical({**GOOD, field: value}, "P9")
    for word in words:
        assert word in str(info.value)
    assert "Fix:" in str(info.value) or "missing" in str(info.value)


def test_rene_without_nodes_is_refused():
    with pytest.raises(InputError, match="N0"):
        parse_clinical({**GOOD, "n_stage": "N0", "rene": 2}, "P2")


def test_a_missing_dose_stays_missing_and_radiotherapy_alone_with_a_dose_is_refused(tmp_path):
    """chemo=1 without ccnd was stored as 0 mg/m2 (the low-dose arm) where training puts it in no dose arm, and
    chemo=0 with ccnd=193 was accepted and shown as 'radiotherapy alone | 193.0 mg/m2'."""
    from NPCPrognosisLib.survival.benefit import UNKNOWN_DOSE, assign_arms

    record = parse_clinical({**GOOD, "ccnd": ""}, "P9")
    assert record.chemo == 1 and record.ccnd is None
    assert assign_arms([record.chemo], [record.ccnd]).tolist() == [UNKNOWN_DOSE]  # as training reads such a row
    assert parse_clinical({**GOOD, "chemo": 0, "ccnd": 0}).ccnd == 0.0
    assert parse_clinical({**GOOD, "chemo": "", "ccnd": 193}).ccnd == 193.0  # a cohort recording doses only
    with pytest.raises(InputError) as info:
        parse_clinical({**GOOD, "chemo": 0, "ccnd": 193}, "P9")
    for word in ("P9", "chemo = 0", "ccnd = 193", "Fix: set chemo=1"):
        assert word in str(info.value)
    # a cohort table follows the same rule, and the error names its file
    with pytest.raises(InputError, match="chemo = 0") as info:
        read_manifest(_write_cohort(tmp_path, [{}, {"chemo": 0, "ccnd": 193}]))
    assert "P001" in str(info.value) and "manifest.csv" in str(info.value)


def test_a_dose_given_in_cycles_or_grams_is_refused_not_read_as_a_low_dose(tmp_path):
    """ccnd as cycles (3) or g/m2 (0.24) was read as 3 or 0.24 mg/m2: every treated patient fell in the low-dose arm
    (a 70-patient cohort's 38 high-dose patients among them), and predict named a patient's arm low-dose."""
    from NPCPrognosisLib.survival.benefit import CCND_THRESHOLD, assign_arms

    for dose in (3, "0.24", 9.5):
        with pytest.raises(InputError) as info:
            parse_clinical({**GOOD, "chemo": 1, "ccnd": dose}, "P9")
        for word in ("P9", "column 'ccnd'", "number of cycles or g/m2", "Fix: give the cumulative dose in mg/m2"):
            assert word in str(info.value)
    # real doses keep their arms, the smallest weekly cycle included; no dose at all is radiotherapy alone
    records = [parse_clinical({**GOOD, "chemo": chemo, "ccnd": dose}) for chemo, dose in
               ((1, 10), (1, 30), (1, CCND_THRESHOLD), (1, 240), (0, 0))]
    assert assign_arms([r.chemo for r in records], [r.ccnd for r in records]).tolist() == [
        "low_dose", "low_dose", "low_dose", "high_dose", "rt_alone"]
    # a cohort of cycles is refused by its first treated row, with the file named
    with pytest.raises(InputError, match="number of cycles") as info:
        read_manifest(_write_cohort(tmp_path, [{"chemo": 0, "ccnd": 0}, {"chemo": 1, "ccnd": 3}]))
    assert "P001" in str(info.value) and "manifest.csv" in str(info.value)


def test_key_values_from_cli():
    assert parse_key_values(["age=52", "sex=M"]) == {"age": "52", "sex": "M"}
    with pytest.raises(InputError, match="given twice"):  # the last one silently won
        parse_key_values(["age=48", "sex=M", "age=90"])
    with pytest.raises(InputError, match="weight"):
        parse_key_values(["weight=70"])


def test_manifest_reads_and_resolves_paths(tmp_path):
    manifest = read_manifest(_write_cohort(tmp_path, [{}, {}]))
    entry = manifest.entries()[0]
    assert entry.images["t1c"] == tmp_path.resolve() / "images" / "t1c.nii.gz"
    assert entry.mask.exists()
    assert entry.clinical_record().t_stage == "T2"
    check_outcomes(manifest, "dmfs")


def test_manifest_duplicate_ids(tmp_path):
    path = _write_cohort(tmp_path, [{"patient_id": "A1"}, {"patient_id": "A1"}])
    with pytest.raises(InputError, match="duplicate patient IDs.*A1"):
        read_manifest(path)


def test_ids_that_make_one_file_name_are_refused(tmp_path):
    path = _write_cohort(tmp_path, [{"patient_id": "P 1"}, {"patient_id": "p_1"}])
    with pytest.raises(InputError, match=r"patient IDs \['P 1', 'p_1'\] give the same file name 'P_1'"):
        read_manifest(path)


def test_manifest_unknown_stage_names_patient(tmp_path):
    path = _write_cohort(tmp_path, [{}, {"t_stage": "T7"}])
    with pytest.raises(InputError) as info:
        read_manifest(path)
    assert "P001" in str(info.value) and "t_stage" in str(info.value)


def test_stage_columns_read_as_decimals_parse_and_a_blank_cell_names_its_own_patient(tmp_path):
    # one blank T cell makes pandas read the column as floats (2.0): the valid rows must still parse and the error
    # must name the patient whose cell is blank, not the first row
    path = _write_cohort(tmp_path, [{"t_stage": 2}, {"t_stage": None}, {"t_stage": 3}])
    with pytest.raises(InputError, match="missing clinical value.*t_stage") as info:
        read_manifest(path)
    assert "P001" in str(info.value) and "P000" not in str(info.value)
    assert parse_clinical({**GOOD, "t_stage": 2.0, "n_stage": "1.0"}).t_stage == "T2"
    with pytest.raises(InputError, match="t_stage"):
        parse_clinical({**GOOD, "t_stage": 2.5})


def test_missing_outcome_in_training_row(tmp_path):
    manifest = read_manifest(_write_cohort(tmp_path, [{}, {"dmfs_time": None}]))
    with pytest.raises(InputError) as info:
        check_outcomes(manifest, "dmfs")
    assert "P001" in str(info.value) and "dmfs_time" in str(info.value)
    check_outcomes(manifest, "dmfs", patient_ids=["P000"])  # prediction rows may lack outcomes


def test_column_map_lets_users_keep_their_names(tmp_path):
    path = _write_cohort(tmp_path, [{}, {}])
    table = pd.read_csv(path).rename(columns={"patient_id": "MRN", "t1c": "T1C_path"})
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match="patient_id"):
        read_manifest(path)
    manifest = read_manifest(path, load_column_map("patient_id=MRN,t1c=T1C_path"))
    assert manifest.patient_ids == ["P000", "P001"]
    # a mapped ID column is text too: an MRN keeps its leading zeros and gets no '.0', and a blank one is refused
    table.assign(MRN=["007", "0042"]).to_csv(path, index=False)
    assert read_manifest(path, {"patient_id": "MRN", "t1c": "T1C_path"}).patient_ids == ["007", "0042"]
    table.assign(MRN=["007", None]).to_csv(path, index=False)
    with pytest.raises(InputError, match="empty patient_id in row 3"):
        read_manifest(path, {"patient_id": "MRN", "t1c": "T1C_path"})
    with pytest.raises(InputError, match="NOPE"):
        read_manifest(path, {"patient_id": "NOPE"})


def test_spreadsheet_exports_are_read_or_refused_with_the_reason(tmp_path):
    """What a spreadsheet does to a CSV: stray spaces and capitals in headers, trailing empty columns, a column
    twice, semicolons, Latin-1; each is read as meant or refused naming what to do, never silently misread."""
    path = _write_cohort(tmp_path, [{"patient_id": "007"}, {}])
    text = path.read_text(encoding="utf-8")
    header, rest = text.split("\n", 1)
    # 'EBV_DNA ' is the ebv_dna column (it had been dropped, and every patient imputed without a word)
    path.write_text(header.replace("ebv_dna", " EBV_DNA ").replace("sex", "sex ") + "\n" + rest, encoding="utf-8")
    manifest = read_manifest(path)
    assert manifest.table["ebv_dna"].tolist() == [GOOD["ebv_dna"]] * 2 and manifest.patient_ids == ["007", "P001"]
    path.write_text(text.replace("\n", ",,\n"), encoding="utf-8")  # trailing empty columns
    assert read_manifest(path).patient_ids == ["007", "P001"]
    # rows a cell longer than the header (a trailing comma): pandas had put the IDs in the index, every column shifted
    path.write_text(header + "\n" + rest.replace("\n", ",\n"), encoding="utf-8")
    shifted = read_manifest(path)
    assert shifted.patient_ids == ["007", "P001"] and shifted.table["age"].tolist() == [GOOD["age"]] * 2
    # a command line's spelling of a column finds it as the reader named it
    path.write_text(header.replace("ldh", "LDH ") + "\n" + rest, encoding="utf-8")
    assert read_manifest(path).column("Ldh") == "ldh" and read_manifest(path).column("nowhere") == "nowhere"
    path.write_text(header.replace("ldh", "age") + "\n" + rest, encoding="utf-8")
    with pytest.raises(InputError, match=r"\['age'\] appear more than once"):  # pandas had used the first
        read_manifest(path)
    path.write_text(text.replace(",", ";"), encoding="utf-8")
    with pytest.raises(InputError, match="not separated by commas") as info:
        read_manifest(path)
    assert "CSV UTF-8" in str(info.value)
    path.write_bytes(text.replace("P001", "P\u00e9").encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_manifest(path)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"would both be read as \['age'\]"):
        read_manifest(path, {"age": "ldh"})
    with pytest.raises(InputError, match=r"missing column\(s\) \['t2'\]; the manifest's columns are \['patient_id'"):
        read_manifest(_rewrite(path, lambda t: t.drop(columns=["t2"])))


def _rewrite(path, edit):
    edit(pd.read_csv(path, dtype={"patient_id": str})).to_csv(path, index=False)
    return path


def test_a_manifest_id_written_another_way_than_the_features_table_is_named_with_the_fix(tmp_path, caplog):
    """A manifest that writes 'RLX 0004' where extract wrote 'RLX0004' left the patient out as 'no features', which
    reads like a failed extraction: the message names the row it probably is and the fix."""
    import logging

    from NPCPrognosisLib.io.patient_ids import loose_id_key, respelled_ids
    from NPCPrognosisLib.pipeline.train import training_split

    assert loose_id_key("RLX 0004") == loose_id_key("rlx4") == loose_id_key(" Rlx 04 ") == "rlx4"
    assert loose_id_key("RLX-0004") != loose_id_key("RLX0004")  # one rule: spaces, case, leading zeros; no more
    # 'RLX0005' is written exactly by another manifest patient: it is that patient's row, no respelling
    assert respelled_ids(["RLX 0004", "RLX 0005", "P9"], ["RLX0004", "RLX0005", "X1"], ["RLX0005"]) == [
        ("RLX 0004", "RLX0004")]
    ids = [f"RLX{k:04d}" for k in range(1, 13)]
    path = _write_cohort(tmp_path, [{"patient_id": pid, "dmfs_event": k % 3 == 0} for k, pid in enumerate(ids)])
    features = pd.DataFrame({"patient_id": ids, "t1c_gtvp_original_shape_MeshVolume": np.arange(12.0)})
    _rewrite(path, lambda t: t.assign(patient_id=["RLX 0004" if p == "RLX0004" else p for p in t["patient_id"]]))
    with caplog.at_level(logging.WARNING):
        training_split(read_manifest(path), features, "dmfs", split_col=None, test_fraction=0.25, seed=0)
    message = " ".join(r.getMessage() for r in caplog.records if "no features" in r.getMessage())
    assert "1 patient(s) have no features and are left out: ['RLX 0004']" in message
    assert "'RLX 0004' is 'RLX0004' there" in message and "Fix: write the IDs in the manifest as the features" \
        in message
    # none matches exactly: the refusal names the respelling too
    _rewrite(path, lambda t: t.assign(patient_id=[f"RLX {k:04d}" for k in range(1, 13)]))
    with pytest.raises(InputError, match="none of the manifest's 12 patient IDs") as info:
        training_split(read_manifest(path), features, "dmfs", split_col=None, test_fraction=0.25, seed=0)
    assert "12 of the patients without features have a row in the features table under another spelling of the " \
           "ID: 'RLX 0001' is 'RLX0001' there" in str(info.value)
    # a patient simply without a row (extraction failed) gets no such note
    caplog.clear()
    _rewrite(path, lambda t: t.assign(patient_id=ids))
    with caplog.at_level(logging.WARNING):
        training_split(read_manifest(path), features[features.patient_id != "RLX0004"], "dmfs", split_col=None,
                       test_fraction=0.25, seed=0)
    message = " ".join(r.getMessage() for r in caplog.records if "no features" in r.getMessage())
    assert "['RLX0004']" in message and "another spelling" not in message


def test_outcome_cells_and_units_are_checked_where_they_would_be_misread(tmp_path):
    path = _write_cohort(tmp_path, [{"os_event": "dead"}, {}])
    with pytest.raises(InputError, match="os_event is 'dead', not a number") as info:
        read_manifest(path)  # extract too: it had died on a bare ValueError naming no patient
    assert "P000" in str(info.value)
    rows = [{"dmfs_time": 30.44 * (20 + 5 * i)} for i in range(12)]  # days
    (tmp_path / "images").rename(tmp_path / "old")
    with pytest.raises(InputError, match="the median dmfs_time is .* look like days"):
        read_manifest(_write_cohort(tmp_path, rows))  # every command that reads the table, not only training
    _rewrite(tmp_path / "manifest.csv", lambda t: t.assign(dmfs_time=[20.0 + 5 * i for i in range(12)]))
    manifest = read_manifest(tmp_path / "manifest.csv")
    manifest.table["dmfs_time"] = [30.44 * (20 + 5 * i) for i in range(12)]  # a table built without the reader
    with pytest.raises(InputError, match="look like days"):
        check_outcomes(manifest, "dmfs")
    manifest.table["dmfs_time"] = np.inf
    with pytest.raises(InputError, match="positive number of months"):
        check_outcomes(manifest, "dmfs")
    manifest.table["dmfs_time"] = [2.0 + i / 2 for i in range(12)]  # years
    check_outcomes(manifest, "dmfs")
    assert "years" in follow_up_warning(manifest, "dmfs")
    manifest.table["dmfs_time"] = [20.0 + 5 * i for i in range(12)]
    assert follow_up_warning(manifest, "dmfs") is None


def test_follow_up_of_some_patients_in_days_is_refused_naming_them(tmp_path):
    """One centre's rows exported in days among months: the median (34 months) looked right, and a patient with
    4 years of follow-up (1461 days) was read as 122 years of it."""
    days = {3: 4 * 365.25, 9: 2.5 * 365.25, 15: 600.0}  # real follow-up 48, 30 and 19.7 months
    rows = [{"dmfs_time": days.get(i, 24.0 + i), "os_time": days.get(i, 24.0 + i)} for i in range(20)]
    path = _write_cohort(tmp_path, rows)
    with pytest.raises(InputError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "3 patient(s) have a dmfs_time beyond 480 months" in message
    assert "P003 (1461), P009 (913.125), P015 (600)" in message
    assert "patient 'P003'" in message and str(path) in message and "days / 30.44" in message
    # converted as the message says, the same table is read and its outcomes pass
    converted = {i: round(value / 30.44, 2) for i, value in days.items()}
    _rewrite(path, lambda t: t.assign(dmfs_time=[converted.get(i, 24.0 + i) for i in range(20)],
                                      os_time=[converted.get(i, 24.0 + i) for i in range(20)]))
    manifest = read_manifest(path)
    check_outcomes(manifest, "dmfs")
    assert manifest.outcome_arrays("dmfs")[0][3] == pytest.approx(48.0, abs=0.05)
    # a table built without the reader (a resample, a test split) meets the same check in check_outcomes, for
    # the patients selected; 40 years is still accepted
    manifest.table.loc[9, "dmfs_time"] = 913.125
    with pytest.raises(InputError, match=r"1 patient\(s\) have a dmfs_time beyond 480 months.*P009 \(913.125\)"):
        check_outcomes(manifest, "dmfs")
    check_outcomes(manifest, "dmfs", patient_ids=[f"P{i:03d}" for i in range(20) if i != 9])
    manifest.table.loc[9, "dmfs_time"] = 480.0
    check_outcomes(manifest, "dmfs")


def test_ebv_dna_in_log10_copies_or_as_a_flag_is_refused_and_a_yes_no_rene_is_not_a_grade(tmp_path):
    path = _write_cohort(tmp_path, [{"ebv_dna": 3.2 + i / 10} for i in range(12)])
    with pytest.raises(InputError, match="look like log10 copies") as info:
        read_manifest(path)
    assert "ebv_dna" in str(info.value)
    _rewrite(path, lambda t: t.assign(ebv_dna=[0, 1] * 6))
    with pytest.raises(InputError, match="flag"):
        read_manifest(path)
    _rewrite(path, lambda t: t.assign(ebv_dna=[0, 1500] * 6))
    read_manifest(path)
    _rewrite(path, lambda t: t.assign(ebv_dna=0))  # undetectable in every patient is no unit error
    read_manifest(path)
    _rewrite(path, lambda t: t.assign(rene=[True, False] * 6, n_stage="N2"))
    with pytest.raises(InputError, match="rene must be a number") as info:
        read_manifest(path)
    assert "P000" in str(info.value)


def test_missing_file_names_patient_and_path(tmp_path):
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "nowhere.nii.gz", patient_id="P7", role="t2")
    assert "P7" in str(info.value) and "nowhere.nii.gz" in str(info.value) and "t2" in str(info.value)


def test_non_3d_and_nan_images_are_refused(tmp_path):
    flat = sitk.GetImageFromArray(np.zeros((20, 20), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="not a 3D volume"):
        read_image(tmp_path / "flat.nii.gz", patient_id="P1")
    sitk.WriteImage(_image(shape=(3, 20, 20)), str(tmp_path / "three.nii.gz"))  # 3D filters need 4 voxels
    with pytest.raises(InputError, match="at least 4 voxels"):
        read_image(tmp_path / "three.nii.gz", patient_id="P1")
    array = np.ones((8, 20, 20), np.float32)
    array[3, 4, 5] = np.nan
    sitk.WriteImage(_image(value=array), str(tmp_path / "nan.nrrd"))  # ITK NIfTI IO turns NaN into 0 itself
    with pytest.raises(InputError, match="1 NaN"):
        read_image(tmp_path / "nan.nrrd", patient_id="P1")


def test_empty_gtvp_and_unknown_labels():
    images = {"t1c": _image()}
    with pytest.raises(InputError, match="GTVp is empty"):
        align_patient(images, _mask(labels=(2,)), patient_id="P3")
    bad = sitk.GetImageFromArray(np.full((8, 20, 20), 5, np.uint8))
    bad.SetSpacing((1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="label value"):
        align_patient(images, bad, patient_id="P3")


def test_an_image_given_as_the_mask_is_named_in_a_short_message():
    """The manifest's mask column pointing at an MR image listed its every grey value (3,000 characters for a
    synthetic CET1W) before the fix."""
    image = sitk.Cast(_image(value=np.arange(8 * 20 * 20, dtype=np.float32).reshape(8, 20, 20)), sitk.sitkInt16)
    with pytest.raises(InputError, match=r"3197 label values \(3 to 3199\): an image") as info:
        align_patient({"t1c": _image()}, image, patient_id="P3", paths={"mask": "t1c.nii.gz"})
    assert len(str(info.value)) < 300 and "P3" in str(info.value) and "t1c.nii.gz" in str(info.value)


def test_mask_values_are_checked_as_stored_not_after_a_cast_to_8_bits():
    images = {"t1c": _image()}
    labels = sitk.GetArrayFromImage(_mask()).astype(np.int16)
    wrapped = labels.copy()
    wrapped[wrapped == 2] = 258  # an 8-bit cast wraps it to 2 and would accept it as GTVn
    with pytest.raises(InputError, match=r"label value\(s\) \[258\]") as info:
        align_patient(images, _like(_mask(), wrapped), patient_id="P3", paths={"mask": "m.nii.gz"})
    assert "P3" in str(info.value) and "m.nii.gz" in str(info.value)
    interpolated = labels.astype(np.float32)
    interpolated[interpolated == 2] = 1.6  # a linearly resampled label map: the cast truncates its nodes to GTVp
    with pytest.raises(InputError, match="non-integer value.*1.6.*nearest-neighbour"):
        align_patient(images, _like(_mask(), interpolated), patient_id="P3")
    whole = align_patient(images, _like(_mask(), labels.astype(np.float32)), patient_id="P3")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(whole.mask), labels)
    assert whole.mask.GetPixelID() == sitk.sitkUInt8


def test_mask_outside_image_is_a_geometry_mismatch():
    shifted = _mask()
    shifted.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(InputError) as info:
        align_patient({"t1c": _image()}, shifted, patient_id="P4", paths={"mask": "m.nii.gz"})
    assert "geometry" in str(info.value) and "P4" in str(info.value) and "m.nii.gz" in str(info.value)


def test_sequences_on_other_grids_are_resampled_onto_t1c():
    t1c = _image()
    t2 = _image(shape=(4, 40, 40), spacing=(0.5, 0.5, 6.0))
    aligned = align_patient({"t1c": t1c, "t2": t2}, _mask(), patient_id="P5")
    assert same_geometry(aligned.images["t2"], t1c)
    # routine, so no warning: one on every patient of a cohort hid those that matter (extract lists them)
    assert not [w for w in aligned.warnings if "resampled" in w]
    far = _image(origin=(1000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not overlap"):
        align_patient({"t1c": t1c, "t2": far}, None, patient_id="P5")
    half_off = _image(origin=(0.0, 14.0, 0.0))  # 6 of the t1c's 20 rows covered: 30 % either way
    with pytest.raises(InputError, match="does not overlap"):
        align_patient({"t1c": t1c, "t2": half_off}, None, patient_id="P5")


def test_a_sequence_covering_part_of_the_t1c_field_is_named_with_the_contours_it_misses():
    """A T2W over the upper half of the CET1W's slices: outside it the network and the radiomics read the fill value
    (GTVp Dice 0.95 -> 0.57 on a phantom, with only 'resampled' said); the share and the contours it misses are
    named."""
    t1c = _image()
    upper = _image(shape=(4, 20, 20))  # slices 0-3 of the CET1W's 8
    aligned = align_patient({"t1c": t1c, "t2": upper}, _mask(), patient_id="P5")
    assert any(w.startswith("t2 covers 50% of the t1c field") for w in aligned.warnings)
    # GTVp on slices 2-5 (4 x 25 voxels, two slices outside) and GTVn on slices 2-4 (3 x 16, one outside)
    assert "66 of the 148 contoured voxels lie outside the t2 field" in " ".join(aligned.warnings)
    # 94.9 % (949 of 1000 columns) is below the 95 % that is warned about, so it never reads '95%' (RLX0006 did)
    wide = _image(shape=(2, 2, 1000))
    almost = align_patient({"t1c": wide, "t2": _image(shape=(2, 2, 949))}, None, patient_id="P5")
    assert any(w.startswith("t2 covers 94% of the t1c field") for w in almost.warnings)
    whole = align_patient({"t1c": t1c, "t2": _image(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.5))}, _mask(),
                          patient_id="P5")  # a sixth of a slice off: every voxel still covered
    assert not any("covers" in w or "outside the t2" in w for w in whole.warnings)


def test_a_sequence_covering_part_of_the_field_is_not_a_warning_when_every_contour_lies_inside_it():
    """A T2W covering 75 % of the CET1W's slices, the contours all inside it: nothing computed from them reads the
    fill, yet every such patient was warned (a third of a family-C cohort, on extract's list and the patient sheet).
    Without contours (a network will segment) the share is still said: the tumour may lie outside."""
    t1c, lower_three_quarters = _image(), _image(shape=(6, 20, 20))  # slices 0-5 of 8; contours on slices 2-5
    contoured = align_patient({"t1c": t1c, "t2": lower_three_quarters}, _mask(), patient_id="P5")
    assert not any("t2" in w for w in contoured.warnings), contoured.warnings
    uncontoured = align_patient({"t1c": t1c, "t2": lower_three_quarters}, None, patient_id="P5")
    assert any(w.startswith("t2 covers 75% of the t1c field") for w in uncontoured.warnings)


def test_a_sequence_over_a_wider_field_than_t1c_is_resampled_not_refused():
    """A T2W acquired over a wider field than the CET1W covers all of it, though most of the T2W's own box lies
    outside the CET1W's (a family-C patient, 184 mm inside 236 mm in plane, was refused as 'does not overlap')."""
    t1c = _image()  # 20 x 20 x 24 mm
    wide = _image(shape=(12, 40, 40), spacing=(1.0, 1.0, 3.0), origin=(-10.0, -10.0, -6.0))  # 40 x 40 x 36 mm
    aligned = align_patient({"t1c": t1c, "t2": wide}, _mask(), patient_id="P5")
    assert same_geometry(aligned.images["t2"], t1c)
    # the wide image's values land where they were: a voxel of it read back at the same physical point
    point = t1c.TransformIndexToPhysicalPoint((7, 3, 2))
    expected = wide.GetPixel(wide.TransformPhysicalPointToIndex(point))
    assert aligned.images["t2"].GetPixel((7, 3, 2)) == pytest.approx(expected, rel=1e-5)


def test_load_patient_from_files(tmp_path):
    path = _write_cohort(tmp_path, [{}])
    entry = read_manifest(path).entries()[0]
    patient = load_patient(entry.patient_id, entry.images, entry.mask)
    assert set(patient.images) == {"t1", "t2", "t1c"}
    assert same_geometry(patient.mask, patient.images["t1c"])


# ---------------------------------------------------------------------------------------------- mask geometry
def _labelled_like(image, shift_voxels=(0, 0, 0)):
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[2:6, 4:16, 4:16] = 1  # 1.7 mL
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


@pytest.mark.parametrize("change, expected", [
    ("spacing", "spacing"),
    ("origin", "origin differs by"),
    ("flip", "axis x flipped"),
])
def test_a_mask_on_another_grid_is_refused_with_the_exact_difference(change, expected):
    from NPCPrognosisLib.io.images import align_patient

    image = _image()
    mask = _labelled_like(image)
    if change == "spacing":
        mask.SetSpacing((1.1, 1.0, 3.0))
    elif change == "origin":
        mask.SetOrigin((0.4, 0.0, 0.0))
    else:
        direction = np.array(mask.GetDirection()).reshape(3, 3)
        direction[:, 0] *= -1
        mask.SetDirection(direction.ravel().tolist())
        mask.SetOrigin((19.0, 0.0, 0.0))  # the flipped grid covers the same box
    with pytest.raises(InputError, match=expected) as info:
        align_patient({"t1c": image}, mask, patient_id="P9", paths={"mask": "m.nii.gz"})
    assert "P9" in str(info.value) and "--resample-mask" in str(info.value)
    # Resampling only when asked, with a warning that says so.
    aligned = align_patient({"t1c": image}, mask, patient_id="P9", resample_mask=True)
    assert any("--resample-mask" in w for w in aligned.warnings)
    assert aligned.mask.GetSize() == image.GetSize()


def _head(shape=(8, 20, 20)):
    """Air around a bright head, as on any MR image."""
    array = np.full(shape, 5.0, np.float32)
    array[:, 2:18, 2:18] = 300.0 + np.random.default_rng(2).normal(0, 10, (shape[0], 16, 16))
    return _image(value=array)


def test_header_noise_and_crops_are_accepted_exactly():
    from NPCPrognosisLib.imaging.geometry import same_geometry
    from NPCPrognosisLib.io.images import align_patient

    image = _head()
    mask = _labelled_like(image)
    noisy = sitk.Image(mask)
    noisy.SetOrigin((1e-5, -2e-5, 0.0))
    noisy.SetSpacing((1.0 + 1e-6, 1.0, 3.0))
    aligned = align_patient({"t1c": image}, noisy, patient_id="P10")
    assert aligned.warnings == [] and same_geometry(aligned.mask, image)
    assert aligned.mask.GetOrigin() == image.GetOrigin()  # the reference header, not the noisy one
    crop = sitk.RegionOfInterest(mask, (14, 14, 6), (3, 3, 1))  # an editor that saves only the bounding box
    aligned = align_patient({"t1c": image}, crop, patient_id="P10")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(aligned.mask), sitk.GetArrayFromImage(mask))
    assert "crop" in aligned.warnings[0]


def test_predict_and_extract_offer_the_resample_option(tmp_path):
    from NPCPrognosisLib.cli import build_parser

    parser = build_parser()
    for command in (["extract", "--manifest", "m.csv", "--out", "f.csv"],
                    ["predict", "--bundle", "b", "--t1", "a", "--t2", "b", "--t1c", "c", "--out", "o"]):
        assert parser.parse_args(command).resample_mask is False
        assert parser.parse_args([*command, "--resample-mask"]).resample_mask is True


# ---------------------------------------------------------------------------------------------- corrupt files
def test_a_truncated_nifti_gz_is_refused_not_zero_filled(tmp_path):
    path = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(_image(shape=(20, 64, 64)), str(path))
    data = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: int(len(data) * 0.4)])
    assert sitk.ReadImage(str(tmp_path / "cut.nii.gz")).GetSize() == (64, 64, 20)  # what SimpleITK alone does
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        read_image(tmp_path / "cut.nii.gz", patient_id="P11", role="t1c")
    assert "P11" in str(info.value) and "cut.nii.gz" in str(info.value)


def test_an_uncompressed_nifti_cut_short_is_refused(tmp_path):
    sitk.WriteImage(_image(shape=(20, 64, 64)), str(tmp_path / "t2.nii"))
    data = (tmp_path / "t2.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated: the header describes"):
        read_image(tmp_path / "short.nii", patient_id="P12", role="t2")


def test_nan_voxels_in_nifti_are_found_in_the_raw_payload(tmp_path):
    array = np.random.default_rng(1).normal(100, 10, (8, 20, 20)).astype(np.float32)
    array[3, 4, 5] = np.nan
    array[2, 2, 2] = np.inf
    image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputError, match="2 NaN/infinite voxels"):
        read_image(tmp_path / "nan.nii.gz", patient_id="P13", role="t1")


def test_a_blank_sequence_is_refused(tmp_path):
    sitk.WriteImage(_image(value=np.zeros((8, 20, 20), np.float32)), str(tmp_path / "zero.nii.gz"))
    with pytest.raises(InputError, match="blank: every voxel is 0"):
        read_image(tmp_path / "zero.nii.gz", patient_id="P14", role="t2")


def test_tiny_or_outside_gtvp_gives_a_warning_that_reaches_the_prediction():
    image = _image(value=np.where(np.arange(20)[None, None, :] < 10, 300.0, 5.0).astype(np.float32)
                   * np.ones((8, 20, 1), np.float32))
    tiny = np.zeros((8, 20, 20), np.uint8)
    tiny[4, 5, 5] = 1
    mask = sitk.GetImageFromArray(tiny)
    mask.CopyInformation(image)
    aligned = align_patient({"t1c": image}, mask, patient_id="P15")
    assert any("below the 0.5 mL" in w for w in aligned.warnings)
    outside = np.zeros((8, 20, 20), np.uint8)
    outside[2:6, 5:15, 12:18] = 1  # in the dark half of the image
    mask = sitk.GetImageFromArray(outside)
    mask.CopyInformation(image)
    aligned = align_patient({"t1c": image}, mask, patient_id="P15")
    assert any("outside the head" in w for w in aligned.warnings)


# ---------------------------------------------------------------------------------------------- one-line errors
def _demo_copy(tmp_path, edit):
    import hashlib
    import json
    import shutil

    from NPCPrognosisLib.resources import DEMO_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    document = json.loads((bundle / "bundle.json").read_text())
    edit(document)
    text = json.dumps(document)
    (bundle / "bundle.json").write_text(text)
    lines = [line for line in (bundle / "SHA256SUMS").read_text().splitlines() if not line.endswith("  bundle.json")]
    lines.append(f"{hashlib.sha256(text.encode()).hexdigest()}  bundle.json")
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return bundle


def test_a_bundle_missing_a_key_fails_when_loaded_not_after_the_radiomics(tmp_path):
    from NPCPrognosisLib.errors import BundleError
    from NPCPrognosisLib.pipeline.models import load_bundle

    bundle = _demo_copy(tmp_path, lambda d: d.pop("cutoffs"))
    with pytest.raises(BundleError, match="lacks \\['cutoffs'\\]"):
        load_bundle(bundle)


def test_a_malformed_checksum_list_is_named(tmp_path):
    from NPCPrognosisLib.errors import BundleError
    from NPCPrognosisLib.io.bundle import read_bundle

    bundle = _demo_copy(tmp_path, lambda d: None)
    with open(bundle / "SHA256SUMS", "a") as handle:
        handle.write("garbage line without hash\n")
    with pytest.raises(BundleError, match="line .* is not '<sha256>  <file>'"):
        read_bundle(bundle)


def test_user_errors_end_in_one_line_and_exit_2(tmp_path, capsys):
    from NPCPrognosisLib.cli import main

    rows = [dict(GOOD, patient_id=f"P{i}", t1="a.nii.gz", t2="a.nii.gz", t1c="a.nii.gz", mask="m.nii.gz",
                 dmfs_time=10 + i, dmfs_event=i % 2) for i in range(4)]
    rows[2]["dmfs_time"] = "about a year"
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    features = pd.DataFrame({"patient_id": [f"P{i}" for i in range(4)], "t1c_gtvp_original_shape_MeshVolume":
                             ["1.0", "2.0", "n/a?", "3.0"]})
    features.to_csv(tmp_path / "f.csv", index=False)
    (tmp_path / "map.json").write_text("{not json")
    (tmp_path / "afile").write_text("x")
    cases = [
        (["train", "--manifest", str(tmp_path / "m.csv"), "--features", str(tmp_path / "f.csv"), "--endpoint",
          "dmfs", "--out", str(tmp_path / "b")], "P2"),  # the features table's text cell, found first
        (["train", "--manifest", str(tmp_path / "m.csv"), "--column-map", str(tmp_path / "map.json"), "--features",
          str(tmp_path / "f.csv"), "--endpoint", "dmfs", "--out", str(tmp_path / "b")], "not valid JSON"),
        (["extract", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "afile" / "f.csv")],
         "is a file"),
        (["extract", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path)], "existing folder"),
        (["predict", "--bundle", "b", "--t1", "a", "--t2", "b", "--t1c", "c", "--out", str(tmp_path / "afile")],
         "existing file"),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"npc-prognosis {args[0]}: error:") and expected in err[0], err
    features["t1c_gtvp_original_shape_MeshVolume"] = ["1.0", "2.0", "2.5", "3.0"]
    features.to_csv(tmp_path / "f.csv", index=False)
    capsys.readouterr()
    assert main(cases[0][0]) == 2
    err = capsys.readouterr().err
    assert "P2" in err and "dmfs_time" in err and "not a number" in err


def test_implausible_intensities_are_warned_about():
    phase = _head()
    array = sitk.GetArrayFromImage(phase)
    array[:, :, :10] *= -1  # half the head negative: a phase or difference image
    negative = sitk.GetImageFromArray(array)
    negative.CopyInformation(phase)
    flat = _image(value=(1000.0 + np.random.default_rng(3).normal(0, 0.01, (8, 20, 20))).astype(np.float32))
    mask = _labelled_like(phase)
    aligned = align_patient({"t1c": _head(), "t1": negative, "t2": flat}, mask, patient_id="P16")
    assert any(w.startswith("t1 has") and "negative voxels" in w for w in aligned.warnings)
    assert any(w.startswith("t2 is almost constant") for w in aligned.warnings)
    assert not any(w.startswith("t1c") for w in aligned.warnings)


def test_evaluate_prints_na_when_everyone_is_in_one_risk_group():
    from NPCPrognosisLib.cli import _number

    assert _number(None, ".2g") == "n/a" and _number(0.0123, ".2g") == "0.012"


def _dicom_patient(tmp_path, headers):
    """One patient's series, one folder each (``series1`` ...), with the given extra header fields."""
    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    rng = np.random.default_rng(3)
    study, frame = dicom_uid(rng), dicom_uid(rng)
    folders = {}
    for number, (name, extra) in enumerate(headers.items(), start=1):
        tags = {"0008|0060": "MR", "0010|0020": "D1", "0020|000d": study, "0020|0052": frame,
                "0020|0011": str(number), **extra}
        folders[name] = tmp_path / f"series{number}"
        write_dicom_series(sitk.Cast(_image(), sitk.sitkInt16), folders[name], tags, dicom_uid(rng), rng)
    return folders


def test_dicom_series_whose_header_names_another_sequence_are_refused(tmp_path):
    """The t1 and t2 paths of a row exchanged: every image was a valid volume and the T2W was read as the T1W."""
    series = _dicom_patient(tmp_path, {"t1": {"0008|103e": "AX T1 pre"}, "t2": {"0008|103e": "AX T2 FSE"},
                                       "t1c": {"0008|103e": "AX T1 FS POST"},
                                       "t1c_pre": {"0008|103e": "t1_tse_tra_fs", "0018|1030": "T1 native"},
                                       "stir": {"0008|103e": "STIR"}})
    swapped = {"t1": series["t2"], "t2": series["t1"], "t1c": series["t1c"]}
    with pytest.raises(InputError) as info:
        load_patient("D1", swapped)
    message = str(info.value)
    assert ("the t1 column's series is described as T2W (SeriesDescription 'AX T2 FSE'), not T1W" in message
            and "patient 'D1'" in message and str(series["t2"]) in message and "swapped" in message)
    with pytest.raises(InputError, match="the t2 column's series is described as T1W .*'AX T1 pre'"):
        load_patient("D1", {**swapped, "t1": series["t1"]})
    # a pre-contrast T1W in the t1c column, said by the protocol name when the description says nothing certain
    with pytest.raises(InputError, match=r"t1c column's series is described as T1W \(SeriesDescription "
                                         r"'t1_tse_tra_fs'; ProtocolName 'T1 native'\), not CET1W"):
        load_patient("D1", {"t1": series["t1"], "t2": series["t2"], "t1c": series["t1c_pre"]})
    right = load_patient("D1", {"t1": series["t1"], "t2": series["t2"], "t1c": series["t1c"]})
    assert set(right.images) == {"t1", "t2", "t1c"}
    load_patient("D1", {"t1": series["t1"], "t2": series["stir"], "t1c": series["t1c"]})  # STIR: not judged


def test_a_contrast_agent_on_the_t1_series_and_none_on_the_t1c_series_is_refused(tmp_path):
    """Descriptions that say nothing of contrast: the ContrastBolusAgent of the pair shows the exchange; either
    alone is no evidence (many scanners never fill it, some fill it for every series of the exam)."""
    def series(t1_agent, t1c_agent):
        return _dicom_patient(tmp_path / f"{t1_agent}-{t1c_agent}", {
            "t1": {"0008|103e": "t1_tse_tra", **({"0018|0010": t1_agent} if t1_agent else {})},
            "t2": {"0008|103e": "t2_tse_tra"},
            "t1c": {"0008|103e": "t1_tse_tra_fs", **({"0018|0010": t1c_agent} if t1c_agent else {})}})

    with pytest.raises(InputError) as info:
        load_patient("D1", series("Gadovist", None))
    assert ("the t1 series was acquired with a contrast agent (ContrastBolusAgent 'Gadovist') and the t1c series "
            "without one" in str(info.value) and "swap the t1 and t1c paths" in str(info.value))
    with pytest.raises(InputError, match="ContrastBolusAgent 'Dotarem'"):
        load_patient("D1", series("Dotarem", "NONE"))  # 'NONE' names no agent
    load_patient("D1", series(None, "Gadovist"))
    load_patient("D1", series("Gadovist", "Gadovist"))  # the whole exam tagged: no evidence
    load_patient("D1", series(None, None))


def test_image_file_names_of_another_sequence_are_warned_about_not_refused(tmp_path):
    import argparse
    import warnings

    from NPCPrognosisLib.cli import _warn_file_names

    path = _rewrite(_write_cohort(tmp_path, [{}, {}, {"patient_id": "T1-017"}]), lambda t: t.assign(
        t1=["images/P000_T2.nii.gz", "images/P001_t2w.nii.gz", "images/T1-017_t1.nii.gz"],
        t2=["images/P000_T1.nii.gz", "images/P001_T2.nii.gz", "images/T1-017_t2.nii.gz"],
        t1c=["images/P000_T1C.nii.gz", "images/P001_ce-T1.nii.gz", "images/T1-017_T1_post.nii.gz"]))
    with pytest.warns(UserWarning) as caught:
        manifest = read_manifest(path)  # read as given
    messages = [str(w.message) for w in caught]
    assert manifest.patient_ids == ["P000", "P001", "T1-017"]
    assert any("2 patient(s)' t1 file names name another sequence than T1W: P000 (P000_T2.nii.gz: T2W), P001 "
               "(P001_t2w.nii.gz: T2W)" in m and str(path) in m for m in messages)
    assert any("1 patient(s)' t2 file names name another sequence than T2W: P000 (P000_T1.nii.gz: T1W or CET1W)"
               in m for m in messages)
    assert len(messages) == 2  # T1-017's own ID names no sequence, and its names are right
    _rewrite(path, lambda t: t.assign(t1=["images/P000_T1.nii.gz", "images/P001_t1.nii.gz", "images/t1.nii.gz"],
                                      t2=["images/P000_T2.nii.gz", "a/STIR.nii.gz", "dicom/study::AX T1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_manifest(path)
    files = argparse.Namespace(patient_id="P9", t1="P9_T2.nii.gz", t2="P9_T2.nii.gz", t1c="P9_T1+C.nii.gz")
    with pytest.warns(UserWarning, match=r"P9 \(P9_T2.nii.gz: T2W\)"):  # predict and segment of one patient
        _warn_file_names(files)


def test_an_outcome_column_or_a_misspelt_endpoint_is_refused_before_any_work_and_the_case_is_ignored(tmp_path):
    # any name but dmfs/os/pfs was read as a binary column: `--endpoint dmfs_event` trained a 0/1 classifier of
    # the event indicator (a patient censored at 2 months counted as metastasis-free), and `DMFS` or `dfs` were
    # answered "no 'DMFS' column for the binary endpoint", naming neither the survival endpoints nor the fix
    from NPCPrognosisLib.io.manifest import endpoint_name
    from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort
    from NPCPrognosisLib.pipeline.train import train

    rows = [{"ic_response": i % 2, "dmfs_event": int(i % 3 == 0)} for i in range(12)]
    manifest = read_manifest(_write_cohort(tmp_path, rows))
    features = tmp_path / "features.csv"
    pd.DataFrame({"patient_id": manifest.patient_ids,
                  "t1c_gtvp_original_firstorder_Mean": np.linspace(1, 2, 12)}).to_csv(features, index=False)
    assert endpoint_name(manifest, " DMFS ") == "dmfs" and endpoint_name(manifest, "Os") == "os"
    assert endpoint_name(manifest, "ic_response") == "ic_response"
    with pytest.raises(InputError, match=r"'dmfs_event' is a column of the survival endpoint dmfs.*--endpoint dmfs"):
        train(manifest, features, "dmfs_event", tmp_path / "bundle", robustness_patients=0, optimism_bootstraps=0,
              permutations=0)
    assert not (tmp_path / "bundle").exists()
    with pytest.raises(InputError, match=r"'OS_time' is a column of the survival endpoint os"):
        train(manifest, features, "dmfs", tmp_path / "bundle", binary_endpoints=["OS_time"])
    with pytest.raises(InputError, match=r"unknown endpoint 'dfs': neither a survival endpoint \(dmfs, os, pfs\)"):
        train(manifest, features, "dfs", tmp_path / "bundle")
    with pytest.raises(InputError, match=r"column '--endpoint'.*'os_event' is a column of the survival endpoint os"):
        evaluate_cohort(tmp_path / "no_bundle", manifest, features, "os_event", tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_train_says_why_robustness_was_not_measured_and_that_defaults_were_not_chosen(tmp_path, monkeypatch, capsys):
    # train printed "robustness: not measured (see the warning above)" when no warning was given
    # (--robustness-patients 0), and "chosen by 5-fold cross-validation on the training patients: ...; not
    # selected: 8 training events (< 25) ..." when nothing had been chosen
    import json

    import NPCPrognosisLib.pipeline.train as train_module
    from NPCPrognosisLib.cli import main
    from NPCPrognosisLib.pipeline.selection import default_selection
    from NPCPrognosisLib.radiomics.signature import SignatureSettings
    from NPCPrognosisLib.resources import DEMO_BUNDLE

    settings = SignatureSettings()
    document = json.loads((DEMO_BUNDLE / "bundle.json").read_text(encoding="utf-8"))
    document["robustness"] = train_module.robustness_record(None, settings, None, [], requested=0)
    document["selection"] = default_selection(settings, False, "not selected: 8 training events (< 25) are too few "
                                              "to compare candidates", ["t_stage"]).to_dict()
    monkeypatch.setattr(train_module, "train", lambda *args, **kwargs: document)
    path = _write_cohort(tmp_path, [{}, {}])
    assert main(["--quiet", "train", "--manifest", str(path), "--features", "f.csv", "--endpoint", "dmfs", "--out",
                 str(tmp_path / "b"), "--robustness-patients", "0"]) == 0
    out = capsys.readouterr().out
    assert "robustness: not measured (--robustness-patients 0)" in out
    assert "see the warning above" not in out
    assert "the defaults, not chosen by cross-validation: radiomics" in out and "chosen by 5-fold" not in out
    assert train_module.robustness_record(None, settings, None, [], requested=30)["reason"].endswith(
        "see the warning above")


def test_train_refuses_a_test_fraction_beside_a_split_column_and_the_help_gives_the_defaults(tmp_path, capsys):
    # `--split-col split --test-fraction 0.5` held out the column's test patients and ignored the fraction without
    # a word; --test-fraction, --seed, --features (train), --n-boot (evaluate) and synth's --n had no help or default
    from NPCPrognosisLib.cli import build_parser, main

    path = _write_cohort(tmp_path, [{"split": "train"}, {"split": "test"}])
    assert main(["train", "--manifest", str(path), "--features", "f.csv", "--endpoint", "dmfs", "--out",
                 str(tmp_path / "b"), "--split-col", "split", "--test-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--split-col split and --test-fraction 0.5 both given" in err and "give one of the two" in err
    assert not (tmp_path / "b").exists()
    commands = build_parser()._subparsers._group_actions[0].choices
    train_help = " ".join(commands["train"].format_help().split())
    assert "(default 0.3; 0: every patient trains)" in train_help and "random split, the folds and the" in train_help
    assert "features table written by extract" in train_help
    assert "(default 1000)" in " ".join(commands["evaluate"].format_help().split())
    assert "number of patients" in commands["synth"].format_help()
