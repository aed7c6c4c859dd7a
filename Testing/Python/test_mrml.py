"""The Slicer module's node handling on a real MRML scene and the real Segmentations logic (slicer-core).

Only what needs a running Slicer (Qt widgets, the ScriptedLoadableModule base classes, the parameter node wrapper)
is shimmed (``mrml_shim.py``); volumes, labelmaps, segmentations, tables, plots and the segmentations logic are
Slicer's own code.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, the test extra: required, so a missing one fails the suite instead of skipping it
import vtk
from mrml_shim import ROOT, load_module, segmentations_logic

pytestmark = pytest.mark.mrml


GTVP, GTVN = 1, 2


@pytest.fixture(scope="module")
def module():
    return load_module()


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def logic(module, scene, tmp_path):
    return module.NPCPrognosisLogic(scene=scene, segmentationsLogic=segmentations_logic(scene), workDirectory=tmp_path)


def _image(shape=(12, 14, 9), spacing=(0.8, 0.9, 3.0), direction=None, origin=(-40.0, 22.5, 7.25), seed=0):
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100, 20, shape[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    return image


def _mask_like(image, gtvn=True):
    size = image.GetSize()
    array = np.zeros(size[::-1], np.uint8)
    array[2:6, 3:8, 2:7] = GTVP
    if gtvn:
        array[5:8, 9:12, 7:10] = GTVN
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def _rotation(degrees_z, degrees_x):
    z, x = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


def _volume(logic, image, name="t1c", cls="vtkMRMLScalarVolumeNode"):
    node = logic.scene.AddNewNodeByClass(cls, name)
    return logic.updateVolumeNodeFromSitk(node, image)


def _labelmaps(scene):
    nodes = scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _paint(logic, segmentation, segment_id, array, reference):
    """What Segment Editor does to a segment: replace its binary labelmap (on the reference grid)."""
    scratch = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "paint")
    scratch.CopyOrientation(reference)
    slicer.util.updateVolumeFromArray(scratch, array.astype(np.uint8))
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(scratch)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    logic.scene.RemoveNode(scratch)


def _classes(scene):
    return [scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())]


def _imported(logic, tmp_path, image, mask=None, name="NPC contours"):
    reference = _volume(logic, image)
    path = tmp_path / f"{name}.nii.gz"
    sitk.WriteImage(mask if mask is not None else _mask_like(image), str(path))
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    return reference, logic.importSegmentation(path, reference, segmentation)


# ---------------------------------------------------------------------------------------------- geometry
GEOMETRIES = {
    "oblique": dict(direction=_rotation(20, 12)),
    "flipped": dict(direction=np.diag([-1.0, 1.0, -1.0])),
    "non-unit spacing, LPS identity": dict(spacing=(0.43, 0.43, 4.4)),
    "oblique and flipped": dict(direction=_rotation(-35, 5) @ np.diag([1.0, -1.0, 1.0]), spacing=(1.1, 0.7, 3.3)),
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_volume_to_simpleitk_and_back_keeps_voxels_and_geometry_exactly(logic, geometry):
    image = _image(**GEOMETRIES[geometry])
    node = _volume(logic, image)
    back = logic.sitkFromVolumeNode(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    # Independently: Slicer's RAS position of a voxel is SimpleITK's LPS position with x and y negated.
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    for index in [(0, 0, 0), (11, 13, 8), (3, 7, 5)]:
        ras = ijk_to_ras.MultiplyPoint([*index, 1.0])[:3]
        lps = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_volume_under_a_transform_is_refused_until_hardened(module, logic):
    node = _volume(logic, _image())
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(module.NPCPrognosisError, match="Harden the transform"):
        logic.sitkFromVolumeNode(node)
    node.SetAndObserveTransformNodeID(None)
    assert logic.sitkFromVolumeNode(node).GetSize() == (12, 14, 9)


# ---------------------------------------------------------------------------------------------- import
def test_import_names_colours_tags_segments_and_leaves_no_stray_nodes(module, logic, tmp_path):
    from NPCPrognosisLib.contract import SEGMENTS

    image = _image(direction=_rotation(15, 0))
    _, segmentation = _imported(logic, tmp_path, image)
    seg = segmentation.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    assert names == ["GTVp", "GTVn"]
    for i, expected in enumerate(SEGMENTS):
        segment = seg.GetNthSegment(i)
        np.testing.assert_allclose(segment.GetColor(), expected["color"], atol=0.5 / 255)  # colour tables are 8-bit
        tag = vtk.reference("")
        assert segment.GetTag(module.LABEL_TAG, tag) and str(tag) == str(expected["label"])
    # SNOMED CT codes from the module's terminology context, set by the one import call
    gtvp, gtvn = (seg.GetNthSegment(i).GetTerminology() for i in range(2))
    assert "SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass" in gtvp
    assert "SCT^71836000^Nasopharyngeal structure" in gtvp
    assert "SCT^59441001^Lymph node" in gtvn
    classes = _classes(logic.scene)
    assert "vtkMRMLColorTableNode" not in classes
    labelmaps = _labelmaps(logic.scene)
    assert len(labelmaps) == 1 and labelmaps[0].GetHideFromEditors()  # only the hidden automatic copy
    assert logic.automaticLabelmapFor(segmentation) is labelmaps[0]

    assert segmentation.GetNodeReference("labelmapConversionColorTableNode") is None


def test_terminology_context_is_loaded_once_and_matches_the_contract(module, logic, scene, tmp_path):
    import json

    from NPCPrognosisLib.contract import SEGMENTS

    context = json.loads(module.TERMINOLOGY_FILE.read_text())
    types = {t["3dSlicerLabel"]: t for c in context["SegmentationCodes"]["Category"] for t in c["Type"]}
    for segment in SEGMENTS:  # the context Segment Editor offers shows the colours the import gives
        entry = types[segment["name"]]
        assert entry["3dSlicerIntegerLabel"] == segment["label"]
        assert entry["recommendedDisplayRGBValue"] == [round(255 * v) for v in segment["color"]]
    terminologies = logic.segmentationsLogic.GetModuleLogic("Terminologies")
    names = vtk.vtkStringArray()
    _imported(logic, tmp_path, _image())
    _imported(logic, tmp_path, _image(seed=1))
    terminologies.GetLoadedTerminologyNames(names)
    loaded = [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    assert loaded.count(context["SegmentationCategoryTypeContextName"]) == 1
    bare = slicer.vtkSlicerSegmentationsModuleLogic()  # no Terminologies module: a message, not a crash
    bare.SetMRMLScene(scene)
    without = module.NPCPrognosisLogic(scene=scene, segmentationsLogic=bare, workDirectory=tmp_path)
    before = _classes(scene)
    with pytest.raises(module.NPCPrognosisError, match="Terminologies module"):
        without.importSegmentation(tmp_path / "NPC contours.nii.gz", None)
    assert _classes(scene) == before

def test_importing_again_replaces_the_automatic_copy(logic, tmp_path):
    image = _image()
    reference, segmentation = _imported(logic, tmp_path, image)
    mask = _mask_like(image, gtvn=False)
    sitk.WriteImage(mask, str(tmp_path / "second.nii.gz"))
    logic.importSegmentation(tmp_path / "second.nii.gz", reference, segmentation)
    labelmaps = _labelmaps(logic.scene)
    assert len(labelmaps) == 1
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(logic.automaticLabelmapFor(segmentation)),
                                  sitk.GetArrayFromImage(mask))


# ---------------------------------------------------------------------------------------------- export
def test_export_reproduces_the_mask_on_the_cet1w_grid_without_leaving_colour_tables(logic, tmp_path):
    image = _image(direction=_rotation(-25, 8) @ np.diag([-1.0, 1.0, 1.0]))
    mask = _mask_like(image)
    reference, segmentation = _imported(logic, tmp_path, image, mask)
    before = _classes(logic.scene)
    path, labels = logic._writeSegmentation(segmentation, reference, tmp_path / "exported.nii.gz")
    exported = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(mask))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(mask))  # the labels returned are the file's
    np.testing.assert_allclose(exported.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(exported.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert _classes(logic.scene) == before  # no *_ColorTable, display or labelmap node left behind


def test_renamed_segments_are_still_exported_by_their_tag(logic, tmp_path):
    image = _image()
    mask = _mask_like(image)
    reference, segmentation = _imported(logic, tmp_path, image, mask)
    seg = segmentation.GetSegmentation()
    seg.GetNthSegment(0).SetName("Mass")  # Segment Editor's terminology picker renames segments
    seg.GetNthSegment(1).SetName("Lymph node")
    exported = sitk.ReadImage(logic._writeSegmentation(segmentation, reference, tmp_path / "renamed.nii.gz")[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(mask))


def test_added_segments_are_reported_not_silently_dropped(logic, tmp_path):
    image = _image()
    mask = _mask_like(image)
    reference, segmentation = _imported(logic, tmp_path, image, mask)
    added = segmentation.GetSegmentation().AddEmptySegment("", "Second primary?")
    extra = np.zeros(image.GetSize()[::-1], np.uint8)
    extra[8:9, 1:3, 1:3] = 1
    _paint(logic, segmentation, added, extra, reference)
    warnings = []
    exported = sitk.ReadImage(logic._writeSegmentation(segmentation, reference, tmp_path / "x.nii.gz", warnings)[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(mask))
    assert len(warnings) == 1 and "Second primary?" in warnings[0] and "rename" in warnings[0]


def test_segments_drawn_by_hand_and_named_gtvp_gtvn_are_exported(logic):
    image = _image()
    reference = _volume(logic, image)
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert not logic.hasContours(segmentation)  # a new empty segmentation cannot be used (Predict stays off)
    gtvp = segmentation.GetSegmentation().AddEmptySegment("", "gtvp")  # case does not matter
    drawn = np.zeros(image.GetSize()[::-1], np.uint8)
    drawn[3:5, 4:6, 4:6] = 1
    _paint(logic, segmentation, gtvp, drawn, reference)
    assert logic.hasContours(segmentation)
    labelmap = logic.exportLabelmap(segmentation, reference)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), drawn)  # empty GTVn: no label 2


def test_a_structure_in_several_segments_is_their_union_and_names_decide_over_import_tags(logic, tmp_path):
    """Nodes contoured left and right (GTVn_L, GTVn_R), or a second segment named GTVn, had been dropped (the mask had
    0 of 108 node voxels); a GTVp/GTVn name given in the editor had lost to the hidden import tag; voxels in both
    structures went to GTVp without a word."""
    image = _image()
    reference = _volume(logic, image)
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "radiologist")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    shape = image.GetSize()[::-1]
    pieces = {"GTV-P": (slice(2, 6), slice(3, 8), slice(2, 7)), "GTVn_L": (slice(5, 8), slice(9, 12), slice(1, 3)),
              "GTVn_R": (slice(5, 8), slice(9, 12), slice(7, 9)), "GTVn": (slice(3, 5), slice(6, 10), slice(5, 7))}
    primary, nodes = np.zeros(shape, bool), np.zeros(shape, bool)
    for name, where in pieces.items():
        drawn = np.zeros(shape, np.uint8)
        drawn[where] = 1
        _paint(logic, segmentation, segmentation.GetSegmentation().AddEmptySegment("", name), drawn, reference)
        (primary if name == "GTV-P" else nodes)[where] = True
    warnings = []
    labelmap = logic.exportLabelmap(segmentation, reference, warnings)
    expected = np.where(primary, GTVP, np.where(nodes, GTVN, 0))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), expected)
    shared = int((primary & nodes).sum())
    assert shared > 0 and len(warnings) == 1 and warnings[0].startswith(f"{shared} voxels")
    assert "both GTVp and GTVn" in warnings[0]
    # an imported segmentation whose names were swapped in the editor: the names decide
    mask = _mask_like(image)
    reference2, imported = _imported(logic, tmp_path, image, mask, name="swapped")
    contents = imported.GetSegmentation()
    contents.GetNthSegment(0).SetName("GTVn")
    contents.GetNthSegment(1).SetName("GTVp")
    swapped = slicer.util.arrayFromVolume(logic.exportLabelmap(imported, reference2))
    truth = sitk.GetArrayFromImage(mask)
    assert ((swapped == GTVP) == (truth == GTVN)).all() and ((swapped == GTVN) == (truth == GTVP)).all()


def test_a_volume_whose_axes_are_not_at_right_angles_is_refused_not_squared_up(module, logic):
    """A hardened affine registration leaves the voxel axes at 89-91 degrees; NIfTI squares them, moving voxels
    by up to millimetres without a word."""
    node = _volume(logic, _image())
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    matrix.SetElement(0, 1, matrix.GetElement(0, 1) + 0.9 * 0.01)  # the second axis tilted by about half a degree
    node.SetIJKToRASMatrix(matrix)
    with pytest.raises(module.NPCPrognosisError, match="not at right angles"):
        logic.sitkFromVolumeNode(node)


def test_contours_loaded_as_closed_surfaces_count_as_contours(logic):
    # GTVp from an STL/OBJ file, or an RTSTRUCT loaded through SlicerRT, has no labelmap until converted: Extract and
    # Predict must not stay greyed out for it
    reference = _volume(logic, _image())
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    contents = segmentation.GetSegmentation()
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    (contents.SetSourceRepresentationName if hasattr(contents, "SetSourceRepresentationName")
     else contents.SetMasterRepresentationName)(surface)
    bounds = [0.0] * 6
    reference.GetRASBounds(bounds)
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter((bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2)
    sphere.SetRadius(4.0)
    sphere.Update()
    segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "GTVp", [1.0, 0.0, 0.0])
    assert logic.hasContours(segmentation)
    assert (slicer.util.arrayFromVolume(logic.exportLabelmap(segmentation, reference)) == GTVP).sum() > 10


def test_empty_gtvn_and_missing_gtvp(module, logic, tmp_path):
    image = _image()
    mask = _mask_like(image, gtvn=False)
    reference, segmentation = _imported(logic, tmp_path, image, mask)
    segmentation.GetSegmentation().AddEmptySegment("", "GTVn")
    exported = sitk.ReadImage(logic._writeSegmentation(segmentation, reference, tmp_path / "n0.nii.gz")[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(mask))
    segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetNthSegmentID(0))
    with pytest.raises(module.NPCPrognosisError, match="no GTVp"):
        logic.exportLabelmap(segmentation, reference)


# ---------------------------------------------------------------------------------------------- correction loop
def test_contour_change_is_measured_against_this_segmentations_own_automatic_contours(logic, tmp_path):
    from NPCPrognosisLib.imaging.overlap import dice

    image = _image()
    mask = _mask_like(image)
    reference, edited = _imported(logic, tmp_path, image, mask, name="patient A")
    other_mask = _mask_like(image, gtvn=False)
    sitk.WriteImage(other_mask, str(tmp_path / "b.nii.gz"))
    untouched = logic.importSegmentation(tmp_path / "b.nii.gz", reference,
                                         logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "patient B"))
    assert logic.automaticLabelmapFor(edited) is not logic.automaticLabelmapFor(untouched)
    # The radiologist enlarges GTVp of A by one slab in Segment Editor.
    gtvp_id = edited.GetSegmentation().GetNthSegmentID(0)
    grown = (sitk.GetArrayFromImage(mask) == GTVP).astype(np.uint8)
    grown[6, 3:8, 2:7] = 1
    _paint(logic, edited, gtvp_id, grown, reference)
    change = logic.contourChange(edited, reference)
    expected = dice(sitk.GetArrayFromImage(mask) == GTVP, grown.astype(bool))
    assert change["structures"]["GTVp"]["dice"] == pytest.approx(expected)
    assert change["structures"]["GTVp"]["volume_change_ml"] > 0
    assert change["structures"]["GTVn"]["dice"] == pytest.approx(1.0)
    assert logic.contourChange(untouched, reference)["structures"]["GTVp"]["dice"] == pytest.approx(1.0)
    # With the predictions of the automatic and the edited contours, the change of risk and group.
    automatic, edited_prediction = {"risk_score": 0.42, "risk_group": "low"}, {"risk_score": 0.97, "risk_group": "high"}
    risk = logic.contourChange(edited, reference, automatic, edited_prediction)["risk"]
    assert risk["change"] == pytest.approx(0.55) and risk["group_changed"] is True


def test_predict_exports_the_contours_once_and_its_mask_file_is_what_the_contour_change_measures(
        module, logic, tmp_path, monkeypatch):
    """Predict exported the segmentation twice: once for the job's mask file, once more for the labels the contour
    change compares with the automatic contours. One export now serves both: the file the job reads holds the
    edited contours, and the Dice and volume change reported were measured on exactly those labels."""
    import json

    from NPCPrognosisLib.imaging.overlap import dice
    from NPCPrognosisLib.resources import SAMPLE_CASE, sample_case_files
    from NPCPrognosisLib.slicer_support.form import clinical_values_to_form

    image = _image()
    mask = _mask_like(image)
    reference, edited = _imported(logic, tmp_path, image, mask)
    volumes = {"t1": _volume(logic, image, name="t1"), "t2": _volume(logic, image, name="t2"), "t1c": reference}
    grown = (sitk.GetArrayFromImage(mask) == GTVP).astype(np.uint8)
    grown[6, 3:8, 2:7] = 1  # the radiologist adds a slab to GTVp
    _paint(logic, edited, edited.GetSegmentation().GetNthSegmentID(0), grown, reference)
    exports = []
    export = logic.exportLabelmap

    def counted(segmentation, *args, **kwargs):
        exports.append(segmentation.GetName())
        return export(segmentation, *args, **kwargs)

    monkeypatch.setattr(logic, "exportLabelmap", counted)
    read = {}

    class Runner:  # the job's side: what it reads from the files it was given
        def runAndWait(self, job, onProgress=None):
            read.update(mask=sitk.GetArrayFromImage(sitk.ReadImage(job["mask"])),
                        automatic=sitk.GetArrayFromImage(sitk.ReadImage(job["reference_mask"])))
            return {"prediction": {"patient_id": "P1", "risk_score": 0.9, "risk_group": "high", "warnings": []},
                    "reference_prediction": {"risk_score": 0.4, "risk_group": "low"}}

    logic.runner = Runner()
    clinical = clinical_values_to_form(json.loads(sample_case_files(SAMPLE_CASE)["clinical"].read_text()))
    result = logic.predict(volumes, edited, str(module.DEMO_BUNDLE), clinical, patientId="P1")
    assert exports == [edited.GetName()]
    before = sitk.GetArrayFromImage(mask)
    np.testing.assert_array_equal(read["mask"], np.where(grown == 1, GTVP, np.where(before == GTVN, GTVN, 0)))
    np.testing.assert_array_equal(read["automatic"], before)
    change = result["contour_change"]["structures"]["GTVp"]
    assert change["dice"] == pytest.approx(dice(read["automatic"] == GTVP, read["mask"] == GTVP))
    assert change["dice"] < 1.0
    voxel_ml = 0.8 * 0.9 * 3.0 / 1000.0
    assert change["volume_change_ml"] == pytest.approx(
        ((read["mask"] == GTVP).sum() - (read["automatic"] == GTVP).sum()) * voxel_ml)
    assert result["contour_change"]["risk"]["change"] == pytest.approx(0.5)


def test_export_report_draws_the_edited_contours_over_the_automatic_ones_from_the_scene(logic, tmp_path,
                                                                                       monkeypatch):
    from NPCPrognosisLib.reporting import patient_sheet

    image = _image(shape=(20, 22, 9))
    mask = _mask_like(image)
    reference, edited = _imported(logic, tmp_path, image, mask)
    grown = (sitk.GetArrayFromImage(mask) == GTVP).astype(np.uint8)
    grown[6, 3:8, 2:7] = 1
    _paint(logic, edited, edited.GetSegmentation().GetNthSegmentID(0), grown, reference)
    seen = {}
    drawn = patient_sheet.figures.key_slices_figure

    def spy(t1c, shown, automatic, overlays=None):
        seen.update(t1c=t1c, shown=shown, automatic=automatic)
        return drawn(t1c, shown, automatic, overlays)

    monkeypatch.setattr(patient_sheet.figures, "key_slices_figure", spy)
    prediction = {"patient_id": "P1", "endpoint": "dmfs", "risk_score": 0.4, "risk_group": "low", "cutoff": 0.9,
                  "survival": {"12": 0.95, "36": 0.8, "60": 0.7},
                  "nomogram_points": {"per_factor": {"age": 10.0}, "total": 10.0}, "factors": {"age": 50.0},
                  "clinical": {"age": 50}, "warnings": [], "bundle": {"path": "/b"}}
    paths = logic.exportReport({"prediction": prediction}, tmp_path / "reports", reference, edited)
    html = open(paths["html"], encoding="utf-8").read()
    assert "dashed: the automatic contours before editing" in html
    # a prediction made from the contours before the edit says so on the sheet; one made from the edited contours
    # (the scene's labelmap, as the predict job exports it) does not
    from NPCPrognosisLib.imaging.geometry import image_fingerprint
    from NPCPrognosisLib.reporting.patient_sheet import CONTOURS_DIFFER

    before = sitk.GetArrayFromImage(mask)
    after = np.where(grown == 1, GTVP, np.where(before == GTVN, GTVN, 0)).astype(np.uint8)
    for used, warned in ((before, True), (after, False)):
        made = {**prediction, "inputs": {"mask": image_fingerprint(sitk.GetImageFromArray(used.astype(np.uint8)))}}
        paths = logic.exportReport({"prediction": made}, tmp_path / "reports", reference, edited)
        assert (CONTOURS_DIFFER in open(paths["html"], encoding="utf-8").read()) == warned
    # The images handed to the sheet are the scene's: CET1W voxels, the edited GTVp, the imported contours.
    np.testing.assert_allclose(sitk.GetArrayFromImage(seen["t1c"]), sitk.GetArrayFromImage(image))
    assert np.array_equal(sitk.GetArrayFromImage(seen["shown"]) == GTVP, grown.astype(bool))
    assert np.array_equal(sitk.GetArrayFromImage(seen["automatic"]), sitk.GetArrayFromImage(mask))
    # an ID that reads as a path stays inside the report folder, in the folder the exported contours go to
    paths = logic.exportReport({"prediction": {**prediction, "patient_id": "../P1"}}, tmp_path / "reports")
    assert Path(paths["html"]).parent == tmp_path / "reports" / "_P1"


# ---------------------------------------------------------------------------------------------- DICOM export
def _dicom_cet1w(module, logic, folder, image):
    """A CET1W DICOM series on disk, loaded as Slicer's DICOM module loads it (the module's own helper, which the
    self-test uses too): its volume node, the series read by the core, its SeriesInstanceUID and the database lookup
    UID -> file (``slicer.dicomDatabase.fileForInstance``'s stand-in)."""
    import pydicom

    from NPCPrognosisLib.io.images import read_image

    node, lookup = module.loadAsDicomSeries(logic, _volume(logic, image, name="CET1W"), folder, "D1")
    series_uid = str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    return node, read_image(folder, role="t1c"), series_uid, lookup


@pytest.fixture
def in_process(logic, monkeypatch):
    """Jobs run in this process through the module's own runner (Slicer's event loop is a no-op here)."""
    monkeypatch.setattr(slicer, "app", type("App", (), {"processEvents": staticmethod(lambda: None)})(),
                        raising=False)
    logic.runInProcess = True
    return logic


def test_corrected_contours_are_exported_as_seg_and_rtstruct_of_the_dicom_series(module, logic, tmp_path,
                                                                                   in_process):
    """The radiologist's corrections reach the planning system and the PACS: the exported RT Structure Set and SEG,
    read back by the core as the mask of that series, hold exactly the scene's current contours (not the automatic
    ones) and reference the series the CET1W was loaded from."""
    import pydicom

    from NPCPrognosisLib.imaging.overlap import dice
    from NPCPrognosisLib.io.images import load_patient

    node, reference, series_uid, lookup = _dicom_cet1w(module, logic, tmp_path / "database", _image(
        direction=_rotation(20, 12) @ np.diag([1.0, -1.0, 1.0])))
    automatic = _mask_like(reference)
    sitk.WriteImage(automatic, str(tmp_path / "automatic.nii.gz"))
    segmentation = logic.importSegmentation(tmp_path / "automatic.nii.gz", node)
    contents = segmentation.GetSegmentation()
    corrected = (sitk.GetArrayFromImage(automatic) == GTVP).astype(np.uint8)
    corrected[6, 3:8, 2:7] = 1  # GTVp drawn one slice further
    corrected[2, 3:5, 2:7] = 0  # and trimmed on another
    _paint(logic, segmentation, contents.GetSegmentIdBySegmentName("GTVp"), corrected, node)
    expected = slicer.util.arrayFromVolume(logic.exportLabelmap(segmentation, node)).copy()  # independently
    assert not np.array_equal(expected, sitk.GetArrayFromImage(automatic))

    written = in_process.exportContours(segmentation, node, tmp_path / "reports", patientId="D1",
                                        fileForInstance=lookup)

    folder = tmp_path / "reports" / "D1"
    assert written == {"seg": str(folder / "D1_seg.dcm"), "rtstruct": str(folder / "D1_rtstruct.dcm"),
                       "warnings": []}
    assert sorted(p.name for p in folder.iterdir()) == ["D1_rtstruct.dcm", "D1_seg.dcm"]
    assert not list(logic._workDirectory("jobs").iterdir())  # the copied series and the job folder are gone
    for path in (written["seg"], written["rtstruct"]):
        back = sitk.GetArrayFromImage(load_patient("D1", {"t1c": tmp_path / "database"}, path).mask)
        for label in (GTVP, GTVN):
            assert dice(back == label, expected == label) == 1.0, (path, label)
    seg = pydicom.dcmread(written["seg"])
    assert [str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence] == [series_uid]
    rtstruct = pydicom.dcmread(written["rtstruct"])
    study = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert [str(item.SeriesInstanceUID) for item in study.RTReferencedSeriesSequence] == [series_uid]
    assert seg.PatientID == rtstruct.PatientID == "D1"
    # the corrected GTVp is filed as corrected, the untouched GTVn as the network's own
    by_name = {item.SegmentLabel: item.SegmentAlgorithmType for item in seg.SegmentSequence}
    assert by_name == {"GTVp": "SEMIAUTOMATIC", "GTVn": "AUTOMATIC"}
    assert {roi.ROIName: roi.ROIGenerationAlgorithm for roi in rtstruct.StructureSetROISequence} == by_name
    assert seg.SeriesDescription == rtstruct.SeriesDescription == (
        "NPCPrognosis GTVp/GTVn, edited by hand (research software)")


def test_the_self_tests_dicom_export_step_on_the_sample_patient(module, logic, tmp_path, in_process):
    """NPCPrognosisTest's last step, here on real MRML: contours drawn on the NIfTI CET1W, exported onto the same scan
    loaded as a DICOM series, come back from the SEG and the RTSTRUCT voxel for voxel."""
    from NPCPrognosisLib.io.images import load_patient, read_image
    from NPCPrognosisLib.resources import SAMPLE_CASE, sample_case_files

    files = sample_case_files(SAMPLE_CASE)
    t1c = _volume(logic, read_image(files["t1c"]), name="NPC-SAMPLE-001 CET1W")
    segmentation = logic.importSegmentation(files["mask"], t1c)
    dicom, lookup = module.loadAsDicomSeries(logic, t1c, tmp_path / "cet1w", "NPC-SAMPLE-001")
    written = in_process.exportContours(segmentation, dicom, str(tmp_path / "export"), patientId="NPC-SAMPLE-001",
                                        fileForInstance=lookup)
    expected = logic._exportedArray(segmentation, dicom)
    np.testing.assert_array_equal(expected, sitk.GetArrayFromImage(sitk.ReadImage(str(files["mask"]))))
    for path in (written["seg"], written["rtstruct"]):
        back = load_patient("NPC-SAMPLE-001", {"t1c": tmp_path / "cet1w"}, path).mask
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)


