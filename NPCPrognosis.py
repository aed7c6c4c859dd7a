"""NPCPrognosis: nasopharyngeal carcinoma prognosis from pretreatment MRI in 3D Slicer.

The module is an adapter: it moves MRML nodes to files and back and calls ``NPCPrognosisLib``; all science is
in the core. Python 3.9 syntax (Slicer 5.8). Nothing heavy (numpy, SimpleITK, torch, PyRadiomics, the core's
stage modules) is imported at load time, so Slicer starts fast and the module can offer to install missing
packages before anything needs them.

Why out of process: segmentation and radiomics of three sequences take minutes and hold the GIL, so running
them in Slicer's process would freeze the GUI (processEvents only between stages) and could not be cancelled
mid-stage. Like SlicerTotalSegmentator and SlicerNNUNet, the logic writes the inputs as temporary NIfTI files,
starts ``PythonSlicer -m NPCPrognosisLib.slicer_support.jobs job.json`` with slicer.util.launchConsoleProcess, polls
it with a QTimer (the button that started it becomes Cancel, which kills the process), and imports the results.
Headless callers (the self-test, the Python console) pass ``waitForCompletion=True`` and get the same job,
same code, synchronously. ``logic.runInProcess = True`` runs the same job in Slicer's process (debugging,
or a Slicer without PythonSlicer).
"""

import contextlib
import functools
import json
import logging
import os
import pathlib
import shutil
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # Slicer's translation layer (5.3+): user-facing strings go through it
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer
    def _(text):
        return text

    def translate(context, text):
        return text

# The demo model and sample patient ship with the core as package data (the demo network once, inside the demo
# bundle); NPCPrognosisLib.resources imports the standard library only, so this costs nothing at load time.
from NPCPrognosisLib.contract import SEQUENCES
from NPCPrognosisLib.resources import DEMO_BUNDLE, DEMO_NETWORK
from NPCPrognosisLib.resources import SAMPLE_CASE as SAMPLE_PATIENT

MODULE_DIR = pathlib.Path(__file__).resolve().parent
RESOURCES = MODULE_DIR / "Resources"
REQUIREMENTS = RESOURCES / "requirements.txt"
SAMPLE_CATEGORY = "NPCPrognosis"
AUTOMATIC_ATTRIBUTE = "NPCPrognosis.AutomaticLabelmapFor"
AUTOMATIC_REFERENCE = "NPCPrognosisAutomaticContours"
#: Segment tag holding the label value (1 = GTVp, 2 = GTVn): set on import, kept when Segment Editor renames.
LABEL_TAG = "NPCPrognosis.Label"
#: The product's terminology context (SNOMED CT codes of GTVp = mass, GTVn = lymph node), loaded into Slicer's
#: Terminologies module the first time contours are imported, so Segment Editor's terminology selector offers it.
TERMINOLOGY_FILE = RESOURCES / "Terminology" / "NPCPrognosis.term.json"
#: Anatomic region of the primary tumour (the context file holds category and type only).
NASOPHARYNX = ("SCT", "71836000", "Nasopharyngeal structure")


@functools.lru_cache(maxsize=1)
def terminologyDocument():
    """The terminology context file, parsed once: its name and its codes are both needed on every import."""
    return json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))


class NPCPrognosisError(RuntimeError):
    """A failure the user can act on; the widget shows its message, never a traceback."""


#
# NPCPrognosis
#


