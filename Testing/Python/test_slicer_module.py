"""What can be checked of the Slicer module without Slicer.

The extension build, the .ui, Python 3.9 syntax, a light module import, and the plain-Python helpers the logic
delegates to (clinical form, formatting, contour-change report, survival curves, report, out-of-process jobs).
The end-to-end chain inside Slicer is NPCPrognosisTest in NPCPrognosis.py (run with ctest or --python-script).
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import parse_clinical
from NPCPrognosisLib.resources import DEMO_BUNDLE, SAMPLE_CASE, sample_case_files
from NPCPrognosisLib.slicer_support import contour_change, dependencies, form, formatting, jobs, report
from NPCPrognosisLib.survival import patient
from NPCPrognosisLib.survival.cox import CoxModel
from NPCPrognosisLib.survival.nomogram import Nomogram

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "NPCPrognosis.py"
LIB = ROOT / "NPCPrognosisLib"
UI = ROOT / "Resources" / "UI" / "NPCPrognosis.ui"
SAMPLE = SAMPLE_CASE


# ---------------------------------------------------------------------------------------------- build
def _cmake_list(name: str) -> list:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(r"set\(" + name + r"\s+(.*?)\)", text, re.S)
    assert match, f"{name} not set in CMakeLists.txt"
    items = [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", "NPCPrognosis") for i in items if i]


def _shipped(folder: Path) -> set:
    return {p.relative_to(ROOT).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and not p.name.startswith(".")}


def test_cmake_lists_every_shipped_python_file_and_resource():
    scripts = _cmake_list("MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list("MODULE_PYTHON_RESOURCES")
    python_files = {p for p in _shipped(LIB) if p.endswith(".py")}
    assert "NPCPrognosis.py" in scripts
    unlisted = sorted(python_files - set(scripts))
    assert unlisted == [], f"add these to MODULE_PYTHON_SCRIPTS in CMakeLists.txt: {unlisted}"
    package_data = {p for p in _shipped(LIB) if not p.endswith(".py")}
    unlisted = sorted((_shipped(ROOT / "Resources") | package_data) - set(resources))
    assert unlisted == [], f"add these to MODULE_PYTHON_RESOURCES in CMakeLists.txt: {unlisted}"
    missing = [f for f in scripts + resources if not (ROOT / f).is_file()]
    assert missing == [], f"listed in CMakeLists.txt but absent: {missing}"


def test_cmake_has_extension_metadata_and_self_test():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(" + key + r"\s+\"[^\"]+\"\)", text), key
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)


def test_core_never_imports_slicer_qt_or_vtk():
    forbidden = {"slicer", "qt", "vtk", "ctk", "sitkUtils", "SampleData", "PyTorchUtils", "mrml"}
    offenders = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []


# ---------------------------------------------------------------------------------------------- syntax
PY_FILES = [MODULE] + sorted(LIB.glob("*.py"))


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: p.name)
def test_parses_as_python_39(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_ruff_py39_finds_nothing_newer_than_39():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed")
    # ruff reports syntax a py39 interpreter would reject (match, except*, parenthesised context managers, ...)
    # as errors of its own, whatever rules are selected; E9/F63/F7/F82 add undefined names and broken statements.
    out = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", "--target-version", "py39", "--select",
                          "E9,F63,F7,F82", str(MODULE), str(LIB)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_module_annotations_have_no_runtime_union_operator():
    """NPCPrognosis.py has no `from __future__ import annotations` (the parameter node needs real types)."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        annotation = getattr(node, "annotation", None) or getattr(node, "returns", None)
        if annotation is not None:
            bad += [ast.unparse(n) for n in ast.walk(annotation)
                    if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)]
    assert bad == []


# ---------------------------------------------------------------------------------------------- .ui
EXPECTED_CLASS = [
    ("Button", {"QPushButton"}), ("Selector", {"qMRMLNodeComboBox"}), ("Label", {"QLabel"}),
    ("SpinBox", {"QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox"}), ("ComboBox", {"QComboBox"}),
    ("LineEdit", {"QLineEdit", "ctkPathLineEdit"}), ("CheckBox", {"QCheckBox"}), ("TableWidget", {"QTableWidget"}),
    ("TextEdit", {"QPlainTextEdit", "QTextEdit"}), ("progressBar", {"QProgressBar"}),
    ("GroupBox", {"ctkCollapsibleGroupBox", "QGroupBox"}), ("CollapsibleButton", {"ctkCollapsibleButton"}),
]


def _ui_widgets() -> dict:
    tree = ET.parse(UI)
    return {w.get("name"): w for w in tree.iter("widget")}


def _parameter_fields() -> dict:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NPCPrognosisParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_module_uses_exists_with_a_sensible_class():
    widgets = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert len(used) >= 15
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI.name}"
        cls = widgets[name].get("class")
        expected = next((classes for suffix, classes in EXPECTED_CLASS if name.endswith(suffix)), None)
        assert expected is not None, f"no naming rule for {name}"
        assert cls in expected, f"{name} is a {cls}, expected one of {expected}"


def test_ui_parameter_bindings_name_parameter_node_fields_of_matching_type():
    fields = _parameter_fields()
    bound = {}
    for widget in _ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget
    assert set(bound) - set(fields) == set(), "bound to unknown parameters"
    for required in ("t1Volume", "t2Volume", "t1cVolume", "segmentation", "bundlePath", "age", "sex", "tStage",
                     "nStage", "ebvDna", "rene", "ldh", "chemo", "ccnd"):
        assert required in bound, f"{required} has no widget"
    for parameter, widget in bound.items():
        if widget.get("class") == "qMRMLNodeComboBox":
            node_types = [s.text for s in widget.iter("string")
                          if s.text and s.text.startswith("vtkMRML")]
            assert node_types == [fields[parameter]], parameter
    for name in ("segmentButton", "editButton", "extractButton", "predictButton", "exportButton"):
        assert name in _ui_widgets()