def test_an_export_that_fails_part_way_leaves_the_earlier_seg_and_rtstruct_whole(module, logic, tmp_path, in_process,
                                                                                 monkeypatch):
    """Export contours wrote the SEG and the RTSTRUCT straight to their names: a failure in the RTSTRUCT's writer
    left this export's SEG beside the last export's RTSTRUCT, two different contours filed as one export. Both now
    replace the earlier pair together (the core's staging, as ``segment`` does), and an export killed part-way (a
    cancelled job's process) leaves a hidden folder that the next export removes."""
    import subprocess
    import sys

    import NPCPrognosisLib.pipeline.segment as segment

    node, reference, _, lookup = _dicom_cet1w(module, logic, tmp_path / "database", _image())
    sitk.WriteImage(_mask_like(reference), str(tmp_path / "automatic.nii.gz"))
    segmentation = logic.importSegmentation(tmp_path / "automatic.nii.gz", node)
    reports = tmp_path / "reports"
    earlier = in_process.exportContours(segmentation, node, reports, patientId="D1", fileForInstance=lookup)
    folder = reports / "D1"
    pair = {name: Path(earlier[name]).read_bytes() for name in ("seg", "rtstruct")}

    def planning_export_fails(*args, **kwargs):
        raise RuntimeError("disk full while writing the RT Structure Set")

    writer = segment.write_rtstruct
    monkeypatch.setattr(segment, "write_rtstruct", planning_export_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        in_process.exportContours(segmentation, node, reports, patientId="D1", fileForInstance=lookup)
    assert {name: Path(earlier[name]).read_bytes() for name in ("seg", "rtstruct")} == pair  # the SEG too
    assert sorted(path.name for path in folder.iterdir()) == ["D1_rtstruct.dcm", "D1_seg.dcm"]
    monkeypatch.setattr(segment, "write_rtstruct", writer)
    # the process of a cancelled export is killed: its staging folder stays until the next export into the folder
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    from NPCPrognosisLib.io.staging import _this_host

    (folder / f".segment-{dead}@{_this_host()}-abcd1234").mkdir()
    written = in_process.exportContours(segmentation, node, reports, patientId="D1", fileForInstance=lookup)
    assert sorted(path.name for path in folder.iterdir()) == ["D1_rtstruct.dcm", "D1_seg.dcm"]
    assert written["seg"] == earlier["seg"] and Path(written["seg"]).read_bytes() != pair["seg"]  # a new export


def test_contours_of_a_volume_not_loaded_from_dicom_are_refused_with_what_to_do(module, logic, tmp_path, in_process):
    node, reference, _, lookup = _dicom_cet1w(module, logic, tmp_path / "database", _image())
    sitk.WriteImage(_mask_like(reference), str(tmp_path / "automatic.nii.gz"))
    segmentation = logic.importSegmentation(tmp_path / "automatic.nii.gz", node)
    reports = tmp_path / "reports"
    nifti = _volume(logic, reference, name="CET1W from NIfTI")  # no DICOM.instanceUIDs

    def refused(volume, match, lookup=lookup):
        with pytest.raises(module.NPCPrognosisError, match=match) as caught:
            in_process.exportContours(segmentation, volume, reports, patientId="D1", fileForInstance=lookup)
        assert not reports.exists() and not list(logic._workDirectory("jobs").iterdir())  # nothing half-written
        return str(caught.value)

    message = refused(nifti, "not loaded through Slicer's DICOM module")
    assert "CET1W from NIfTI" in message and "Load the CET1W series through the DICOM module" in message
    uids = node.GetAttribute("DICOM.instanceUIDs").split()
    assert "no longer holds" in refused(node, uids[3], lookup=lambda uid: "" if uid == uids[3] else lookup(uid))
    Path(lookup(uids[0])).unlink()  # the database still lists a file deleted from the disk
    assert "gone from the disk" in refused(node, uids[0])
    # without a lookup the module asks Slicer's DICOM database; none open (slicer-core has none) is said as such
    assert "DICOM database is not open" in refused(node, "Open the DICOM module", lookup=None)


def test_contours_exported_on_a_volume_moved_off_its_series_or_without_gtvp_are_refused(module, logic, tmp_path,
                                                                                       in_process):
    node, reference, _, lookup = _dicom_cet1w(module, logic, tmp_path / "database", _image())
    sitk.WriteImage(_mask_like(reference), str(tmp_path / "automatic.nii.gz"))
    segmentation = logic.importSegmentation(tmp_path / "automatic.nii.gz", node)
    reports = tmp_path / "reports"
    # a hardened translation of half a voxel: the attribute stays, the voxels are no longer the series'
    moved = _volume(logic, _image(origin=(-39.6, 22.5, 7.25)), name="moved")
    moved.SetAttribute("DICOM.instanceUIDs", node.GetAttribute("DICOM.instanceUIDs"))
    with pytest.raises(module.NPCPrognosisError, match="does not lie on the voxels of the DICOM series") as caught:
        in_process.exportContours(segmentation, moved, reports, patientId="D1", fileForInstance=lookup)
    assert "load the CET1W series again through the DICOM module" in str(caught.value)
    assert "--resample-mask" not in str(caught.value)
    assert not list(reports.rglob("*.dcm")) and not list(logic._workDirectory("jobs").iterdir())
    # the primary erased: the same refusal as Predict's, before anything is copied or written
    contents = segmentation.GetSegmentation()
    _paint(logic, segmentation, contents.GetSegmentIdBySegmentName("GTVp"),
           np.zeros(reference.GetSize()[::-1], np.uint8), node)
    with pytest.raises(module.NPCPrognosisError, match="has no voxel inside"):
        in_process.exportContours(segmentation, node, reports, patientId="D1", fileForInstance=lookup)
    assert not list(reports.rglob("*.dcm")) and not list(logic._workDirectory("jobs").iterdir())


def test_a_new_job_removes_the_job_folders_a_killed_slicer_left(logic, dead_owner):
    """The panel's job folders are the core's (:func:`NPCPrognosisLib.slicer_support.jobs.new_job_folder`): a folder
    of a Slicer killed mid-job, with the patient's images, goes when the next job starts."""
    root = logic._workDirectory("jobs")
    left = root / f"job-{dead_owner}-abcd1234"
    left.mkdir()
    (left / "t1c.nii.gz").write_bytes(b"the patient's CET1W")
    folder = logic._newJobDirectory()
    assert list(root.iterdir()) == [folder]
    logic._endJobDirectory(folder)
    assert not list(root.iterdir())


def test_the_widget_no_longer_passes_the_last_segmentation_baseline():
    source = (ROOT / "NPCPrognosis.py").read_text()
    assert "automaticLabelmap=p.automaticLabelmap" not in source
    assert "def predict(self, volumes, segmentationNode, bundlePath, clinical, patientId=\"patient\", " \
           "waitForCompletion=True" in source


# ---------------------------------------------------------------------------------------------- tables, plots
def test_features_become_a_table_node(logic):
    import json

    from NPCPrognosisLib.resources import DEMO_BUNDLE

    document = json.loads((Path(DEMO_BUNDLE) / "bundle.json").read_text())
    columns = document["feature_columns"]
    features = {name: float(i) for i, name in enumerate(columns)}
    table = logic.featuresToTable(features, DEMO_BUNDLE)
    assert table.IsA("vtkMRMLTableNode") and logic.scene.GetNodeByID(table.GetID()) is table
    assert table.GetNumberOfRows() == len(columns) and table.GetNumberOfColumns() == 3
    assert [table.GetColumnName(i) for i in range(3)] == ["feature", "value", "in Rad-score"]
    used = set(document["signature"]["features"])
    for row in (0, len(columns) - 1):
        name = table.GetCellText(row, 0)
        assert float(table.GetCellText(row, 1)) == features[name]
        assert int(table.GetCellText(row, 2)) == (name in used)


def test_survival_plot_is_a_chart_with_one_series_per_curve(logic):
    months = np.arange(0, 61, 6.0)
    curves = {"months": months.tolist(), "this patient": np.exp(-months / 80).tolist(),
              "high-risk group (median)": np.exp(-months / 40).tolist(),
              "low-risk group (median)": np.exp(-months / 150).tolist()}
    chart = logic.showSurvivalPlot(curves, title="DMFS", showInLayout=False)
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    series = [chart.GetNthPlotSeriesNode(i) for i in range(3)]
    assert {s.GetYColumnName() for s in series} == set(curves) - {"months"}
    table = series[0].GetTableNode()
    values = slicer.util.arrayFromTableColumn(table, "this patient")
    np.testing.assert_allclose(values, curves["this patient"])
    again = logic.showSurvivalPlot(curves, title="DMFS", showInLayout=False)  # re-predicting reuses the nodes
    assert again is chart and chart.GetNumberOfPlotSeriesNodes() == 3
    # the patient's 95 % interval: its two bounds drawn thin and dotted in the patient's colour
    banded = {**curves, "this patient, 95% lower": (np.exp(-months / 80) ** 1.3).tolist(),
              "this patient, 95% upper": (np.exp(-months / 80) ** 0.7).tolist()}
    chart = logic.showSurvivalPlot(banded, title="DMFS", showInLayout=False)
    bounds = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())
              if chart.GetNthPlotSeriesNode(i).GetYColumnName().startswith("this patient, 95%")]
    assert len(bounds) == 2 and all(b.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDot for b in bounds)
    assert all(b.GetColor() == (0.0, 0.0, 0.0) and b.GetLineWidth() == 1 for b in bounds)