class NPCPrognosis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NPC Prognosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["NPCPrognosis contributors"]
        self.parent.helpText = _(
            "Segments the primary tumour (GTVp) and metastatic nodes (GTVn) of nasopharyngeal carcinoma on "
            "T1W/T2W/contrast-enhanced T1W MRI, extracts radiomics, and combines the Rad-score with clinical "
            "factors in a Cox nomogram: risk score and group, 1/3/5-year survival, nomogram points. "
            "Edit the contours and predict again to see what the edit changed. Research software, not for "
            "clinical use; the shipped demo model and sample patient are SYNTHETIC."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, SimpleITK, PyRadiomics, scikit-survival, PyTorch and MONAI."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """One-click synthetic demo patient (three sequences) in the Sample Data module."""
    import SampleData

    from NPCPrognosisLib.resources import sample_case_files

    files = sample_case_files(SAMPLE_PATIENT)
    if not all(key in files for key in SEQUENCES):
        logging.warning("NPCPrognosis: sample patient files missing in %s; no sample data registered", SAMPLE_PATIENT)
        return
    icon = RESOURCES / "Icons" / "NPCPrognosis.png"
    names = [("t1", "T1W"), ("t2", "T2W"), ("t1c", "CET1W")]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName="NPC-SAMPLE-001",
        thumbnailFileName=str(icon),
        # Shipped with the extension: file URLs are "downloaded" into the cache by urllib like any other.
        uris=[files[key].as_uri() for key, _ in names],
        fileNames=[f"NPC-SAMPLE-001_{key}.nii.gz" for key, _ in names],
        nodeNames=[f"NPC-SAMPLE-001 {title}" for _, title in names],
    )


#
# Parameter node
#


@parameterNodeWrapper
class NPCPrognosisParameterNode:
    """Everything the panel shows, saved with the scene."""

    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    t1cVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    automaticLabelmap: vtkMRMLLabelMapVolumeNode
    featuresTable: vtkMRMLTableNode
    bundlePath: Annotated[pathlib.Path, Default(DEMO_BUNDLE)]
    networkPath: Annotated[pathlib.Path, Default(DEMO_NETWORK)]
    reportDirectory: Annotated[pathlib.Path, Default(pathlib.Path.home() / "NPCPrognosis-reports")]
    tta: Annotated[int, WithinRange(0, 8), Default(0)]
    #: Other modalities' tables for a fusion bundle: "name=path; name=path".
    extraFeatures: Annotated[str, Default("")]
    patientId: Annotated[str, Default("patient")]
    age: Annotated[float, WithinRange(1, 110), Default(50.0)]
    sex: Annotated[str, Choice(["M", "F"]), Default("M")]
    tStage: Annotated[str, Choice(["T1", "T2", "T3", "T4"]), Default("T1")]
    nStage: Annotated[str, Choice(["N0", "N1", "N2", "N3"]), Default("N0")]
    ebvDna: Annotated[float, WithinRange(-1, 1e9), Default(-1.0)]
    rene: Annotated[int, WithinRange(0, 2), Default(0)]
    ldh: Annotated[float, WithinRange(10, 10000), Default(180.0)]
    chemo: Annotated[bool, Default(False)]
    ccnd: Annotated[float, WithinRange(0, 2000), Default(0.0)]
    #: Last prediction (JSON) so results survive a scene save/reload.
    lastResultJson: str


def clinicalForm(parameterNode):
    """The clinical values of the parameter node in the core's field names."""
    return {"age": parameterNode.age, "sex": parameterNode.sex, "t_stage": parameterNode.tStage,
            "n_stage": parameterNode.nStage, "ebv_dna": parameterNode.ebvDna, "rene": parameterNode.rene,
            "ldh": parameterNode.ldh, "chemo": parameterNode.chemo, "ccnd": parameterNode.ccnd}


def setClinicalForm(parameterNode, form):
    parameterNode.age = float(form["age"])
    parameterNode.sex = form["sex"]
    parameterNode.tStage = form["t_stage"]
    parameterNode.nStage = form["n_stage"]
    parameterNode.ebvDna = float(form["ebv_dna"])
    parameterNode.rene = int(form["rene"])
    parameterNode.ldh = float(form["ldh"])
    parameterNode.chemo = bool(form["chemo"])
    parameterNode.ccnd = float(form["ccnd"])


#
# Widget
#


class NPCPrognosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runningButton = None
        self._runningText = ""
        self._doneText = None
        self._toolTips = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NPCPrognosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NPCPrognosisLogic()
        self.logic.progressCallback = self.onProgress
        self.logic.logCallback = self.onLog

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.editButton.connect("clicked(bool)", self.onEdit)
        self.ui.extractButton.connect("clicked(bool)", self.onExtract)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportContoursButton.connect("clicked(bool)", self.onExportContours)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.progressBar.setVisible(False)
        # the .ui's own tooltips, shown again once a disabled button's reason is gone
        self._toolTips = {button: button.toolTip for button in (self.ui.extractButton, self.ui.predictButton)}
        self.initializeParameterNode()

    def cleanup(self):
        self.logic.cancel()
        self.removeObservers()

    def onReload(self):
        """Reload the core library with the module, so an edited NPCPrognosisLib takes effect without a restart."""
        import sys

        for name in [n for n in sys.modules if n == "NPCPrognosisLib" or n.startswith("NPCPrognosisLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t1cVolume:
            self._parameterNode.t1cVolume = self.logic.firstImageVolume()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
            if self._parameterNode.lastResultJson:
                self.showResult(json.loads(self._parameterNode.lastResultJson))

    def _checkCanApply(self, caller=None, event=None):
        if self._runningButton is not None:
            return
        p = self._parameterNode
        haveImages = bool(p and p.t1Volume and p.t2Volume and p.t1cVolume)
        haveSegmentation = bool(haveImages and p.segmentation)
        # A new, empty segmentation can be edited but not used: Extract and Predict need a GTVp segment.
        contoured = bool(p and p.segmentation and self.logic.hasContours(p.segmentation))
        haveContours = haveSegmentation and contoured
        self.ui.segmentButton.enabled = haveImages
        self.ui.editButton.enabled = haveSegmentation
        self.ui.extractButton.enabled = haveContours
        self.ui.predictButton.enabled = haveContours
        self.ui.exportButton.enabled = bool(p and p.lastResultJson)
        self.ui.exportContoursButton.enabled = bool(contoured and p.t1cVolume)
        tip = "" if haveImages else "Select T1W, T2W and CET1W volumes."
        self.ui.segmentButton.toolTip = tip or "Automatic GTVp/GTVn segmentation with the network."
        # a greyed-out Extract or Predict says why
        why = ("Select T1W, T2W and CET1W volumes." if not haveImages else
               "Run Segment, or select the segmentation holding the contours." if not haveSegmentation else
               "The segmentation has no GTVp with voxels: name the primary tumour's segment GTVp (or GTV-P, GTVnx) "
               "and contour it." if not haveContours else "")
        for button, default in self._toolTips.items():
            button.toolTip = why or default

    # ------------------------------------------------------------------ running jobs
    def _run(self, button, action, start, store):
        """Start a job; its button turns into Cancel until it finishes.

        ``action`` names the packages the job needs (only those are installed first).

        ``start(onFinished)`` launches the logic call; ``store(output)`` keeps a successful result (parameter node,
        panel) before the button is restored.
        """
        if self._runningButton is not None:
            if button is self._runningButton:
                self.logic.cancel()
            return
        try:
            if not self.logic.ensureDependencies(action, askConfirmation=True):
                self.ui.statusLabel.text = _("Missing Python packages were not installed; nothing was run.")
                return
        except NPCPrognosisError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("NPCPrognosis: Python packages"))
            return
        self._runningButton = button
        self._runningText = button.text
        self._doneText = None
        button.text = _("Cancel")
        for other in (self.ui.segmentButton, self.ui.editButton, self.ui.extractButton, self.ui.predictButton,
                      self.ui.exportButton, self.ui.exportContoursButton):
            if other is not button:
                other.enabled = False
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        def finished(output, error):
            if output is not None and error is None:
                try:
                    store(output)
                except Exception as exc:  # noqa: BLE001 - shown to the user, logged with traceback
                    output, error = None, exc
            self._finished(output, error)

        try:
            start(finished)
        except Exception as exc:  # noqa: BLE001 - shown to the user, logged with traceback
            self._finished(None, exc)

    def _finished(self, output, error):
        try:
            if self._runningButton is not None:
                self._runningButton.text = self._runningText
        finally:  # whatever happens, the panel is released
            self._runningButton = None
            self.ui.progressBar.setVisible(False)
            self._checkCanApply()
        if error is None:
            self.ui.statusLabel.text = self._doneText or _("Done.")
            return
        if isinstance(error, NPCPrognosisCancelled):
            self.ui.statusLabel.text = _("Cancelled.")
            return
        logging.error("NPCPrognosis: %s", error, exc_info=error if isinstance(error, BaseException) else None)
        self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
        slicer.util.errorDisplay(str(error), windowTitle=_("NPCPrognosis"))

    def onLog(self, text):
        """The job's log, streamed into the collapsible Log area."""
        self.ui.logTextEdit.appendPlainText(text.rstrip("\n"))

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def _volumes(self):
        p = self._parameterNode
        return {"t1": p.t1Volume, "t2": p.t2Volume, "t1c": p.t1cVolume}

    def onSegment(self):
        p = self._parameterNode

        def store(segmentation):
            from NPCPrognosisLib.slicer_support.formatting import format_warnings

            p.segmentation = segmentation
            p.automaticLabelmap = self.logic.automaticLabelmapFor(segmentation)
            warnings = json.loads(segmentation.GetAttribute("NPCPrognosis.SegmentResult") or "{}").get("warnings")
            self.ui.warningsTextEdit.plainText = format_warnings(warnings or [])
            if warnings:
                self._doneText = _("Done, with {count} warning(s): see Warnings.").format(count=len(warnings))

        self._run(self.ui.segmentButton, "segment", lambda onFinished: self.logic.segment(
            self._volumes(), str(p.networkPath), segmentationNode=p.segmentation, tta=p.tta, patientId=p.patientId,
            waitForCompletion=False, onFinished=onFinished), store)

    def onEdit(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not open the Segment Editor."), waitCursor=True):
            self.logic.openSegmentEditor(p.segmentation, p.t1cVolume)

    def onExtract(self):
        p = self._parameterNode

        def store(table):
            p.featuresTable = table
            self.logic.showTable(table)

        self._run(self.ui.extractButton, "extract", lambda onFinished: self.logic.extractFeatures(
            self._volumes(), p.segmentation, str(p.bundlePath), tableNode=p.featuresTable, patientId=p.patientId,
            waitForCompletion=False, onFinished=onFinished), store)

    def onPredict(self):
        p = self._parameterNode
        from NPCPrognosisLib.slicer_support.form import parse_clinical_form

        try:
            parse_clinical_form(clinicalForm(p), p.patientId)
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("NPCPrognosis: clinical form"))
            return

        def store(result):
            p.lastResultJson = json.dumps(result)
            self.showResult(result)
            self.logic.showSurvivalPlot(result["curves"], title=result["prediction"]["endpoint"].upper())

        action = self.logic.predictAction(str(p.bundlePath), p.segmentation)
        self._run(self.ui.predictButton, action, lambda onFinished: self.logic.predict(
            self._volumes(), p.segmentation, str(p.bundlePath), clinicalForm(p), patientId=p.patientId,
            extraFeatures=p.extraFeatures, waitForCompletion=False, onFinished=onFinished), store)

    def onExport(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not write the report."), waitCursor=True):
            paths = self.logic.exportReport(json.loads(p.lastResultJson), str(p.reportDirectory), p.t1cVolume,
                                            p.segmentation)
            self.ui.statusLabel.text = _("Report written: {path}").format(path=paths["html"])

    def onExportContours(self):
        p = self._parameterNode

        def store(written):
            from NPCPrognosisLib.slicer_support.formatting import format_warnings

            paths = [path for path in (written["seg"], written["rtstruct"]) if path]
            self._doneText = _("Contours written: {paths}").format(paths=", ".join(paths))
            if written["warnings"]:
                self.ui.warningsTextEdit.plainText = format_warnings(written["warnings"])
                self._doneText += " " + _("({count} warning(s): see Warnings.)").format(count=len(written["warnings"]))

        self._run(self.ui.exportContoursButton, "contours", lambda onFinished: self.logic.exportContours(
            p.segmentation, p.t1cVolume, str(p.reportDirectory), patientId=p.patientId, waitForCompletion=False,
            onFinished=onFinished), store)

    def onLoadSample(self):
        nodes, clinical = None, None
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample patient."), waitCursor=True):
            nodes, clinical = self.logic.loadSamplePatient()
        if nodes is None:  # the error was shown
            return
        p = self._parameterNode
        p.t1Volume, p.t2Volume, p.t1cVolume = nodes["t1"], nodes["t2"], nodes["t1c"]
        p.patientId = "NPC-SAMPLE-001"
        if clinical:
            setClinicalForm(p, clinical)

    def showResult(self, result):
        from NPCPrognosisLib.slicer_support import formatting as h

        prediction = result["prediction"]
        self.ui.riskLabel.text = h.format_risk(prediction, result.get("uncertainty"))
        self.ui.groupLabel.text = h.format_group(prediction)
        self.ui.survivalLabel.text = "\n".join(h.format_survival(prediction) + h.format_binary(prediction)
                                               + h.format_fusion(prediction))
        rows = h.format_nomogram_points(prediction["nomogram_points"])
        table = self.ui.nomogramTableWidget
        table.setRowCount(len(rows))
        for i, (name, points) in enumerate(rows):
            table.setItem(i, 0, qt.QTableWidgetItem(name))
            table.setItem(i, 1, qt.QTableWidgetItem(points))
        self.ui.benefitLabel.text = h.format_benefit(result.get("benefit", {}))
        change = result.get("contour_change")
        self.ui.contourChangeLabel.text = "\n".join(h.format_contour_change(change)) if change else (
            "Contours not edited (or no automatic contours to compare with).")
        self.ui.warningsTextEdit.plainText = h.format_warnings(prediction.get("warnings", []))


class NPCPrognosisCancelled(NPCPrognosisError):
    """The user cancelled a running job."""


#
# Job runner
#


class NPCPrognosisJobRunner:
    """Runs one core job (see NPCPrognosisLib.slicer_support.jobs.run_job) in PythonSlicer, or in process."""

    POLL_MS = 500

    def __init__(self):
        self.inProcess = False
        self._process = None
        self._timer = None
        self._cancelRequested = False
        self._job = None
        self._onDone = None
        self._onProgress = None
        self._onLog = None
        self._logOffset = 0

    def isRunning(self):
        return self._process is not None

    @staticmethod
    def _pythonSlicer():
        path = shutil.which("PythonSlicer")
        if not path:
            raise NPCPrognosisError("PythonSlicer was not found next to Slicer; set logic.runInProcess = True")
        return path

    def _writeJob(self, job):
        outDir = pathlib.Path(job["out_dir"])
        outDir.mkdir(parents=True, exist_ok=True)
        for stale in ("result.json", "error.json", "progress.json"):
            if (outDir / stale).exists():
                (outDir / stale).unlink()
        jobPath = outDir / "job.json"
        jobPath.write_text(json.dumps(dict(job, log_file=str(outDir / "job.log")), indent=1))
        return jobPath

    def _launch(self, job):
        """Start the job in a process group (POSIX: a new session) of its own, so Cancel can end all of it.

        PythonSlicer is a launcher that starts the real Python as its child: killing the launcher alone leaves
        the job running. cwd = module folder, so `-m NPCPrognosisLib...` imports this extension's core; output
        goes to a log file (the job redirects its descriptors), so the pipe cannot fill up and block the process.
        """
        import subprocess

        jobPath = self._writeJob(job)
        args = [self._pythonSlicer(), "-m", "NPCPrognosisLib.slicer_support.jobs", str(jobPath)]
        env = slicer.util.startupEnvironment() if getattr(slicer, "app", None) is not None else None
        if os.name == "nt":
            info = subprocess.STARTUPINFO()
            info.dwFlags = 1  # STARTF_USESHOWWINDOW: no console window
            info.wShowWindow = 0
            return subprocess.Popen(args, env=env, cwd=str(MODULE_DIR), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, universal_newlines=True, startupinfo=info,
                                    creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
        return subprocess.Popen(args, env=env, cwd=str(MODULE_DIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, start_new_session=True)

    @staticmethod
    def _collect(job, returncode, output=""):
        outDir = pathlib.Path(job["out_dir"])
        if (outDir / "error.json").exists():
            raise NPCPrognosisError(json.loads((outDir / "error.json").read_text())["error"])
        if returncode != 0 or not (outDir / "result.json").exists():
            logPath = outDir / "job.log"
            tail = logPath.read_text()[-2000:] if logPath.exists() else (output or "")[-2000:]
            raise NPCPrognosisError(f"{job['action']} failed (exit code {returncode}):\n{tail}")
        return json.loads((outDir / "result.json").read_text())

    def runAndWait(self, job, onProgress=None):
        if self.inProcess:
            return self._runInProcess(job, onProgress)
        process = self._launch(job)
        output, _ = process.communicate()
        return self._collect(job, process.returncode, output)

    def _runInProcess(self, job, onProgress):
        from NPCPrognosisLib.slicer_support import jobs

        self._cancelRequested = False

        def progress(fraction, message):
            if onProgress:
                onProgress(fraction, message)
            slicer.app.processEvents()

        try:
            return jobs.run_job(job, progress=progress, cancelled=lambda: self._cancelRequested)
        except jobs.JobCancelled:
            raise NPCPrognosisCancelled("cancelled") from None
        except ValueError as exc:  # InputError is a ValueError: a message for the user
            raise NPCPrognosisError(str(exc)) from None

    def start(self, job, onDone, onProgress=None, onLog=None):
        """Start without blocking; onDone(result, error) is called from the Qt event loop."""
        if self.isRunning():
            raise NPCPrognosisError("another NPCPrognosis job is still running")
        if self.inProcess:
            try:
                result = self._runInProcess(job, onProgress)
            except Exception as exc:  # noqa: BLE001 - reported through onDone like an out-of-process failure
                onDone(None, exc)
                return
            onDone(result, None)
            return
        self._job, self._onDone, self._onProgress, self._onLog = job, onDone, onProgress, onLog
        self._logOffset = 0
        self._cancelRequested = False
        self._process = self._launch(job)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self):
        progressPath = pathlib.Path(self._job["out_dir"]) / "progress.json"
        if self._onProgress and progressPath.exists():
            try:
                state = json.loads(progressPath.read_text())
                self._onProgress(state["fraction"], state["message"])
            except (ValueError, KeyError, OSError):
                pass  # being replaced right now; read it at the next tick
        self._streamLog()
        if self._process.poll() is None and not self._cancelRequested:
            return
        self._timer.stop()
        process, job, onDone = self._process, self._job, self._onDone
        self._process = None
        if self._cancelRequested:
            self._kill(process)
            process.communicate()
            onDone(None, NPCPrognosisCancelled("cancelled"))
            return
        output = process.stdout.read() if process.stdout else ""
        try:
            result = self._collect(job, process.returncode, output)
        except NPCPrognosisError as exc:
            onDone(None, exc)
            return
        onDone(result, None)

    def _streamLog(self):
        """New lines of the job's log file since the last tick, to the log callback."""
        logPath = pathlib.Path(self._job["out_dir"]) / "job.log"
        if self._onLog is None or not logPath.exists():
            return
        with open(logPath, encoding="utf-8", errors="replace") as handle:
            handle.seek(self._logOffset)
            text = handle.read()
            self._logOffset = handle.tell()
        if text:
            self._onLog(text)

    def cancel(self):
        """Stop the job now (Cancel, scene close, quit): the timer may never fire again once Slicer quits."""
        self._cancelRequested = True
        if self._process is not None:
            self._kill(self._process)

    @staticmethod
    def _kill(process):
        """End the job with every process it started (its whole process group; on Windows its process tree)."""
        import signal
        import subprocess

        if process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group the job leads (start_new_session)
            except ProcessLookupError:
                pass
        process.kill()


#
# Logic
#


class NPCPrognosisLogic(ScriptedLoadableModuleLogic):
    """Headless API: takes nodes and plain values, returns nodes and dicts. No science here."""

    def __init__(self, scene=None, segmentationsLogic=None, workDirectory=None):
        """``scene`` and ``segmentationsLogic`` default to Slicer's own; tests pass a scene and a
        vtkSlicerSegmentationsModuleLogic of their own (slicer-core), so every node operation runs on real MRML."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.runner = NPCPrognosisJobRunner()
        self.progressCallback = None
        self.logCallback = None
        self._scene = scene
        self._segmentationsLogic = segmentationsLogic
        self._workRoot = workDirectory

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def segmentationsLogic(self):
        if self._segmentationsLogic is None:
            return slicer.modules.segmentations.logic()
        return self._segmentationsLogic

    @property
    def runInProcess(self):
        return self.runner.inProcess

    @runInProcess.setter
    def runInProcess(self, value):
        self.runner.inProcess = bool(value)

    def getParameterNode(self):
        return NPCPrognosisParameterNode(super().getParameterNode())

    def cancel(self):
        self.runner.cancel()

    # ------------------------------------------------------------------ dependencies
    def missingDependencies(self, action=None):
        from NPCPrognosisLib.slicer_support.dependencies import dependencies_for, missing_dependencies

        return missing_dependencies(dependencies_for(action))

    def predictAction(self, bundlePath, segmentationNode=None):
        """Which packages Predict needs: the network's too when the bundle ships one (deep score, automatic
        contours)."""
        bundle = pathlib.Path(bundlePath or DEMO_BUNDLE)
        return "predict_with_network" if (bundle / "network").is_dir() else "predict"

    _installing = False  # one pip at a time, whichever panel or console asked

    def ensureDependencies(self, action=None, askConfirmation=True):
        """Install what ``action`` is missing after one confirmation; False when the user declined.

        Needs no network when everything is present (the self-test runs offline). Refuses a second installation
        while one runs, and on Slicer's Python 3.12+ points to the SlicerRadiomics extension for PyRadiomics.
        """
        import sys

        from NPCPrognosisLib.slicer_support import dependencies as h

        missing = self.missingDependencies(action)
        if not missing:
            return True
        if NPCPrognosisLogic._installing:
            raise NPCPrognosisError("Python packages are being installed already; wait for it to finish.")
        instead = h.installable(missing, sys.version_info[:2])
        if instead:
            raise NPCPrognosisError(instead)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(h.install_question(missing)):
            return False
        names = ", ".join(m["distribution"] for m in missing)
        NPCPrognosisLogic._installing = True
        try:
            self._install(missing)
        except Exception as exc:  # noqa: BLE001 - pip failures come in many types
            if not self._indexReachable():
                raise NPCPrognosisError(h.OFFLINE_MESSAGE.format(packages=names)) from None
            raise NPCPrognosisError(f"Could not install {names}: {exc}") from None
        finally:
            NPCPrognosisLogic._installing = False
        still = self.missingDependencies(action)
        if still:
            raise NPCPrognosisError("Still missing after installation: " + ", ".join(m["requirement"] for m in still)
                                    + ". Restart Slicer and try again.")
        return True

    @staticmethod
    def _install(missing):
        rest = [m["requirement"] for m in missing if m["distribution"] != "torch"]
        torch = [m["requirement"] for m in missing if m["distribution"] == "torch"]
        if torch:
            try:
                import PyTorchUtils  # the PyTorch extension picks the CUDA/CPU build that fits this computer
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                 torchVersionRequirement=">=2.0") is None:
                    raise NPCPrognosisError("PyTorch could not be installed by the PyTorch extension")
            else:
                slicer.util.pip_install(torch[0])
        # One requirement per call: older Slicer passes the string to pip as a single argument. On Slicer 5.12+
        # slicer.util.pip_install delegates to slicer.packaging (progress dialog, restart hint).
        for requirement in rest:
            slicer.util.pip_install(requirement)

    @staticmethod
    def _indexReachable():
        import socket

        try:
            socket.create_connection(("pypi.org", 443), timeout=3).close()
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------ nodes <-> files
    def _workDirectory(self, name):
        root = pathlib.Path(self._workRoot) if self._workRoot else pathlib.Path(slicer.app.temporaryPath)
        folder = root / "NPCPrognosis" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _newJobDirectory(self):
        """A new job folder; those a killed or crashed Slicer left are removed first (the core says which)."""
        from NPCPrognosisLib.slicer_support import jobs

        return jobs.new_job_folder(self._workDirectory("jobs"))

    @staticmethod
    def _endJobDirectory(folder):
        from NPCPrognosisLib.slicer_support import jobs

        jobs.end_job_folder(folder)

    @contextlib.contextmanager
    def _jobInputs(self):
        """A new job folder, removed again when writing the inputs into it fails (a volume under a transform, no
        GTVp segment): the patient's images already written must not stay in Slicer's temporary folder."""
        folder = self._newJobDirectory()
        try:
            yield folder
        except BaseException:
            self._endJobDirectory(folder)
            raise

    def firstImageVolume(self):
        """The first plain scalar volume of the scene, as the CET1W to preselect: label maps, vector and other
        volume subclasses also answer to vtkMRMLScalarVolumeNode, and a label map would be segmented as an image."""
        nodes = self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetClassName() == "vtkMRMLScalarVolumeNode":
                return node
        return None

    @staticmethod
    def _checkNotTransformed(volumeNode):
        """A volume under a transform that is not hardened would be written without it, while the segmentation
        export honours it: the contours would land elsewhere on the image."""
        if volumeNode.GetParentTransformNode() is not None:
            raise NPCPrognosisError(
                f"{volumeNode.GetName()} is under the transform {volumeNode.GetParentTransformNode().GetName()}. "
                "Harden the transform (Data module: right-click > Harden transform) or remove it, then try again.")

    @staticmethod
    def sitkFromVolumeNode(volumeNode):
        """The volume as a SimpleITK image with its exact geometry (RAS node -> LPS image; spacing, origin,
        direction including oblique and flipped axes). Refuses a volume under a non-hardened transform."""
        import numpy as np
        import SimpleITK as sitk

        NPCPrognosisLogic._checkNotTransformed(volumeNode)
        image = sitk.GetImageFromArray(np.ascontiguousarray(slicer.util.arrayFromVolume(volumeNode)))
        ijkToRas = NPCPrognosisLogic._ijkToRas(volumeNode)
        rasToLps = np.diag([-1.0, -1.0, 1.0])
        axes = rasToLps @ ijkToRas[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        unit = axes / spacing
        if np.abs(unit.T @ unit - np.eye(3)).max() > 1e-4:
            # a hardened affine (or sheared) transform: image files hold right-angled axes only, and NIfTI squares
            # them up without a word, moving voxels by up to millimetres
            raise NPCPrognosisError(
                f"{volumeNode.GetName()}'s voxel axes are not at right angles (a hardened affine or shearing "
                "transform?). Resample it onto a regular grid first (Resample Scalar/Vector/DWI Volume, or Crop "
                "Volume with interpolation), then select the resampled volume.")
        image.SetSpacing([float(v) for v in spacing])
        image.SetDirection([float(v) for v in unit.ravel()])
        image.SetOrigin([float(v) for v in rasToLps @ ijkToRas[:3, 3]])
        return image

    @staticmethod
    def _ijkToRas(volumeNode):
        """The node's voxel-to-RAS matrix as a 4 x 4 array."""

        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return NPCPrognosisLogic._asArray(matrix)

    @staticmethod
    def _asArray(matrix):
        """A vtkMatrix4x4 as a 4 x 4 array."""
        import numpy as np

        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    @staticmethod
    def updateVolumeNodeFromSitk(volumeNode, image):
        """Voxels and geometry of a SimpleITK image into a volume node (LPS image -> RAS node)."""
        import numpy as np
        import SimpleITK as sitk

        slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
        lpsToRas = np.diag([-1.0, -1.0, 1.0])
        direction = np.array(image.GetDirection()).reshape(3, 3)
        axes = lpsToRas @ direction @ np.diag(image.GetSpacing())
        origin = lpsToRas @ np.array(image.GetOrigin())
        matrix = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, float(axes[r, c]))
            matrix.SetElement(r, 3, float(origin[r]))
        volumeNode.SetIJKToRASMatrix(matrix)
        return volumeNode

    def _writeVolume(self, volumeNode, path):
        import SimpleITK as sitk

        sitk.WriteImage(self.sitkFromVolumeNode(volumeNode), str(path), True)
        return str(path)

    def _writeVolumes(self, volumes, folder):
        missing = [k for k in SEQUENCES if not volumes.get(k)]
        if missing:
            raise NPCPrognosisError(f"select the {', '.join(missing)} volume(s)")
        return {key: self._writeVolume(volumes[key], folder / f"{key}.nii.gz") for key in SEQUENCES}

    def _removeWithDisplay(self, node):
        """Remove a scratch node with the display, storage and colour nodes that were made for it."""
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            return
        extra = []
        for i in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                extra.append(display)
                colour = display.GetColorNode() if hasattr(display, "GetColorNode") else None
                if colour is not None and colour.GetName().endswith("_ColorTable"):
                    extra.append(colour)
        if node.GetStorageNode() is not None:
            extra.append(node.GetStorageNode())
        self.scene.RemoveNode(node)
        for other in extra:
            if self.scene.GetNodeByID(other.GetID()) is not None:
                self.scene.RemoveNode(other)

    def _nodeIds(self, className):
        nodes = self.scene.GetNodesByClass(className)
        return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}

    def contourSegments(self, segmentationNode):
        """Which segments are GTVp and which GTVn: by name, with the core's rule for ROI and SEG names (GTV-P, GTVnx,
        GTVn_L, GTVnd_R, ...); a segment whose name is neither keeps the label tag set on import, so renaming an
        automatic segment keeps it. A structure drawn in several segments (GTVn_L and GTVn_R) is their union.

        Returns ({label: [segmentIds]}, [names of segments that are neither, which export leaves out]).
        """
        from NPCPrognosisLib.contract import SEGMENTS
        from NPCPrognosisLib.io.dicom_contours import parse_roi_map, roi_structure

        segmentation = segmentationNode.GetSegmentation()
        mapping = parse_roi_map(None)
        labels = {segment["name"]: segment["label"] for segment in SEGMENTS}
        byLabel, skipped = {}, []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            structure = roi_structure(segment.GetName(), mapping)
            tag = vtk.reference("")
            label = labels.get(structure)
            if label is None and segment.GetTag(LABEL_TAG, tag) and str(tag).isdigit():
                label = int(str(tag))
            if label in labels.values():
                byLabel.setdefault(label, []).append(segmentId)
            else:
                skipped.append(segment.GetName())
        return byLabel, skipped

    def hasContours(self, segmentationNode):
        """A GTVp segment exists (by name or tag) and holds at least one voxel."""
        from NPCPrognosisLib.contract import SEGMENTS

        byLabel, _ = self.contourSegments(segmentationNode)
        return any(self._segmentHasVoxels(segmentationNode, segmentId)
                   for segmentId in byLabel.get(SEGMENTS[0]["label"], []))

    @staticmethod
    def _segmentHasVoxels(segmentationNode, segmentId):
        from vtk.util.numpy_support import vtk_to_numpy

        segmentation = segmentationNode.GetSegmentation()
        segment = segmentation.GetSegment(segmentId)
        binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if segment.GetRepresentation(binary) is None:
            # contours loaded as closed surfaces (STL, OBJ) or planar contours (an RTSTRUCT through SlicerRT) have no
            # labelmap until converted, which the export does anyway; without it they would read as no contours
            segmentation.CreateRepresentation(binary)
        image = segment.GetRepresentation(binary)
        if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
            return False  # an empty segment has no voxels to hold
        return bool((vtk_to_numpy(image.GetPointData().GetScalars()) == segment.GetLabelValue()).any())

    def exportLabelmap(self, segmentationNode, referenceVolumeNode, warnings=None):
        """GTVp -> 1, GTVn -> 2 on the reference volume's grid, as a (temporary) labelmap node.

        Segments that are neither GTVp nor GTVn are left out and named in ``warnings`` (a list), so a segment
        added during editing is never dropped silently.
        """
        from NPCPrognosisLib.contract import SEGMENTS

        self._checkNotTransformed(referenceVolumeNode)
        byLabel, skipped = self.contourSegments(segmentationNode)
        gtvp = SEGMENTS[0]["label"]
        if gtvp not in byLabel:
            contents = segmentationNode.GetSegmentation()
            names = [contents.GetNthSegment(i).GetName() for i in range(contents.GetNumberOfSegments())]
            raise NPCPrognosisError(f"{segmentationNode.GetName()} has no GTVp segment (its segments: "
                                    f"{', '.join(names) or 'none'}). Name the primary tumour's segment GTVp.")
        if skipped and warnings is not None:
            warnings.append(f"segment(s) {', '.join(skipped)} of {segmentationNode.GetName()} are neither GTVp nor "
                            "GTVn and were not used; rename them GTVp or GTVn to include them")
        if warnings is not None:
            warnings.extend(self._gridWarnings(segmentationNode, referenceVolumeNode, byLabel))
        labelmapNode = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NPCPrognosis export")
        for segment in SEGMENTS:
            # One segment at a time so each keeps its label value whatever order the segments are in.
            if segment["label"] not in byLabel:
                continue
            single = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NPCPrognosis export part")
            ids = vtk.vtkStringArray()
            for segmentId in byLabel[segment["label"]]:  # a structure in several segments: their union
                ids.InsertNextValue(segmentId)
            colourTables = self._nodeIds("vtkMRMLColorTableNode")
            self.segmentationsLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, single, referenceVolumeNode)
            for nodeId in self._nodeIds("vtkMRMLColorTableNode") - colourTables:  # "<segmentation>_ColorTable"
                self.scene.RemoveNode(self.scene.GetNodeByID(nodeId))
            part = slicer.util.arrayFromVolume(single)
            if labelmapNode.GetImageData() is None:
                labelmapNode.CopyOrientation(single)
                slicer.util.updateVolumeFromArray(labelmapNode, (part > 0).astype("uint8") * segment["label"])
            else:
                merged = slicer.util.arrayFromVolume(labelmapNode)
                shared = int(((part > 0) & (merged > 0)).sum())
                if shared and warnings is not None:
                    spacing = referenceVolumeNode.GetSpacing()
                    warnings.append(f"{shared} voxels ({shared * spacing[0] * spacing[1] * spacing[2] / 1000.0:.2f} "
                                    f"mL) of {segmentationNode.GetName()} lie in both GTVp and GTVn: they count as "
                                    "GTVp; erase them from one segment if they are not")
                merged[(part > 0) & (merged == 0)] = segment["label"]
                slicer.util.arrayFromVolumeModified(labelmapNode)
            self._removeWithDisplay(single)
        if not (slicer.util.arrayFromVolume(labelmapNode) == gtvp).any():
            self._removeWithDisplay(labelmapNode)
            raise NPCPrognosisError(f"the GTVp of {segmentationNode.GetName()} has no voxel inside "
                                    f"{referenceVolumeNode.GetName()}. Contour the primary tumour on that volume.")
        return labelmapNode

    def _gridWarnings(self, segmentationNode, referenceVolumeNode, byLabel):
        """A warning for each used segment whose voxels do not lie on the reference volume's voxels.

        Such a segment (drawn on another series, or oversampled in Segment Editor) is resampled onto the reference
        by the export, nearest voxel, which moves its border by up to half a voxel of the coarser grid, and the
        features then describe a contour the radiologist did not draw exactly; it is said, not refused.
        """
        import numpy as np

        def voxels(item):
            return " x ".join(f"{v:.2g}" for v in item.GetSpacing())

        toReference = np.linalg.inv(self._ijkToRas(referenceVolumeNode))
        binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        contents = segmentationNode.GetSegmentation()
        moved = []
        for segmentIds in byLabel.values():
            for segmentId in segmentIds:
                image = contents.GetSegment(segmentId).GetRepresentation(binary)
                if image is None or image.IsEmpty():
                    continue
                matrix = vtk.vtkMatrix4x4()
                image.GetImageToWorldMatrix(matrix)
                inReference = toReference @ self._asArray(matrix)
                offset = inReference[:3, 3]
                if not (np.allclose(inReference[:3, :3], np.eye(3), atol=1e-4)
                        and np.allclose(offset, np.round(offset), atol=1e-3)):
                    moved.append(f"{contents.GetSegment(segmentId).GetName()} ({voxels(image)} mm voxels)")
        if not moved:
            return []
        return [f"segment(s) {', '.join(moved)} of {segmentationNode.GetName()} do not lie on the voxels of "
                f"{referenceVolumeNode.GetName()} ({voxels(referenceVolumeNode)} mm): they were resampled onto it, "
                "which moves their borders by up to half a voxel; check them on that volume, or draw them on it"]

    def _writeSegmentation(self, segmentationNode, referenceVolumeNode, path, warnings=None):
        """The segmentation exported once onto the reference grid: (path of the label file written, its labels as an
        array), so a job's mask file and the labels compared with the automatic contours are one export."""
        labelmapNode = self.exportLabelmap(segmentationNode, referenceVolumeNode, warnings)
        try:
            return self._writeVolume(labelmapNode, path), slicer.util.arrayFromVolume(labelmapNode).copy()
        finally:
            self._removeWithDisplay(labelmapNode)

    def terminologyContext(self):
        """Name of the product's terminology context, loaded once into Slicer's Terminologies logic.

        Found through the segmentations logic, as Slicer's import finds it, so one loaded context serves both.
        """
        terminologies = self.segmentationsLogic.GetModuleLogic("Terminologies")
        if terminologies is None:
            raise NPCPrognosisError(_("Slicer's Terminologies module is not available: contours cannot be imported "
                                      "with their SNOMED CT codes. Enable the Terminologies module and restart."))
        context = terminologyDocument()["SegmentationCategoryTypeContextName"]
        loaded = vtk.vtkStringArray()
        terminologies.GetLoadedTerminologyNames(loaded)
        if context not in {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}:
            if terminologies.LoadTerminologyFromFile(str(TERMINOLOGY_FILE)) != context:
                raise NPCPrognosisError(_("The terminology file {path} could not be loaded.").format(
                    path=TERMINOLOGY_FILE))
        return context

    def _labelColorTable(self):
        """One transient colour table carrying each label's name, colour and SNOMED CT terminology.

        The import reads all three from it in a single call (what Slicer does for a labelmap loaded with a colour
        table); it is removed right after, so nothing but the segmentation is left in the scene.
        """
        from NPCPrognosisLib.contract import SEGMENTS

        codes = terminologyDocument()["SegmentationCodes"]["Category"]
        entries = {entry["3dSlicerLabel"]: (category, entry) for category in codes for entry in category["Type"]}
        table = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "NPCPrognosis labels")
        table.SetTypeToUser()
        table.SetHideFromEditors(True)
        table.SetSaveWithScene(False)
        table.SetNumberOfColors(1 + max(s["label"] for s in SEGMENTS))
        table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for segment in SEGMENTS:
            table.SetColor(segment["label"], segment["name"], *segment["color"], 1.0)
            # Slicer < 5.10: colour tables carry no terminology; the import then takes each segment's entry from
            # the context by its 3dSlicerLabel (GTVp, GTVn), without the anatomic region.
            if hasattr(table, "SetTerminology"):
                category, entry = entries[segment["name"]]
                region = NASOPHARYNX if segment["name"] == "GTVp" else ("", "", "")
                table.SetTerminology(
                    segment["label"],
                    category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"],
                    entry["CodingSchemeDesignator"], entry["CodeValue"], entry["CodeMeaning"], "", "", "", *region)
        return table

    def importSegmentation(self, maskPath, referenceVolumeNode, segmentationNode=None, keepAutomaticCopy=True):
        """Label file (1 = GTVp, 2 = GTVn) -> segmentation node with named, coloured, tagged segments over the CET1W.

        One import call reads each segment's name, colour and SNOMED CT terminology from a transient colour table
        (:meth:`_labelColorTable`); each segment then gets a label tag that survives renaming in Segment Editor.
        No colour table or scratch labelmap is left in the scene (only the hidden automatic copy, when kept, for
        the correction loop).
        """
        import numpy as np
        import SimpleITK as sitk

        from NPCPrognosisLib.contract import SEGMENTS

        context = self.terminologyContext()
        labelmapNode = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NPCPrognosis import")
        self.updateVolumeNodeFromSitk(labelmapNode, sitk.ReadImage(str(maskPath)))
        if segmentationNode is None:
            segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "NPC contours")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        colorTable = self._labelColorTable()
        try:
            if labelmapNode.GetDisplayNode() is None:
                labelmapNode.SetAndObserveDisplayNodeID(
                    self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode").GetID())
            labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
            imported = self.segmentationsLogic.ImportLabelmapToSegmentationNodeWithTerminology(
                labelmapNode, segmentationNode, context)
        finally:
            for i in reversed(range(labelmapNode.GetNumberOfDisplayNodes())):
                self.scene.RemoveNode(labelmapNode.GetNthDisplayNode(i))
            self.scene.RemoveNode(colorTable)
        present = sorted(int(v) for v in np.unique(slicer.util.arrayFromVolume(labelmapNode)) if v > 0)
        if not imported or segmentation.GetNumberOfSegments() != len(present):
            self._removeWithDisplay(labelmapNode)
            raise NPCPrognosisError(_("The contours in {path} could not be imported as a segmentation.").format(
                path=maskPath))
        known = {s["label"] for s in SEGMENTS}
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            if segment.GetLabelValue() in known:
                segment.SetTag(LABEL_TAG, str(segment.GetLabelValue()))
        display = segmentationNode.GetDisplayNode()
        if display is not None:
            display.SetOpacity2DFill(0.35)
        if getattr(slicer, "app", None) is not None and self._scene is None:
            slicer.util.setSliceViewerLayers(background=referenceVolumeNode, fit=True)
        if keepAutomaticCopy:
            self._keepAutomaticCopy(labelmapNode, segmentationNode)
        else:
            self._removeWithDisplay(labelmapNode)
        return segmentationNode

    def _keepAutomaticCopy(self, labelmapNode, segmentationNode):
        """The automatic contours as a hidden labelmap, for the Dice/volume/risk change after editing.

        Linked both ways (attribute on the labelmap, node reference from the segmentation), so the link is saved
        with the scene and each segmentation has its own baseline.
        """
        old = self.automaticLabelmapFor(segmentationNode)
        if old is not None and old is not labelmapNode:
            self._removeWithDisplay(old)
        for i in reversed(range(labelmapNode.GetNumberOfDisplayNodes())):
            display = labelmapNode.GetNthDisplayNode(i)
            if display is not None:
                self.scene.RemoveNode(display)
        labelmapNode.SetName(f"{segmentationNode.GetName()} automatic (hidden)")
        labelmapNode.SetHideFromEditors(True)
        if labelmapNode.GetStorageNode() is None:
            labelmapNode.AddDefaultStorageNode()  # saved with the scene, so the baseline survives a reload
        labelmapNode.SetAttribute(AUTOMATIC_ATTRIBUTE, segmentationNode.GetID())
        segmentationNode.SetNodeReferenceID(AUTOMATIC_REFERENCE, labelmapNode.GetID())

    def automaticLabelmapFor(self, segmentationNode):
        """This segmentation's own automatic contours (None when it never had any)."""
        if segmentationNode is None:
            return None
        node = segmentationNode.GetNodeReference(AUTOMATIC_REFERENCE)
        if node is not None:
            return node
        nodes = self.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetAttribute(AUTOMATIC_ATTRIBUTE) == segmentationNode.GetID():
                return node
        return None

    # ------------------------------------------------------------------ actions
    def _runJob(self, job, finish, waitForCompletion, onFinished):
        """Run a job, then ``finish(result)`` turns its files into nodes; sync returns, async calls back.

        The job folder (inputs written from the scene, outputs of the core) is removed once the result is in the
        scene or the job failed: nothing accumulates under Slicer's temporary folder.
        """
        folder = pathlib.Path(job["out_dir"])

        def finishAndClean(result):
            try:
                return finish(result)
            finally:
                self._endJobDirectory(folder)

        if waitForCompletion:
            try:
                result = self.runner.runAndWait(job, self.progressCallback)
            except BaseException:
                self._endJobDirectory(folder)
                raise
            return finishAndClean(result)

        def done(result, error):
            if error is not None:
                self._endJobDirectory(folder)
                onFinished(None, error)
                return
            try:
                output = finishAndClean(result)
            except Exception as exc:  # noqa: BLE001 - reported to the widget
                onFinished(None, exc)
                return
            onFinished(output, None)

        self.runner.start(job, done, self.progressCallback, self.logCallback)
        return None

    def segment(self, volumes, networkPath, segmentationNode=None, tta=0, patientId="patient",
                waitForCompletion=True, onFinished=None):
        """GTVp/GTVn segmentation of the three sequences -> segmentation node (automatic copy kept hidden)."""
        network = pathlib.Path(networkPath or DEMO_NETWORK)
        if not network.is_dir():
            raise NPCPrognosisError(f"segmentation network folder not found: {network}. Choose a network "
                                    "folder, or load existing contours as the segmentation.")
        if (segmentationNode is not None and segmentationNode.GetSegmentation().GetNumberOfSegments()
                and not self._unedited(segmentationNode, volumes.get("t1c"))):
            segmentationNode = None  # contours drawn or corrected by hand are never replaced: a new node gets these
        with self._jobInputs() as folder:
            job = {"action": "segment", "out_dir": str(folder), "patient_id": patientId, "network": str(network),
                   "tta": int(tta), "images": self._writeVolumes(volumes, folder)}

        def finish(result):
            node = self.importSegmentation(result["mask"], volumes["t1c"], segmentationNode)
            node.SetAttribute("NPCPrognosis.SegmentResult", json.dumps(
                {k: result.get(k) for k in ("deep_score", "deep_score_sd", "volumes_ml", "warnings")}))
            return node

        return self._runJob(job, finish, waitForCompletion, onFinished)

    def _checkBundle(self, bundlePath):
        bundle = pathlib.Path(bundlePath or DEMO_BUNDLE)
        if not (bundle / "bundle.json").exists():
            raise NPCPrognosisError(f"no model bundle in {bundle} (bundle.json missing). Choose a bundle folder "
                                    "trained with `npc-prognosis train`, or reinstall the extension for the demo "
                                    "bundle.")
        return bundle

    def _featuresCache(self, segmentationNode, name="features.json"):
        return self._workDirectory("features-" + segmentationNode.GetID().replace("vtkMRML", "")) / name

    @staticmethod
    def _keepFeatures(path, cache):
        """A job's radiomics kept as the segmentation's (the job folder goes), written whole (see keep_features)."""
        from NPCPrognosisLib.slicer_support import jobs

        jobs.keep_features(path, cache)

    def extractFeatures(self, volumes, segmentationNode, bundlePath, tableNode=None, patientId="patient",
                        waitForCompletion=True, onFinished=None):
        """Radiomics with the bundle's settings -> table node (feature, value, used by the Rad-score)."""
        bundle = self._checkBundle(bundlePath)
        cache = self._featuresCache(segmentationNode)
        with self._jobInputs() as folder:
            job = {"action": "extract", "out_dir": str(folder), "patient_id": patientId, "bundle": str(bundle),
                   "images": self._writeVolumes(volumes, folder),
                   "mask": self._writeSegmentation(segmentationNode, volumes["t1c"], folder / "mask.nii.gz")[0],
                   "features": str(cache) if cache.exists() else None}

        def finish(result):
            self._keepFeatures(result["features"], cache)
            return self.featuresToTable(json.loads(cache.read_text())["features"], bundle, tableNode)

        return self._runJob(job, finish, waitForCompletion, onFinished)

    def featuresToTable(self, features, bundlePath, tableNode=None):
        from NPCPrognosisLib.slicer_support.formatting import feature_rows

        document = json.loads((pathlib.Path(bundlePath) / "bundle.json").read_text())
        rows = feature_rows(features, document)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "NPC radiomics")
        tableNode.RemoveAllColumns()
        names = vtk.vtkStringArray()
        names.SetName("feature")
        values = vtk.vtkDoubleArray()
        values.SetName("value")
        used = vtk.vtkIntArray()
        used.SetName("in Rad-score")
        for name, value, inSignature in rows:
            names.InsertNextValue(name)
            values.InsertNextValue(value)
            used.InsertNextValue(inSignature)
        for array in (names, values, used):
            tableNode.AddColumn(array)
        tableNode.SetAttribute("NPCPrognosis.bundle", str(bundlePath))
        tableNode.Modified()
        return tableNode

    def predict(self, volumes, segmentationNode, bundlePath, clinical, patientId="patient", waitForCompletion=True,
                onFinished=None, extraFeatures=""):
        """Prognosis with the current (possibly edited) contours; dict with prediction, curves, contour change.

        ``extraFeatures`` ("name=path; name=path") are the other modalities' tables a fusion model or a binary
        endpoint of the bundle was trained with; the patient's row is found by ``patientId``.

        The contour change is measured against this segmentation's own automatic contours (never another
        segmentation's), and segments that are neither GTVp nor GTVn are named in the prediction's warnings.
        """
        from NPCPrognosisLib.slicer_support.form import parse_clinical_form

        try:
            parse_clinical_form(clinical, patientId)
        except ValueError as exc:
            raise NPCPrognosisError(str(exc)) from None
        bundle = self._checkBundle(bundlePath)
        cache = self._featuresCache(segmentationNode)
        referenceCache = self._featuresCache(segmentationNode, "automatic_features.json")
        automaticLabelmap = self.automaticLabelmapFor(segmentationNode)
        exportWarnings = []
        if automaticLabelmap is not None and not self._sameGrid(automaticLabelmap, volumes["t1c"]):
            # the automatic contours of another CET1W are no baseline for these: compared voxel by voxel they would
            # give a contour change of the shift between the two grids
            automaticLabelmap = None
            exportWarnings.append(f"the automatic contours of {segmentationNode.GetName()} were made on another CET1W "
                                  f"grid than {volumes['t1c'].GetName()}: no contour-change report")
        segmentInfo = json.loads(segmentationNode.GetAttribute("NPCPrognosis.SegmentResult") or "{}")
        with self._jobInputs() as folder:
            images = self._writeVolumes(volumes, folder)
            # one export: the job's mask file is the contours the contour change compares with the automatic ones
            mask, editedArray = self._writeSegmentation(segmentationNode, volumes["t1c"], folder / "mask.nii.gz",
                                                        exportWarnings)
            job = {"action": "predict", "out_dir": str(folder), "patient_id": patientId, "bundle": str(bundle),
                   "images": images, "mask": mask,
                   "features": str(cache) if cache.exists() else None, "clinical": dict(clinical),
                   "deep_score_sd": segmentInfo.get("deep_score_sd"),
                   "extra_features": [spec.strip() for spec in (extraFeatures or "").split(";") if spec.strip()]}
            if automaticLabelmap is not None:
                job["reference_mask"] = self._writeVolume(automaticLabelmap, folder / "automatic_mask.nii.gz")
                job["reference_features"] = str(referenceCache) if referenceCache.exists() else None

        def finish(result):
            for key, target in (("features", cache), ("reference_features", referenceCache)):
                if result.get(key):
                    self._keepFeatures(result[key], target)
            if automaticLabelmap is not None:
                result["contour_change"] = self.contourChange(segmentationNode, volumes["t1c"],
                                                              result.get("reference_prediction"), result["prediction"],
                                                              editedArray)
            result["prediction"]["warnings"] = exportWarnings + list(result["prediction"].get("warnings", []))
            return result

        return self._runJob(job, finish, waitForCompletion, onFinished)

    def contourChange(self, segmentationNode, referenceVolumeNode, automaticPrediction=None, editedPrediction=None,
                      editedArray=None):
        """What editing changed: Dice and volume per structure (and the risk, given both predictions), against
        this segmentation's own automatic contours; None when it has none."""
        from NPCPrognosisLib.slicer_support.contour_change import contour_change_report

        automaticLabelmap = self.automaticLabelmapFor(segmentationNode)
        if automaticLabelmap is None or not self._sameGrid(automaticLabelmap, referenceVolumeNode):
            return None
        if editedArray is None:
            editedArray = self._exportedArray(segmentationNode, referenceVolumeNode)
        spacing = referenceVolumeNode.GetSpacing()
        return contour_change_report(slicer.util.arrayFromVolume(automaticLabelmap), editedArray,
                                     spacing[0] * spacing[1] * spacing[2] / 1000.0, automaticPrediction,
                                     editedPrediction)

    def showTable(self, tableNode):
        """Show a table node in the view layout (no Slicer release has a util function for this)."""
        if getattr(slicer, "app", None) is None or slicer.app.layoutManager() is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()

    def _unedited(self, segmentationNode, referenceVolumeNode):
        """Whether the segmentation still holds exactly its own automatic contours on this CET1W (so a new automatic
        run may replace them); False for hand-drawn or corrected contours, or ones made on another grid."""
        import numpy as np

        automatic = self.automaticLabelmapFor(segmentationNode)
        if automatic is None or referenceVolumeNode is None or not self._sameGrid(automatic, referenceVolumeNode):
            return False
        try:
            current = self._exportedArray(segmentationNode, referenceVolumeNode)
        except NPCPrognosisError:  # the GTVp was erased or renamed: an edit
            return False
        return bool(np.array_equal(current, slicer.util.arrayFromVolume(automatic)))

    @staticmethod
    def _sameGrid(nodeA, nodeB, toleranceMm=1e-3):
        """Two volume nodes on one voxel grid (dimensions and voxel-to-RAS matrix)."""
        import numpy as np

        if nodeA.GetImageData() is None or nodeB.GetImageData() is None:
            return False
        if tuple(nodeA.GetImageData().GetDimensions()) != tuple(nodeB.GetImageData().GetDimensions()):
            return False
        difference = NPCPrognosisLogic._ijkToRas(nodeA) - NPCPrognosisLogic._ijkToRas(nodeB)
        return bool(np.abs(difference).max() <= toleranceMm)

    def _exportedArray(self, segmentationNode, referenceVolumeNode):
        labelmapNode = self.exportLabelmap(segmentationNode, referenceVolumeNode)
        try:
            return slicer.util.arrayFromVolume(labelmapNode).copy()
        finally:
            self._removeWithDisplay(labelmapNode)

    def exportReport(self, result, outputDirectory, volumeNode=None, segmentationNode=None):
        """The patient sheet (patient_sheet.html, and .pdf when Chromium is installed) and report.json in
        ``outputDirectory``/<patient>, with key slices of ``volumeNode`` (CET1W) and the contours of
        ``segmentationNode`` (and its automatic contours, dashed, when it was edited); returns the paths."""
        from NPCPrognosisLib.reporting.patient_sheet import SheetImages
        from NPCPrognosisLib.slicer_support.report import write_report

        images = None
        if volumeNode is not None:
            images = SheetImages(t1c=self.sitkFromVolumeNode(volumeNode))
            if segmentationNode is not None and self.hasContours(segmentationNode):
                labelmapNode = self.exportLabelmap(segmentationNode, volumeNode)
                try:
                    images.mask = self.sitkFromVolumeNode(labelmapNode)
                finally:
                    self._removeWithDisplay(labelmapNode)
                automaticNode = self.automaticLabelmapFor(segmentationNode)
                if automaticNode is not None:
                    images.automatic_mask = self.sitkFromVolumeNode(automaticNode)
        folder = self._patientFolder(outputDirectory, result["prediction"]["patient_id"])
        return {k: str(v) for k, v in write_report(result, folder, images).items()}

    @staticmethod
    def _patientFolder(outputDirectory, patientId):
        """``outputDirectory``/<patient>, named so that an ID such as '../x' cannot leave it: the sheet and the
        exported contours of one patient land in the same folder."""
        from NPCPrognosisLib.io.atomic import safe_name

        return pathlib.Path(outputDirectory) / safe_name(patientId)

    def exportContours(self, segmentationNode, referenceVolumeNode, outputDirectory, patientId="patient",
                       fileForInstance=None, waitForCompletion=True, onFinished=None):
        """The segmentation's current GTVp/GTVn (corrected in the Segment Editor or not) as a DICOM SEG (for a PACS)
        and an RT Structure Set (for a planning system) referencing the CET1W series ``referenceVolumeNode`` was
        loaded from, in ``outputDirectory``/<patient> as <patient>_seg.dcm and <patient>_rtstruct.dcm.

        The contours are exported on the volume's grid as for Predict; the series' files are found through the
        DICOM database (``fileForInstance(sopInstanceUid)`` -> path, default ``slicer.dicomDatabase.fileForInstance``),
        copied into the job's folder and written by the core's writer, the one ``npc-prognosis segment`` uses.
        Returns {"seg", "rtstruct": path or None, "warnings": [...]}; a volume not loaded from DICOM is refused
        before anything is written, and neither file being possible is an error.
        """
        from NPCPrognosisLib.io.segment_outputs import SegmentOutputs

        exportWarnings = []
        folder = self._patientFolder(outputDirectory, patientId)
        with self._jobInputs() as jobFolder:
            files = self._dicomFiles(referenceVolumeNode, fileForInstance)
            series = jobFolder / "cet1w_dicom"
            series.mkdir()
            for index, path in enumerate(files):  # the volume's own instances only (a series Slicer split in parts)
                shutil.copyfile(path, series / f"{index:05d}.dcm")
            # one export serves the file and the comparison with the automatic contours
            mask, current = self._writeSegmentation(segmentationNode, referenceVolumeNode, jobFolder / "mask.nii.gz",
                                                    exportWarnings)
            origins = self.contourOrigins(segmentationNode, referenceVolumeNode, current)
            outputs = SegmentOutputs.of_patient(folder, patientId)  # named as `npc-prognosis segment` names them
            job = {"action": "contours", "out_dir": str(jobFolder), "patient_id": patientId,
                   "images": {"t1c": str(series)}, "mask": mask,
                   "origins": {str(k): v for k, v in origins.items()},
                   "seg": str(outputs.seg), "rtstruct": str(outputs.rtstruct)}

        def finish(result):
            return {"seg": result["seg"], "rtstruct": result["rtstruct"],
                    "warnings": exportWarnings + list(result["warnings"])}

        return self._runJob(job, finish, waitForCompletion, onFinished)

    def contourOrigins(self, segmentationNode, referenceVolumeNode, current):
        """{label: AUTOMATIC, SEMIAUTOMATIC or MANUAL} for the structures of ``current`` (the segmentation's labels
        exported on this CET1W): each against this segmentation's own automatic contours (none: drawn by hand; on
        another grid: SEMIAUTOMATIC, as they cannot be compared voxel for voxel)."""
        from NPCPrognosisLib.slicer_support.contour_change import edit_origins

        automatic = self.automaticLabelmapFor(segmentationNode)
        if automatic is not None and not self._sameGrid(automatic, referenceVolumeNode):
            return {label: "SEMIAUTOMATIC" for label in edit_origins(current, None)}
        return edit_origins(current, None if automatic is None else slicer.util.arrayFromVolume(automatic))

    def _dicomFiles(self, volumeNode, fileForInstance=None):
        """The DICOM files ``volumeNode`` was loaded from, slice by slice: Slicer's DICOM module records their SOP
        Instance UIDs in the node's ``DICOM.instanceUIDs`` attribute, and the DICOM database knows each one's file."""
        def notFromDicom(why):
            return NPCPrognosisError(
                f"{volumeNode.GetName()} {why}, so the DICOM SEG and RT Structure Set have no series to refer to. "
                "Load the CET1W series through the DICOM module (Add DICOM Data, then Load), select that volume as "
                "CET1W and export again.")

        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids:
            raise notFromDicom("was not loaded through Slicer's DICOM module (it has no DICOM.instanceUIDs)")
        slices = volumeNode.GetImageData().GetDimensions()[2] if volumeNode.GetImageData() is not None else 0
        if len(uids) != slices:
            raise notFromDicom(f"has {slices} slices but was loaded from {len(uids)} DICOM images (resampled, cropped "
                               "or a multi-frame image?)")
        if fileForInstance is None:
            database = getattr(slicer, "dicomDatabase", None)
            if database is None or not database.isOpen:
                raise NPCPrognosisError("Slicer's DICOM database is not open, so the files of the CET1W series cannot "
                                        "be found. Open the DICOM module (its database), then export again.")
            fileForInstance = database.fileForInstance
        files = []
        for uid in uids:
            path = fileForInstance(uid) or ""  # "" for an instance the database does not hold
            if not path or not os.path.isfile(path):
                where = f"is gone from the disk ({path})" if path else "the DICOM database no longer holds"
                raise notFromDicom(f"was loaded from DICOM image {uid}, which {where}")
            files.append(path)
        return files

    def showSurvivalPlot(self, curves, title="", showInLayout=True):
        """Plot chart node: this patient's survival with the reference curves; returns the chart node."""
        import numpy as np

        names = [n for n in curves if n != "months"]
        tableNode = self.scene.GetFirstNodeByName("NPC survival curves") or \
            self.scene.AddNewNodeByClass("vtkMRMLTableNode", "NPC survival curves")
        data = np.column_stack([np.asarray(curves["months"], float)] +
                               [np.asarray(curves[n], float) for n in names])
        slicer.util.updateTableFromArray(tableNode, data, ["months"] + names)
        chartNode = self.scene.GetFirstNodeByName("NPC survival chart") or \
            self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "NPC survival chart")
        chartNode.RemoveAllPlotSeriesNodeIDs()
        colours = {"this patient": (0, 0, 0), "high-risk group (median)": (0.86, 0.16, 0.16),
                   "low-risk group (median)": (0.20, 0.70, 0.25), "risk-group cut-off": (0.5, 0.5, 0.5),
                   "training cohort (Kaplan-Meier)": (0.15, 0.35, 0.85)}
        for name in names:
            seriesName = f"NPC {name}"
            series = self.scene.GetFirstNodeByName(seriesName) or \
                self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", seriesName)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("months")
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            band = name.startswith("this patient, 95%")  # the interval's bounds: thin dotted, in its colour
            series.SetLineWidth(4 if name == "this patient" else 1 if band else 2)
            if name == "risk-group cut-off":
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            elif band:
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDot)
            series.SetColor(*colours.get("this patient" if band else name, (0.4, 0.4, 0.4)))
            chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        chartNode.SetTitle(f"{title} survival")
        chartNode.SetXAxisTitle("months")
        chartNode.SetYAxisTitle("survival probability")
        chartNode.SetYAxisRange(0, 1)
        chartNode.SetYAxisRangeAuto(False)
        if showInLayout and getattr(slicer, "app", None) is not None and slicer.app.layoutManager() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)
        return chartNode

    def openSegmentEditor(self, segmentationNode, sourceVolumeNode):
        """Segment Editor on the segmentation, with the CET1W as the source volume."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(sourceVolumeNode)
        else:  # Slicer < 5.4
            editor.setMasterVolumeNode(sourceVolumeNode)

    def loadSamplePatient(self, folder=None):
        """The shipped synthetic patient: volume nodes {t1, t2, t1c} and its clinical form values."""
        from NPCPrognosisLib.contract import SEQUENCE_TITLES
        from NPCPrognosisLib.resources import sample_case_files
        from NPCPrognosisLib.slicer_support.form import clinical_values_to_form

        folder = pathlib.Path(folder or SAMPLE_PATIENT)
        files = sample_case_files(folder)
        if not all(key in files for key in SEQUENCES):
            raise NPCPrognosisError(f"sample patient not found in {folder}; reinstall the extension")
        nodes = {key: slicer.util.loadVolume(str(files[key]), {"name": f"{folder.name} {SEQUENCE_TITLES[key]}"})
                 for key in SEQUENCES}
        clinical = clinical_values_to_form(json.loads(files["clinical"].read_text())) if "clinical" in files else None
        slicer.util.setSliceViewerLayers(background=nodes["t1c"], fit=True)
        return nodes, clinical


def loadAsDicomSeries(logic, volumeNode, folder, patientId="patient"):
    """``volumeNode`` written as a single-frame DICOM series into ``folder`` and loaded back as Slicer's DICOM module
    loads one: a new volume node on the series' grid whose ``DICOM.instanceUIDs`` lists each slice's SOP Instance UID,
    and the lookup UID -> file the DICOM database would answer ("" for an unknown UID). Lets the self-test and the
    tests check Export contours (DICOM) without a DICOM database. Returns (volume node, lookup)."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    from NPCPrognosisLib.datasets.cohort_files import dicom_uid, write_dicom_series
    from NPCPrognosisLib.io.images import read_image

    folder = pathlib.Path(folder)
    rng = np.random.default_rng()
    tags = {"0008|0060": "MR", "0010|0010": patientId, "0010|0020": patientId, "0020|000d": dicom_uid(rng),
            "0020|0052": dicom_uid(rng), "0008|103e": f"{volumeNode.GetName()} (NPCPrognosis test)", "0020|0011": "5"}
    # 12-bit integers as a scanner stores them: only the grid matters here
    image = sitk.Cast(sitk.RescaleIntensity(logic.sitkFromVolumeNode(volumeNode), 0, 4095), sitk.sitkInt16)
    write_dicom_series(image, folder, tags, dicom_uid(rng), rng)
    series = read_image(folder, patient_id=patientId, role="t1c")
    node = logic.updateVolumeNodeFromSitk(
        logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volumeNode.GetName()} (DICOM)"), series)
    bySlice = {}
    for path in sorted(folder.iterdir()):
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        k = series.TransformPhysicalPointToIndex([float(v) for v in header.ImagePositionPatient])[2]
        bySlice[k] = (str(header.SOPInstanceUID), str(path))
    node.SetAttribute("DICOM.instanceUIDs", " ".join(bySlice[k][0] for k in range(len(bySlice))))
    files = dict(bySlice.values())
    return node, lambda uid: files.get(uid, "")