# ---------------------------------------------------------------------------------------------- light import
STUBS = textwrap.dedent('''
    import sys, types

    class _Any:
        def __init__(self, *a, **k): pass
        def __call__(self, *a, **k): return _Any()
        def __getattr__(self, name): return _Any()

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            cls = type(name, (_Any,), {})
            setattr(self, name, cls)
            return cls

    def stub(name):
        module = _Module(name)
        sys.modules[name] = module
        return module

    for name in ("qt", "ctk", "vtk", "slicer", "slicer.ScriptedLoadableModule", "slicer.util",
                 "slicer.parameterNodeWrapper"):
        stub(name)
    slicer = sys.modules["slicer"]
    slicer.app = _Any()
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    slicer.util = sys.modules["slicer.util"]
    slicer.parameterNodeWrapper = sys.modules["slicer.parameterNodeWrapper"]
    for base in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slicer.ScriptedLoadableModule, base,
                type(base, (), {"__init__": lambda self, parent=None, *a, **k: setattr(self, "parent", parent)}))
    slicer.util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    slicer.parameterNodeWrapper.parameterNodeWrapper = lambda cls: cls
''')


def test_importing_the_module_loads_nothing_heavy(tmp_path):
    script = STUBS + textwrap.dedent(f'''
        heavy = ("numpy", "torch", "SimpleITK", "radiomics", "pandas", "sksurv", "monai", "scipy",
                 "NPCPrognosisLib.pipeline.models", "NPCPrognosisLib.io.images", "NPCPrognosisLib.slicer_support.jobs")
        before = [m for m in heavy if m in sys.modules]
        sys.path.insert(0, {str(ROOT)!r})
        import NPCPrognosis
        parent = type("Parent", (), {{}})()
        module = NPCPrognosis.NPCPrognosis(parent)
        logic = NPCPrognosis.NPCPrognosisLogic()
        assert parent.title == "NPC Prognosis", parent.title
        assert NPCPrognosis.NPCPrognosisTest and NPCPrognosis.NPCPrognosisWidget
        assert logic.runInProcess is False
        after = [m for m in heavy if m in sys.modules]
        print("BEFORE", before)
        print("AFTER", after)
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "BEFORE []" in out.stdout
    assert "AFTER []" in out.stdout, out.stdout


def test_helpers_import_only_the_standard_library_at_load_time():
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import NPCPrognosisLib.slicer_support.jobs; "
              "print(sorted(m for m in ('numpy','SimpleITK','pandas','torch','radiomics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- clinical form
def test_clinical_form_becomes_the_same_record_as_the_cli_would_parse():
    values = {"age": 52.0, "sex": "M", "t_stage": "T3", "n_stage": "N2", "ebv_dna": 1500.0, "rene": 1, "ldh": 210.0,
              "chemo": True, "ccnd": 200.0}
    record = form.parse_clinical_form(values, "P1")
    expected = parse_clinical({"age": "52", "sex": "M", "t_stage": "T3", "n_stage": "N2", "ebv_dna": "1500",
                               "rene": "1", "ldh": "210", "chemo": "1", "ccnd": "200"}, "P1")
    assert record == expected


def test_a_zero_dose_in_the_form_means_not_recorded():
    """A spin box cannot be empty: chemotherapy ticked with the dose left at 0 is a dose not recorded (no dose arm),
    not 0 mg/m2; a record without a dose shows 0 in the form again."""
    values = form.clinical_form_to_values({**form.CLINICAL_FORM_DEFAULTS, "chemo": True})
    assert values["ccnd"] is None and parse_clinical(values).ccnd is None
    assert form.clinical_values_to_form({**values, "chemo": 1})["ccnd"] == 0.0
    assert form.clinical_form_to_values({"chemo": True, "ccnd": 150.0})["ccnd"] == 150.0


def test_negative_ebv_dna_in_the_form_means_not_measured():
    values = form.clinical_form_to_values({**form.CLINICAL_FORM_DEFAULTS, "ebv_dna": -1.0})
    assert values["ebv_dna"] is None
    assert parse_clinical(values).ebv_dna is None
    assert form.clinical_form_to_values({"ebv_dna": 0.0})["ebv_dna"] == 0.0


def test_form_errors_are_the_cores_input_errors():
    with pytest.raises(InputError, match="rene"):
        form.parse_clinical_form({"n_stage": "N0", "rene": 2}, "P2")


def test_sample_clinical_json_round_trips_through_the_form():
    files = sample_case_files(SAMPLE)
    raw = json.loads(files["clinical"].read_text(encoding="utf-8"))
    values = form.clinical_values_to_form(raw)
    assert form.parse_clinical_form(values) == parse_clinical(raw)
    assert set(values) == set(form.CLINICAL_FORM_DEFAULTS)
    assert values["t_stage"] in form.T_STAGES and values["n_stage"] in form.N_STAGES


def test_sample_patient_files_are_found():
    files = sample_case_files(SAMPLE)
    assert {"t1", "t2", "t1c", "mask"} <= set(files)


# ---------------------------------------------------------------------------------------------- formatting
PREDICTION = {"patient_id": "P1", "endpoint": "dmfs", "risk_score": 1.2345, "risk_group": "high", "cutoff": 0.5,
              "survival": {"60": 0.61, "12": 0.953, "36": 0.7777},
              "nomogram_points": {"per_factor": {"age": 10.0, "rad_score": 55.55, "t_stage": 20.0}, "total": 85.55},
              "clinical": {"age": 52}, "warnings": ["w1", "w2"], "bundle": {"path": "/b"}}


def test_survival_and_risk_strings():
    assert formatting.format_survival(PREDICTION) == ["DMFS at 12 months: 95.3 %", "DMFS at 36 months: 77.8 %",
                                             "DMFS at 60 months: 61.0 %"]
    assert formatting.format_risk(PREDICTION) == "1.23 (high risk; cut-off 0.50)"
    assert formatting.format_risk(PREDICTION, {"risk_se": 0.314}) == "1.23 ± 0.31 (high risk; cut-off 0.50)"
    # the panel says what the sheet says: a score whose interval spans the cut-off, a group a missing factor decides
    assert formatting.format_risk({**PREDICTION, "borderline": True}) == (
        "1.23 (high risk (borderline: the 95% interval of the score spans the cut-off); cut-off 0.50)")
    undetermined = {"group_determined": False, "risk_group": "undetermined without EBV DNA",
                    "risk_groups": ["low", "high"]}
    assert formatting.format_group(PREDICTION) == "HIGH"
    assert formatting.format_group({**PREDICTION, "borderline": True}) == "HIGH (BORDERLINE)"
    assert formatting.format_group({**PREDICTION, "imputed": {"ebv_dna": undetermined}}) == "UNDETERMINED"
    assert formatting.format_risk({**PREDICTION, "imputed": {"ebv_dna": undetermined}}).startswith(
        "1.23 (undetermined without EBV DNA (high at the training median, low or high across")
    assert formatting.format_percent(float("nan")) == "n/a"


def test_the_panel_label_and_the_sheet_take_one_decision_on_the_group_and_say_it_as_before():
    """The panel's large label and the sheet's group text come from one decision (risk_group_standing): undetermined
    first (even when also borderline; a determined filled-in factor changes nothing), then borderline, then firm.
    The strings are those both gave before the decision had one home."""
    from NPCPrognosisLib.reporting.labels import risk_group_standing, risk_group_text

    undetermined = {"group_determined": False, "risk_group": "undetermined without EBV DNA",
                    "risk_groups": ["low", "high"]}
    determined = {"group_determined": True, "risk_group": "low", "risk_groups": ["low"]}
    cases = [
        ({"risk_group": "high"}, "firm", "HIGH", "high risk"),
        ({"risk_group": "low", "borderline": False}, "firm", "LOW", "low risk"),
        ({"risk_group": "low", "borderline": True}, "borderline", "LOW (BORDERLINE)",
         "low risk (borderline: the 95% interval of the score spans the cut-off)"),
        ({"risk_group": "high", "borderline": True, "imputed": {"ldh": determined, "ebv_dna": undetermined}},
         "undetermined", "UNDETERMINED", "undetermined without EBV DNA (high at the training median, low or high "
         "across its 10th-90th percentile)"),
        ({"risk_group": "low", "imputed": {"ldh": determined}}, "firm", "LOW", "low risk"),
        ({"risk_group": "high", "borderline": None, "imputed": None}, "firm", "HIGH", "high risk"),
    ]
    for prediction, standing, label, text in cases:
        decided, block = risk_group_standing(prediction)
        assert decided == standing and (block is undetermined) == (standing == "undetermined")
        assert formatting.format_group(prediction) == label
        assert risk_group_text(prediction) == text
    # the sheet's names and points (the panel printed 'rad_score' and a favourable factor's '-0.0')
    assert formatting.format_nomogram_points(PREDICTION["nomogram_points"]) == [
        ("Rad-score", "55.5"), ("T stage", "20.0"), ("Age (years)", "10.0"), ("Total points", "85.5")]
    assert formatting.format_nomogram_points({"per_factor": {"male": -0.0, "age": 4.0}, "total": 4.0}) == [
        ("Age (years)", "4.0"), ("Sex", "0"), ("Total points", "4.0")]
    assert formatting.format_warnings([]) == "none"


def test_binary_line_names_the_model_as_a_reader_says_it():
    prediction = {"binary": {"ic_response": {"probability": 0.62, "ci95": [0.5, 0.73], "model": "volume"},
                             "recurrence": {"probability": 0.2, "ci95": None, "model": "classifier_random_forest"}}}
    assert formatting.format_binary(prediction) == [
        "ic response probability 62% (95% CI 50%-73%) [Tumour volume alone]",
        "recurrence probability 20% [Random forest (clinical + signature features)]"]


def test_benefit_statement_or_not_available():
    assert "not available" in formatting.benefit_summary(PREDICTION)["statement"]
    given = dict(PREDICTION, chemo_benefit={"statement": "High-risk patient: HR 0.5", "evidence": {"hr": 0.5}})
    assert formatting.benefit_summary(given) == {"statement": "High-risk patient: HR 0.5", "evidence": {"hr": 0.5},
                                                 "arms": []}
    arms = {"rt_alone": {"12": {"survival": 0.9, "ci95": [0.85, 0.95]}, "60": {"survival": 0.61, "ci95": None}}}
    assert formatting.format_arms(arms) == ["radiotherapy alone: 12 mo 90% (85%-95%), 60 mo 61%"]
    assert formatting.format_evidence({}) == ""


def test_the_demo_bundles_benefit_conclusion_reads_in_this_versions_words(monkeypatch):
    """The demo bundle stored its benefit model's conclusion in the words of the version that trained it ('CCND > 160
    vs <= 160 mg/m2') until it was rebuilt, while every other benefit text says 'CCND > 160 vs ≤ 160 mg/m²'. A
    loaded bundle shows the conclusion rendered from the model's numbers by this version, whatever words it stored."""
    from NPCPrognosisLib.pipeline import models
    from NPCPrognosisLib.survival.benefit import dose_comparison, model_conclusion

    document = json.loads((DEMO_BUNDLE / "bundle.json").read_text(encoding="utf-8"))
    stored = document["chemo_benefit"]
    assert stored["conclusion"] == model_conclusion(stored)  # rebuilt: this version's words
    assert stored["conclusion"].startswith(f"{dose_comparison(160)}, adjusted: high-risk group HR ")
    old = stored["conclusion"].replace("vs ≤ 160 mg/m²", "vs <= 160 mg/m2")
    assert old != stored["conclusion"]
    # the bundle as the version before it wrote it: the same numbers, the arms in its words
    monkeypatch.setattr(models, "read_bundle",
                        lambda path: {**document, "chemo_benefit": {**stored, "conclusion": old}})
    shown = models.load_bundle(DEMO_BUNDLE).document["chemo_benefit"]["conclusion"]
    assert shown == model_conclusion(stored) == stored["conclusion"]


def test_benefit_evidence_reads_in_words_with_the_group_hazard_ratio():
    """The panel printed the evidence block's keys ('threshold_mg_m2 160; interaction_p 0.593; bootstrap_n 200;
    note ...') and dropped the risk group's hazard ratio, the one number behind the statement."""
    from NPCPrognosisLib.survival.benefit import model_conclusion
    from NPCPrognosisLib.survival.benefit_patient import patient_benefit

    doc = json.loads((DEMO_BUNDLE / "bundle.json").read_text(encoding="utf-8"))["chemo_benefit"]
    confounders = {"t_stage": 3.0, "n_stage": 1.0, "rene": 1.0, "male": 1.0, "log10_ebv_dna": 3.0, "age": 50.0,
                   "ldh": 200.0}
    summary = formatting.benefit_summary({"chemo_benefit": patient_benefit(doc, confounders, "high")})
    evidence = formatting.format_evidence(summary["evidence"])
    # the high-risk group's HR as the bundle's own conclusion (benefit.model_conclusion) words it, to 2 places
    high = re.search(r"high-risk group HR (\d\.\d\d) \(95% CI (\d\.\d\d)-(\d\.\d\d)\)", model_conclusion(doc))
    p = doc["interaction_lrt"]["p"]
    assert evidence == (f"CCND > 160 vs ≤ 160 mg/m² in the high-risk group: HR {high[1]} (95% CI {high[2]} to "
                        f"{high[3]}); interaction with the risk group p = {p:.3f}; {doc['bootstrap']['n']} bootstrap "
                        f"refits; {doc['note']}")
    # the statement above it names the two arms as the evidence does (it read "CCND > 160 mg/m2 over <= 160 mg/m2")
    assert "CCND > 160 vs ≤ 160 mg/m² " in summary["statement"] and "<=" not in summary["statement"]
    # the panel's whole text: statement, one line per arm, the evidence in parentheses
    assert formatting.format_benefit(summary).split("\n") == [summary["statement"], *summary["arms"], f"({evidence})"]
    assert len(summary["arms"]) == 2
    assert not re.search(r"[a-z]+_[a-z]+", evidence)  # no key of the JSON block
    small = {"threshold_mg_m2": 160.0, "group_hr": {"level": "low", "hr": 1.234, "hr_95ci": [0.5, 3.0]},
             "interaction_p": 0.0004, "bootstrap_n": 0, "note": ""}
    assert formatting.format_evidence(small) == ("CCND > 160 vs ≤ 160 mg/m² in the low-risk group: HR 1.23 (95% CI "
                                                 "0.50 to 3.00); interaction with the risk group p < 0.001; "
                                                 "0 bootstrap refits")
    assert formatting.format_benefit({"statement": "Chemotherapy benefit: not available in this bundle.",
                                      "evidence": {}}) == "Chemotherapy benefit: not available in this bundle."


# ---------------------------------------------------------------------------------------------- contour change
def _independent_dice(a: np.ndarray, b: np.ndarray) -> float:
    sa = set(map(tuple, np.argwhere(a)))
    sb = set(map(tuple, np.argwhere(b)))
    return 2 * len(sa & sb) / (len(sa) + len(sb)) if sa or sb else 1.0


def test_contour_change_report_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    auto = rng.choice([0, 1, 2], size=(6, 7, 8), p=[0.6, 0.25, 0.15]).astype(np.uint8)
    edited = auto.copy()
    flip = rng.random(auto.shape) < 0.2
    edited[flip] = rng.choice([0, 1, 2], size=int(flip.sum()))
    spacing = (0.5, 0.7, 3.0)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    report = contour_change.contour_change_report(auto, edited, voxel_ml, {"risk_score": 0.2, "risk_group": "low"},
                                     {"risk_score": 0.9, "risk_group": "high"})
    for name, label in (("GTVp", 1), ("GTVn", 2)):
        s = report["structures"][name]
        assert s["dice"] == pytest.approx(_independent_dice(auto == label, edited == label), abs=1e-12)
        va = np.count_nonzero(auto == label) * voxel_ml
        vb = np.count_nonzero(edited == label) * voxel_ml
        assert s["volume_automatic_ml"] == pytest.approx(va)
        assert s["volume_edited_ml"] == pytest.approx(vb)
        assert s["volume_change_percent"] == pytest.approx(100 * (vb - va) / va)
        assert 0 < s["dice"] < 1
    assert report["risk"]["change"] == pytest.approx(0.7)
    assert report["risk"]["group_changed"] is True
    lines = formatting.format_contour_change(report)
    assert lines[0].startswith("GTVp: Dice ") and "group changed low -> high" in lines[-1]


def test_identical_contours_give_dice_one_and_an_added_structure_is_new():
    auto = np.zeros((4, 4, 4), np.uint8)
    auto[1:3, 1:3, 1:3] = 1
    report = contour_change.contour_change_report(auto, auto, 0.001)
    assert report["structures"]["GTVp"]["dice"] == 1.0
    assert report["structures"]["GTVn"]["dice"] == 1.0  # both empty
    assert "risk" not in report
    edited = auto.copy()
    edited[0, 0, 0] = 2
    report = contour_change.contour_change_report(auto, edited, 0.001)
    assert report["structures"]["GTVn"]["dice"] == 0.0
    assert "new" in formatting.format_contour_change(report)[1]
    with pytest.raises(ValueError, match="CET1W grid"):
        contour_change.contour_change_report(auto, auto[:3], 0.001)


def test_each_structure_is_filed_as_the_networks_corrected_or_drawn_by_hand():
    auto = np.zeros((4, 5, 5), np.uint8)
    auto[1:3, 1:3, 1:3] = 1
    auto[1, 4, 4] = 2
    assert contour_change.edit_origins(auto, auto) == {1: "AUTOMATIC", 2: "AUTOMATIC"}
    corrected = auto.copy()
    corrected[3, 1, 1] = 1  # one voxel more of GTVp
    assert contour_change.edit_origins(corrected, auto) == {1: "SEMIAUTOMATIC", 2: "AUTOMATIC"}
    no_node = auto.copy()
    no_node[no_node == 2] = 0
    node_added = no_node.copy()
    node_added[0, 0, 0] = 2  # the network drew no node; the radiologist did
    assert contour_change.edit_origins(node_added, no_node) == {1: "AUTOMATIC", 2: "MANUAL"}
    assert contour_change.edit_origins(no_node, auto) == {1: "AUTOMATIC"}  # a node erased is not written
    assert contour_change.edit_origins(auto, None) == {1: "MANUAL", 2: "MANUAL"}  # never segmented
    with pytest.raises(ValueError, match="not on the grid"):
        contour_change.edit_origins(auto, auto[:3])


# ---------------------------------------------------------------------------------------------- model extras
def _tiny_bundle(with_groups: bool = True):
    model = CoxModel(covariates=["rad_score", "age"], coef=np.array([0.8, 0.02]), se=np.array([0.2, 0.01]),
                     ties="efron", baseline_times=np.array([6.0, 18.0, 40.0, 70.0]),
                     baseline_cumhaz=np.array([0.02, 0.08, 0.2, 0.35]), n=50, events=12, log_likelihood=-40.0,
                     covariance=np.array([[0.04, 0.001], [0.001, 0.0001]]))
    nomogram = Nomogram(name="nomogram", model=model, low=[-2.0, 30.0], high=[2.0, 80.0])
    time = [5.0, 10.0, 12.0, 20.0, 30.0, 44.0, 50.0, 65.0, 80.0, 90.0]
    event = [1, 0, 1, 1, 0, 1, 0, 1, 0, 0]
    cut = {"cutoff": 1.1}
    if with_groups:
        cut["group_median_risk"] = {"low": 0.6, "high": 1.9}
    document = {"cutoffs": {"nomogram": cut}, "training": {"time": time, "event": event}}
    return SimpleNamespace(nomograms={"nomogram": nomogram}, document=document, cutoffs={"nomogram": 1.1})


def test_survival_curves_follow_the_cox_formula_and_the_training_km():
    from lifelines import KaplanMeierFitter

    bundle = _tiny_bundle()
    factors = {"rad_score": 0.5, "age": 50.0}
    months = [0.0, 6.0, 12.0, 24.0, 60.0, 85.0, 95.0]
    curves = patient.survival_curves(bundle, factors, months)
    h0 = np.array([0.0, 0.02, 0.02, 0.08, 0.2, 0.35, 0.35])
    lp = 0.8 * 0.5 + 0.02 * 50
    np.testing.assert_allclose(curves["this patient"], np.exp(-h0 * math.exp(lp)), rtol=1e-12)
    np.testing.assert_allclose(curves["risk-group cut-off"], np.exp(-h0 * math.exp(1.1)), rtol=1e-12)
    np.testing.assert_allclose(curves["high-risk group (median)"], np.exp(-h0 * math.exp(1.9)), rtol=1e-12)
    np.testing.assert_allclose(curves["low-risk group (median)"], np.exp(-h0 * math.exp(0.6)), rtol=1e-12)
    km = KaplanMeierFitter().fit(bundle.document["training"]["time"], bundle.document["training"]["event"])
    expected = km.survival_function_at_times(months[:-1]).to_numpy()
    np.testing.assert_allclose(curves["training cohort (Kaplan-Meier)"][:-1], expected, rtol=1e-12)
    assert math.isnan(curves["training cohort (Kaplan-Meier)"][-1])  # beyond follow-up: not drawn
    assert "high-risk group (median)" not in patient.survival_curves(_tiny_bundle(False), factors, months)
    # a bundle saved without the baseline's variance draws no band (NaN had turned into a band stuck at 1)
    assert patient.BAND_LOWER not in curves and patient.BAND_UPPER not in curves
    assert patient.risk_uncertainty(bundle, factors)["survival_ci95"] == {}


def test_risk_uncertainty_is_the_delta_method_standard_error():
    bundle = _tiny_bundle()
    x = np.array([0.5, 50.0]) - np.array([0.0, 55.0])  # contrast with the middle of the training ranges
    cov = bundle.nomograms["nomogram"].model.covariance
    out = patient.risk_uncertainty(bundle, {"rad_score": 0.5, "age": 50.0}, deep_score_sd=0.1)
    assert out["risk_se"] == pytest.approx(math.sqrt(x @ cov @ x))
    assert out["deep_score_sd"] == 0.1


def test_a_patient_at_the_training_means_gets_survival_intervals_with_width():
    """The intervals carry the baseline hazard's uncertainty (Tsiatis): an average patient's risk score has SE 0 by
    construction, and the sheet had printed "95% CI 60%-60%" from it. The curves carry the band for the plot."""
    from NPCPrognosisLib.survival.cox import fit_cox

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=150), rng.normal(55, 10, 150)])
    time, censor = rng.exponential(40 * np.exp(-0.8 * x[:, 0])), rng.uniform(10, 90, 150)
    model = fit_cox(x, np.minimum(time, censor), time <= censor, ["rad_score", "age"])
    nomogram = Nomogram(name="nomogram", model=model, low=[-2.0, 30.0], high=[2.0, 80.0],
                        center=float(np.mean(model.linear_predictor(x))))
    bundle = SimpleNamespace(nomograms={"nomogram": nomogram}, document={}, cutoffs={"nomogram": 0.0})
    average = dict(zip(["rad_score", "age"], x.mean(axis=0)))
    out = patient.risk_uncertainty(bundle, average)
    assert out["risk_se"] == pytest.approx(0.0, abs=1e-9) and out["reference"] == "the average training patient"
    survival = nomogram.survival(average)[0]
    for month, value in zip(("12", "36", "60"), survival):
        low, high = out["survival_ci95"][month]
        assert low < value - 0.02 and value + 0.02 < high
    curves = patient.survival_curves(bundle, average, [0.0, 12.0, 36.0, 60.0])
    assert curves[patient.BAND_LOWER][0] == 1.0 and curves[patient.BAND_UPPER][0] == 1.0  # before any event
    assert curves[patient.BAND_LOWER][2] == pytest.approx(out["survival_ci95"]["36"][0])


def test_report_files_reopen(tmp_path):
    bundle = _tiny_bundle()
    result = {"prediction": PREDICTION, "uncertainty": {"risk_se": 0.3},
              "curves": patient.survival_curves(bundle, {"rad_score": 0.5, "age": 50.0}, [0, 12, 36, 60]),
              "benefit": {"statement": "not available", "evidence": {}},
              "contour_change": contour_change.contour_change_report(np.ones((2, 2, 2)), np.ones((2, 2, 2)), 0.001)}
    paths = report.write_report(result, tmp_path / "report", pdf=False)
    again = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert again["prediction"]["risk_score"] == PREDICTION["risk_score"]
    assert again["curves"]["months"] == [0.0, 12.0, 36.0, 60.0]
    html = paths["html"].read_text(encoding="utf-8")
    # The Export report is the patient sheet: the numbers, the contour change, the points of an old prediction.
    assert "DMFS at 36 months<b>78%</b>" in html and "GTVp: Dice 1.000" in html and "55.5" in html
    assert "Warnings" in html and "w1" in html and set(paths) == {"json", "html"}


# ---------------------------------------------------------------------------------------------- dependencies
def test_missing_dependencies_detects_absent_and_old_packages_without_importing():
    installed = {"torch": "2.1.0+cu121", "monai": "1.2.0", "pyradiomics": "3.0.1", "pandas": "2.2.0",
                 "PyYAML": "6.0.1", "safetensors": "0.4.0", "matplotlib": "3.8.0", "pydicom": "2.4.4",
                 "highdicom": "0.22.0"}

    def version_of(name):
        if name not in installed:
            raise LookupError(name)
        return installed[name]

    missing = dependencies.missing_dependencies(version_of=version_of)
    assert [m["distribution"] for m in missing] == ["monai", "scikit-survival"]
    assert missing[0]["installed"] == "1.2.0"
    assert "scikit-survival>=0.22" in dependencies.install_question(missing)
    assert dependencies.missing_dependencies() == []  # this environment has everything


def test_requirements_file_lists_every_dependency():
    listed = dependencies.read_requirements(ROOT / "Resources" / "requirements.txt")
    assert sorted(listed) == sorted(r for _, r, _, _ in dependencies.DEPENDENCIES)


# ---------------------------------------------------------------------------------------------- jobs
def _write_mask(path: Path, array: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def test_features_are_reused_only_for_the_same_contours_images_and_bundle(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from NPCPrognosisLib.io.bundle import write_bundle

    calls = []
    monkeypatch.setattr(jobs, "bundle_features", lambda bundle, patient: calls.append(1) or {"f": float(len(calls))})
    array = np.zeros((5, 6, 7), np.uint8)
    array[1:3, 2:4, 2:5] = 1
    mask = _write_mask(tmp_path / "m.nii.gz", array)
    t2 = sitk.GetImageFromArray(np.arange(210, dtype=np.float32).reshape(5, 6, 7))
    patient = SimpleNamespace(mask=mask, patient_id="P", images={"t2": t2})
    bundle = SimpleNamespace(path=write_bundle(tmp_path / "bundle", {"endpoint": "dmfs", "radiomics": "first"}))
    first = jobs.cached_features(bundle, patient, None, tmp_path / "a.json")
    assert jobs.cached_features(bundle, patient, first, tmp_path / "b.json") == first
    assert len(calls) == 1
    array[0, 0, 0] = 2
    edited = SimpleNamespace(mask=_write_mask(tmp_path / "m2.nii.gz", array), patient_id="P", images={"t2": t2})
    assert jobs.patient_fingerprint(edited) != jobs.patient_fingerprint(patient)
    assert jobs.cached_features(bundle, edited, first, tmp_path / "c.json") == tmp_path / "c.json"
    other_bundle = SimpleNamespace(path=tmp_path / "other")
    assert jobs.cached_features(other_bundle, patient, first, tmp_path / "d.json") == tmp_path / "d.json"
    # another T2W volume with the same contours
    other_t2 = SimpleNamespace(mask=mask, patient_id="P", images={"t2": t2 * 2})
    assert jobs.cached_features(bundle, other_t2, first, tmp_path / "e.json") == tmp_path / "e.json"
    # the same bundle folder retrained in place with other settings
    write_bundle(tmp_path / "bundle", {"endpoint": "dmfs", "radiomics": "second"})
    assert jobs.cached_features(bundle, patient, first, tmp_path / "f.json") == tmp_path / "f.json"
    assert len(calls) == 5


def test_the_job_folders_a_killed_slicer_left_are_removed_by_the_next_job(tmp_path, caplog, dead_owner):
    """``kill -9`` of Slicer during Segment left its job folder, with the patient's three sequences (2.4 MB for the
    sample patient), under Slicer's temporary folder for good, one more per killed session. The next job's folder
    is made after removing those whose Slicer no longer runs, with a warning naming them; a running job's (this
    Slicer's, another machine's) and an older version's (no owner in its name) are left alone."""
    import logging

    from NPCPrognosisLib.io.staging import owner_tag

    root = tmp_path / "jobs"
    running = jobs.new_job_folder(root)
    assert running.parent == root and running.name.startswith(f"job-{owner_tag()}-")
    killed = root / f"job-{dead_owner}-abcd1234"
    reused_pid = root / f"job-{owner_tag()}-zzzz1234"  # this process's ID, not a folder it made: an earlier run's
    kept = [root / "job-uqp3ns3d", root / "job-1@another-host-abcd1234", running]
    for folder in (killed, reused_pid, *kept):
        folder.mkdir(exist_ok=True)
        (folder / "t1c.nii.gz").write_bytes(b"the patient's CET1W")
    with caplog.at_level(logging.WARNING):
        new = jobs.new_job_folder(root)
    assert sorted(root.iterdir()) == sorted([*kept, new])
    [message] = [r.getMessage() for r in caplog.records if "stopped Slicer" in r.getMessage()]
    names = ", ".join(sorted([killed.name, reused_pid.name]))
    assert message == (f"removed 2 job folder(s) that a stopped Slicer left in {root} ({names}): the images and "
                       "results of jobs it never finished")
    jobs.end_job_folder(running)
    assert not running.exists() and jobs.remove_stale_job_folders(root) == []


def test_radiomics_kept_for_a_segmentation_are_written_whole_and_a_cut_off_copy_is_computed_again(tmp_path,
                                                                                               monkeypatch, caplog,
                                                                                               dead_owner):
    """The panel copied a job's radiomics to the segmentation's cache with ``shutil.copyfile``: a Slicer killed
    mid-copy left a cut-off file, and every later Extract or Predict of that segmentation failed reading it (a JSON
    error). The copy is now atomic, a killed copy's hidden file is removed, and a cut-off cache is computed again."""
    import logging

    import SimpleITK as sitk

    monkeypatch.setattr(jobs, "bundle_features", lambda bundle, patient: {"f": 1.5})
    array = np.zeros((5, 6, 7), np.uint8)
    array[1:3, 2:4, 2:5] = 1
    patient = SimpleNamespace(mask=_write_mask(tmp_path / "m.nii.gz", array), patient_id="P",
                              images={"t2": sitk.GetImageFromArray(np.ones((5, 6, 7), np.float32))})
    bundle = SimpleNamespace(path=tmp_path / "bundle")
    job_features = jobs.cached_features(bundle, patient, None, tmp_path / "job" / "features.json")
    cache = tmp_path / "features-SegmentationNode1" / "features.json"
    left = cache.with_name(f".features.json.{dead_owner}-abcd1234.tmp.json")
    left.parent.mkdir()
    left.write_text('{"patient_id": "P", "bun')
    assert jobs.keep_features(job_features, cache) == cache
    assert cache.read_bytes() == job_features.read_bytes() and not left.exists()
    cache.write_text('{"patient_id": "P", "bun')  # what copyfile left when Slicer was killed
    with caplog.at_level(logging.WARNING):
        again = jobs.cached_features(bundle, patient, cache, tmp_path / "job2" / "features.json")
    assert again == tmp_path / "job2" / "features.json"
    assert json.loads(again.read_text())["features"] == {"f": 1.5}
    assert any(r.getMessage().startswith(f"patient P: the earlier radiomics {cache} cannot be read")
               for r in caplog.records)


def test_job_with_a_missing_bundle_fails_with_a_readable_error_file(tmp_path):
    files = sample_case_files(SAMPLE)
    job = {"action": "predict", "out_dir": str(tmp_path / "out"), "patient_id": "NPC-SAMPLE-001",
           "images": {k: str(files[k]) for k in ("t1", "t2", "t1c")}, "mask": str(files["mask"]),
           "bundle": str(tmp_path / "no-bundle"), "clinical": form.CLINICAL_FORM_DEFAULTS,
           "log_file": str(tmp_path / "out" / "job.log")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = subprocess.run([sys.executable, "-m", "NPCPrognosisLib.slicer_support.jobs", str(tmp_path / "job.json")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    error = json.loads((tmp_path / "out" / "error.json").read_text(encoding="utf-8"))
    assert "not a model bundle" in error["error"]
    assert error["type"] == "BundleError"
    assert "not a model bundle" in (tmp_path / "out" / "job.log").read_text(encoding="utf-8")
    progress = json.loads((tmp_path / "out" / "progress.json").read_text(encoding="utf-8"))
    assert progress["message"] == "checking the model bundle"


def test_contours_job_writes_seg_and_rtstruct_out_of_process_without_the_network_packages(tmp_path):
    """The panel's Export contours (DICOM) job, run as Slicer runs it (``-m ...jobs job.json``): it writes both files
    and imports none of torch, MONAI or PyRadiomics, which it does not declare (``ACTIONS["contours"]``): the
    writer's module had imported the segmentation network, so exporting a structure set needed torch. A series
    without a frame of reference can have neither file: an error naming why, not a silent no-op."""
    import pydicom
    import SimpleITK as sitk

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series

    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(100, 1000, (6, 16, 16)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 3.0))
    write_dicom_series(image, tmp_path / "cet1w", {"0008|0060": "MR", "0010|0020": "J1", "0020|000d": dicom_uid(rng),
                                                   "0020|0052": dicom_uid(rng)}, dicom_uid(rng), rng)
    array = np.zeros((6, 16, 16), np.uint8)
    array[2:4, 4:9, 4:9], array[1:3, 11:14, 10:13] = 1, 2
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))

    def run(name):
        job = {"action": "contours", "out_dir": str(tmp_path / name), "patient_id": "J1",
               "images": {"t1c": str(tmp_path / "cet1w")}, "mask": str(tmp_path / "mask.nii.gz"),
               "seg": str(tmp_path / "out" / f"{name}_seg.dcm"), "rtstruct": str(tmp_path / "out" / f"{name}_rs.dcm")}
        (tmp_path / f"{name}.json").write_text(json.dumps(job))
        script = ("import sys; from NPCPrognosisLib.slicer_support.jobs import main; code = main([sys.argv[1]]); "
                  "print(sorted(m for m in ('torch', 'monai', 'radiomics') if m in sys.modules)); sys.exit(code)")
        return subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.json")], capture_output=True,
                              text=True, cwd=ROOT)

    out = run("first")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    result = json.loads((tmp_path / "first" / "result.json").read_text(encoding="utf-8"))
    assert result["seg"] == str(tmp_path / "out" / "first_seg.dcm") and result["warnings"] == []
    assert pydicom.dcmread(result["rtstruct"]).Modality == "RTSTRUCT"
    for f in (tmp_path / "cet1w").iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    out = run("second")
    assert out.returncode == 2
    error = json.loads((tmp_path / "second" / "error.json").read_text(encoding="utf-8"))["error"]
    assert error.startswith("no DICOM SEG or RT Structure Set was written") and "FrameOfReferenceUID" in error
    assert "'J1'" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first_rs.dcm", "first_seg.dcm"]


def test_unknown_job_action_is_refused(tmp_path):
    files = sample_case_files(SAMPLE)
    with pytest.raises(ValueError, match="unknown job action"):
        jobs.run_job({"action": "train", "out_dir": str(tmp_path), "images": {"t1c": str(files["t1c"])}},
                  progress=lambda f, m: None)


def test_cancel_stops_a_job_between_stages(tmp_path):
    files = sample_case_files(SAMPLE)
    seen = []
    with pytest.raises(jobs.JobCancelled):
        jobs.run_job({"action": "predict", "out_dir": str(tmp_path), "images": {"t1c": str(files["t1c"])}},
                  progress=lambda f, m: seen.append(m), cancelled=lambda: len(seen) >= 1)
    assert seen == ["reading images"]
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_predict_job_on_the_sample_patient_with_the_demo_bundle(tmp_path):
    files = sample_case_files(SAMPLE)
    import SimpleITK as sitk

    mask = sitk.ReadImage(str(files["mask"]))
    array = sitk.GetArrayFromImage(mask)
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(mask == 1, [1, 1, 0]))
    edited_array = np.where(array == 1, np.where(eroded > 0, 1, 0), array).astype(np.uint8)
    edited = sitk.GetImageFromArray(edited_array)
    edited.CopyInformation(mask)
    sitk.WriteImage(edited, str(tmp_path / "edited.nii.gz"))
    clinical = form.clinical_values_to_form(json.loads(files["clinical"].read_text(encoding="utf-8")))
    job = {"action": "predict", "out_dir": str(tmp_path / "job"), "patient_id": "NPC-SAMPLE-001",
           "images": {k: str(files[k]) for k in ("t1", "t2", "t1c")}, "mask": str(tmp_path / "edited.nii.gz"),
           "reference_mask": str(files["mask"]), "bundle": str(DEMO_BUNDLE), "clinical": clinical}
    result = jobs.run_job(job, progress=lambda f, m: None)
    prediction = result["prediction"]
    assert math.isfinite(prediction["risk_score"]) and prediction["risk_group"] in ("high", "low")
    assert math.isfinite(result["reference_prediction"]["risk_score"])
    assert result["reference_features"] != result["features"]  # edited contours were not served from the cache
    features = json.loads(Path(result["features"]).read_text(encoding="utf-8"))["features"]
    document = json.loads((DEMO_BUNDLE / "bundle.json").read_text(encoding="utf-8"))
    assert set(document["feature_columns"]) <= set(features)
    rows = formatting.feature_rows(features, document)
    assert [r[0] for r in rows] == document["feature_columns"]
    assert sum(r[2] for r in rows) == len(document["signature"]["features"])
    voxel = float(np.prod(mask.GetSpacing())) / 1000.0
    report = contour_change.contour_change_report(array, edited_array, voxel, result["reference_prediction"],
                                                  prediction)
    assert 0 < report["structures"]["GTVp"]["dice"] < 1 and report["structures"]["GTVn"]["dice"] == 1.0


@pytest.mark.slow
def test_panel_and_command_line_give_the_same_numbers(tmp_path):
    """The Slicer job and `npc-prognosis predict` land in the same core function: same risk, same standard error,
    same curves (computed in the core and written to prediction.json, not added by the panel)."""
    from NPCPrognosisLib.cli import main

    files = sample_case_files(SAMPLE)
    raw = json.loads(files["clinical"].read_text(encoding="utf-8"))
    job = {"action": "predict", "out_dir": str(tmp_path / "job"), "patient_id": "NPC-SAMPLE-001",
           "images": {k: str(files[k]) for k in ("t1", "t2", "t1c")}, "mask": str(files["mask"]),
           "bundle": str(DEMO_BUNDLE), "clinical": form.clinical_values_to_form(raw)}
    panel = jobs.run_job(job, progress=lambda f, m: None)
    clinical = [f"{k}={v}" for k, v in raw.items() if k != "patient_id" and v is not None]
    assert main(["--quiet", "predict", "--bundle", str(DEMO_BUNDLE), "--patient-id", "NPC-SAMPLE-001",
                 *[a for k in ("t1", "t2", "t1c") for a in (f"--{k}", str(files[k]))], "--mask", str(files["mask"]),
                 "--clinical", *clinical, "--out", str(tmp_path / "cli")]) == 0
    command_line = json.loads((tmp_path / "cli" / "prediction.json").read_text(encoding="utf-8"))
    assert command_line["risk_score"] == pytest.approx(panel["prediction"]["risk_score"], abs=1e-9)
    assert command_line["uncertainty"]["risk_se"] is not None
    assert command_line["uncertainty"] == panel["uncertainty"]
    assert command_line["survival_curves"].keys() == panel["curves"].keys()
    for name, values in command_line["survival_curves"].items():
        assert np.allclose(np.array(values, dtype=float), np.array(panel["curves"][name], dtype=float),
                           equal_nan=True), name


def test_each_action_installs_only_what_its_job_imports():
    segment = {row[0] for row in dependencies.dependencies_for("segment")}
    extract = {row[0] for row in dependencies.dependencies_for("extract")}
    assert "torch" in segment and "pyradiomics" not in segment
    assert "pyradiomics" in extract and "torch" not in extract
    assert {row[0] for row in dependencies.dependencies_for("export")} == {"matplotlib"}
    assert {row[0] for row in dependencies.dependencies_for("contours")} == {"pydicom", "highdicom", "pandas",
                                                                              "matplotlib"}
    assert {row[0] for row in dependencies.dependencies_for("predict_with_network")} >= {"torch", "pyradiomics"}
    assert len(dependencies.dependencies_for(None)) == len(dependencies.DEPENDENCIES)
    with pytest.raises(ValueError, match="unknown action"):
        dependencies.dependencies_for("train")
    # Every package an action names is a declared dependency (no typo silently skipping one).
    declared = {row[0] for row in dependencies.DEPENDENCIES}
    for names in dependencies.ACTIONS.values():
        assert set(names) <= declared


def test_pyradiomics_on_python_312_points_to_the_slicer_radiomics_extension():
    missing = [{"distribution": "pyradiomics", "requirement": "pyradiomics>=3.0.1"}]
    assert dependencies.installable(missing, (3, 11)) is None
    message = dependencies.installable(missing, (3, 12))
    assert "SlicerRadiomics" in message and "3.12" in message
    assert dependencies.installable([{"distribution": "torch", "requirement": "torch>=2.0"}], (3, 12)) is None