# ---------------------------------------------------------------------------------------------- static checks
def test_every_slicer_util_function_the_module_calls_exists_in_slicer():
    used = set(re.findall(r"slicer\.util\.([A-Za-z_]+)", (ROOT / "NPCPrognosis.py").read_text()))
    missing = sorted(name for name in used if not hasattr(slicer.util, name))
    assert missing == [], f"not in slicer.util: {missing}"


def test_every_ui_property_is_set_once_per_widget():
    tree = ET.parse(ROOT / "Resources" / "UI" / "NPCPrognosis.ui")
    repeated = []
    for widget in tree.iter("widget"):
        names = [p.get("name") for p in widget.findall("property")]
        repeated += [f"{widget.get('name')}.{n}" for n in set(names) if names.count(n) > 1]
    assert repeated == []


# ---------------------------------------------------------------------------------------------- jobs
@pytest.mark.skipif(__import__("os").name == "nt", reason="the POSIX process-group path; Windows uses taskkill /T")
def test_cancel_ends_the_whole_job_not_only_the_launcher(module, tmp_path):
    """PythonSlicer is a launcher whose child is the real Python: Cancel must end both."""
    import os
    import subprocess
    import time

    pid_file = tmp_path / "child.pid"
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n"  # a launcher that forks (not execs) the real interpreter, as Slicer's does
                        f"{subprocess.list2cmdline([__import__('sys').executable])} -c "
                        f"\"import os, time; open('{pid_file}', 'w').write(str(os.getpid())); time.sleep(120)\"\n"
                        "echo launcher-done\n")
    launcher.chmod(0o755)
    runner = module.NPCPrognosisJobRunner()
    runner._pythonSlicer = lambda: str(launcher)
    process = runner._launch({"action": "segment", "out_dir": str(tmp_path / "job")})
    runner._process = process
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    runner.cancel()
    process.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the interpreter started by the launcher survived Cancel")