#
# Test
#


class NPCPrognosisTest(ScriptedLoadableModuleTest):
    """Self-test on the synthetic sample patient: segment -> extract -> predict -> edit -> predict."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_extract_predict_edit()

    def test_segment_extract_predict_edit(self):
        import math

        import numpy as np

        self.delayDisplay("NPCPrognosis self-test on the synthetic sample patient")
        logic = NPCPrognosisLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        volumes, clinical = logic.loadSamplePatient()
        self.assertIsNotNone(clinical)

        if (DEMO_NETWORK).is_dir():
            segmentationNode = logic.segment(volumes, str(DEMO_NETWORK), patientId="NPC-SAMPLE-001")
        else:  # the network is a separate deliverable; the rest of the chain is still tested on the shipped mask
            logging.warning("NPCPrognosis self-test: no demo network; using the sample's reference mask")
            from NPCPrognosisLib.resources import sample_case_files

            segmentationNode = logic.importSegmentation(sample_case_files(SAMPLE_PATIENT)["mask"], volumes["t1c"])
        segmentation = segmentationNode.GetSegmentation()
        spacing = volumes["t1c"].GetSpacing()
        voxelMl = spacing[0] * spacing[1] * spacing[2] / 1000.0
        for name in ("GTVp", "GTVn"):
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            self.assertTrue(segmentId, f"segment {name} missing")
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumes["t1c"])
            volume = float(array.sum()) * voxelMl
            self.assertTrue(0.2 < volume < 300.0, f"{name} volume {volume:.2f} mL is implausible")
        self.assertIsNotNone(logic.automaticLabelmapFor(segmentationNode))
        self.delayDisplay("segmentation ok")

        tableNode = logic.extractFeatures(volumes, segmentationNode, str(DEMO_BUNDLE), patientId="NPC-SAMPLE-001")
        document = json.loads((DEMO_BUNDLE / "bundle.json").read_text())
        self.assertEqual(tableNode.GetNumberOfRows(), len(document["feature_columns"]))
        featureColumn = tableNode.GetTable().GetColumnByName("feature")
        self.assertEqual(featureColumn.GetValue(0), document["feature_columns"][0])
        self.delayDisplay("radiomics ok")

        result = logic.predict(volumes, segmentationNode, str(DEMO_BUNDLE), clinical, patientId="NPC-SAMPLE-001")
        prediction = result["prediction"]
        self.assertTrue(math.isfinite(prediction["risk_score"]))
        self.assertIn(prediction["risk_group"], ("high", "low"))
        for value in prediction["survival"].values():
            self.assertTrue(0.0 <= value <= 1.0)
        self.assertAlmostEqual(result["contour_change"]["structures"]["GTVp"]["dice"], 1.0, places=6)
        chartNode = logic.showSurvivalPlot(result["curves"], showInLayout=False)
        self.assertGreaterEqual(chartNode.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("prediction ok")

        # Edit: shrink GTVp by 2 mm with the Segment Editor's Margin effect, as a user would.
        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentationNode)
        if hasattr(editorWidget, "setSourceVolumeNode"):
            editorWidget.setSourceVolumeNode(volumes["t1c"])
        else:
            editorWidget.setMasterVolumeNode(volumes["t1c"])
        editorWidget.setCurrentSegmentID(segmentation.GetSegmentIdBySegmentName("GTVp"))
        editorWidget.setActiveEffectByName("Margin")
        effect = editorWidget.activeEffect()
        effect.setParameter("MarginSizeMm", -2.0)
        effect.self().onApply()
        editorWidget.setActiveEffect(None)
        slicer.mrmlScene.RemoveNode(editorNode)

        edited = logic.predict(volumes, segmentationNode, str(DEMO_BUNDLE), clinical, patientId="NPC-SAMPLE-001")
        change = edited["contour_change"]
        self.assertLess(change["structures"]["GTVp"]["dice"], 0.999)
        self.assertGreater(change["structures"]["GTVp"]["dice"], 0.0)
        self.assertLess(change["structures"]["GTVp"]["volume_change_ml"], 0.0)
        self.assertAlmostEqual(change["structures"]["GTVn"]["dice"], 1.0, places=6)
        self.assertIn("risk", change)
        self.assertTrue(np.isfinite(change["risk"]["change"]))

        paths = logic.exportReport(edited, slicer.app.temporaryPath + "/NPCPrognosisSelfTest", volumes["t1c"],
                                   segmentationNode)
        self.assertTrue(os.path.exists(paths["html"]) and os.path.exists(paths["json"]))

        # Export contours (DICOM) of the edited contours; the CET1W as a DICOM series, found without a DICOM database
        import SimpleITK as sitk

        from NPCPrognosisLib.io.images import load_patient

        folder = pathlib.Path(slicer.app.temporaryPath) / "NPCPrognosisSelfTest" / "dicom"
        shutil.rmtree(folder, ignore_errors=True)
        dicomNode, lookup = loadAsDicomSeries(logic, volumes["t1c"], folder / "cet1w", "NPC-SAMPLE-001")
        written = logic.exportContours(segmentationNode, dicomNode, str(folder / "export"), patientId="NPC-SAMPLE-001",
                                       fileForInstance=lookup)
        expected = logic._exportedArray(segmentationNode, dicomNode)
        for path in (written["seg"], written["rtstruct"]):
            back = load_patient("NPC-SAMPLE-001", {"t1c": folder / "cet1w"}, path).mask
            self.assertTrue(np.array_equal(sitk.GetArrayFromImage(back), expected), path)
        self.delayDisplay("NPCPrognosis self-test passed")