def _save_scene(scene, folder):
    """What Slicer's Save dialog does: every storable node written through its (default) storage node, then the
    .mrml file."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:
            continue
        storage.SetFileName(str(folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    return folder / "scene.mrml"


def test_a_saved_and_reloaded_scene_keeps_the_parameters_and_the_correction_baseline(module, logic, tmp_path):
    image = _image(direction=_rotation(10, 0))
    mask = _mask_like(image)
    reference, segmentation = _imported(logic, tmp_path, image, mask)
    parameters = logic.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "NPCPrognosis")
    parameters.SetParameter("patientId", "NPC-0042")
    parameters.SetNodeReferenceID("segmentation", segmentation.GetID())
    parameters.SetNodeReferenceID("t1cVolume", reference.GetID())
    path = _save_scene(logic.scene, tmp_path / "saved")

    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(path))
    assert reloaded.Connect()
    again = module.NPCPrognosisLogic(scene=reloaded, segmentationsLogic=segmentations_logic(reloaded),
                                     workDirectory=tmp_path)
    params = reloaded.GetFirstNodeByName("NPCPrognosis")
    assert params.GetParameter("patientId") == "NPC-0042"
    segmentation2, reference2 = params.GetNodeReference("segmentation"), params.GetNodeReference("t1cVolume")
    baseline = again.automaticLabelmapFor(segmentation2)
    assert baseline is not None and baseline.GetHideFromEditors()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(baseline), sitk.GetArrayFromImage(mask))
    assert again.contourChange(segmentation2, reference2)["structures"]["GTVp"]["dice"] == pytest.approx(1.0)
    tag = vtk.reference("")
    assert segmentation2.GetSegmentation().GetNthSegment(0).GetTag(module.LABEL_TAG, tag) and str(tag) == "1"


def test_job_folders_are_removed_once_the_result_is_imported(logic, tmp_path):
    folder = logic._newJobDirectory()
    (folder / "t1c.nii.gz").write_bytes(b"scratch")

    class Runner:
        def runAndWait(self, job, onProgress=None):
            return {"value": 3}

    logic.runner = Runner()
    out = logic._runJob({"out_dir": str(folder)}, lambda result: result["value"] * 2, True, None)
    assert out == 6 and not folder.exists()
    failing = logic._newJobDirectory()
    with pytest.raises(ZeroDivisionError):
        logic._runJob({"out_dir": str(failing)}, lambda result: 1 / 0, True, None)
    assert not failing.exists()


def test_a_job_whose_inputs_cannot_be_written_leaves_no_images_behind(module, logic):
    volumes = {key: _volume(logic, _image(seed=i), name=key) for i, key in enumerate(("t1", "t2", "t1c"))}
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volumes["t1c"].SetAndObserveTransformNodeID(transform.GetID())  # t1 and t2 are written before t1c fails
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "S")
    for run in (lambda: logic.segment(volumes, str(module.DEMO_NETWORK)),
                lambda: logic.extractFeatures(volumes, segmentation, str(module.DEMO_BUNDLE))):
        with pytest.raises(module.NPCPrognosisError, match="Harden the transform"):
            run()
    jobs = logic._workDirectory("jobs")
    assert not list(jobs.iterdir())


def test_segment_never_replaces_contours_drawn_by_hand(module, logic, tmp_path):
    image = _image()
    volumes = {key: _volume(logic, image, name=key) for key in ("t1", "t2", "t1c")}
    manual = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "by hand")
    manual.SetReferenceImageGeometryParameterFromVolumeNode(volumes["t1c"])
    for name in ("GTVp", "Brainstem"):
        manual.GetSegmentation().AddEmptySegment("", name)
    automatic = _mask_like(image)
    sitk.WriteImage(automatic, str(tmp_path / "auto.nii.gz"))

    class Runner:
        def runAndWait(self, job, onProgress=None):
            return {"mask": str(tmp_path / "auto.nii.gz")}

    logic.runner = Runner()
    created = logic.segment(volumes, str(module.DEMO_NETWORK), segmentationNode=manual)
    assert created is not manual and manual.GetSegmentation().GetNumberOfSegments() == 2
    assert logic.automaticLabelmapFor(created) is not None
    again = logic.segment(volumes, str(module.DEMO_NETWORK), segmentationNode=created)
    assert again is created  # a segmentation Segment made is re-run in place, its automatic copy replaced
    # once corrected, it is not: re-running Segment had wiped the radiologist's edits (500 -> 400 GTVp voxels)
    contents = created.GetSegmentation()
    gtvp_id = next(contents.GetNthSegmentID(i) for i in range(contents.GetNumberOfSegments())
                   if contents.GetNthSegment(i).GetName() == "GTVp")
    corrected = (sitk.GetArrayFromImage(automatic) == GTVP).astype(np.uint8)
    corrected[2:6, 3:8, 7:8] = 1  # the primary drawn one voxel wider
    _paint(logic, created, gtvp_id, corrected, volumes["t1c"])
    before = slicer.util.arrayFromVolume(logic.exportLabelmap(created, volumes["t1c"])).copy()
    third = logic.segment(volumes, str(module.DEMO_NETWORK), segmentationNode=created)
    assert third is not created
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(logic.exportLabelmap(created, volumes["t1c"])), before)
    # automatic contours of another CET1W grid are no baseline: no contour change is measured against them
    other = _volume(logic, _image(origin=(-38.6, 22.5, 7.25)), name="t1c moved")
    assert logic.contourChange(third, volumes["t1c"]) is not None and logic.contourChange(third, other) is None


def test_the_cet1w_preselected_is_an_image_not_a_label_map(logic):
    assert logic.firstImageVolume() is None
    _volume(logic, _image(), name="old contours", cls="vtkMRMLLabelMapVolumeNode")
    image = _volume(logic, _image(), name="T1 post")
    assert logic.firstImageVolume() is image


def test_dependencies_install_once_at_a_time_and_never_without_need(module, logic, monkeypatch):
    calls = []
    monkeypatch.setattr(module.NPCPrognosisLogic, "_install", staticmethod(lambda missing: calls.append(missing)))
    assert logic.ensureDependencies("extract", askConfirmation=False)  # everything present: no pip, no network
    assert calls == []
    fake = [{"distribution": "monai", "requirement": "monai>=1.3", "why": "x", "import": "monai", "installed": ""}]
    monkeypatch.setattr(logic, "missingDependencies", lambda action=None: fake if not calls else [])
    monkeypatch.setattr(module.NPCPrognosisLogic, "_installing", True)
    with pytest.raises(module.NPCPrognosisError, match="being installed already"):
        logic.ensureDependencies("segment", askConfirmation=False)
    monkeypatch.setattr(module.NPCPrognosisLogic, "_installing", False)
    assert logic.ensureDependencies("segment", askConfirmation=False) and calls == [fake]
    assert module.NPCPrognosisLogic._installing is False


def test_the_job_log_streams_in_increments(module, tmp_path):
    runner = module.NPCPrognosisJobRunner()
    seen = []
    runner._job, runner._onLog = {"out_dir": str(tmp_path)}, seen.append
    (tmp_path / "job.log").write_text("preprocessing\n")
    runner._streamLog()
    with open(tmp_path / "job.log", "a") as handle:
        handle.write("radiomics 1/3\n")
    runner._streamLog()
    runner._streamLog()
    assert seen == ["preprocessing\n", "radiomics 1/3\n"]


def test_no_inputs_without_a_use_pet_ct_selectors_are_gone():
    """The PET/CT selectors did nothing (no bundle reads PET/CT): a clinician would believe they were used."""
    ui = (ROOT / "Resources" / "UI" / "NPCPrognosis.ui").read_text()
    module_source = (ROOT / "NPCPrognosis.py").read_text()
    assert "petSelector" not in ui and "ctSelector" not in ui
    assert "petVolume" not in module_source and "ctVolume" not in module_source


def test_segments_drawn_on_another_grid_are_exported_with_a_warning_and_those_on_the_grid_without(logic, tmp_path):
    """A GTVp drawn on another series (finer voxels, or the same voxels half a voxel off) is resampled onto the
    CET1W by the export: said, with the segment named; segments on the CET1W's own voxels are not mentioned."""
    image = _image()
    reference = _volume(logic, image)
    imported, segmentation = _imported(logic, tmp_path, image)
    same = []
    logic.exportLabelmap(segmentation, imported, same)
    assert not [w for w in same if "do not lie on the voxels" in w]
    for name, spacing, shift in (("finer", (0.4, 0.45, 1.5), (0.0, 0.0, 0.0)), ("shifted", image.GetSpacing(),
                                                                                  (0.4, 0.0, 0.0))):
        other = _image(spacing=spacing, origin=tuple(o + d for o, d in zip(image.GetOrigin(), shift)),
                       shape=tuple(int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(),
                                                                            spacing)))
        otherNode = _volume(logic, other, name=f"T2W {name}")
        drawn = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"drawn on {name}")
        drawn.SetReferenceImageGeometryParameterFromVolumeNode(otherNode)
        gtvp = drawn.GetSegmentation().AddEmptySegment("", "GTVp")
        array = np.zeros(other.GetSize()[::-1], np.uint8)
        array[tuple(slice(n // 4, n // 2 + 1) for n in other.GetSize()[::-1])] = 1
        _paint(logic, drawn, gtvp, array, otherNode)
        warnings = []
        labelmap = logic.exportLabelmap(drawn, reference, warnings)
        assert (slicer.util.arrayFromVolume(labelmap) == GTVP).sum() > 0
        moved = [w for w in warnings if "do not lie on the voxels" in w]
        assert len(moved) == 1 and "GTVp" in moved[0] and reference.GetName() in moved[0], warnings
