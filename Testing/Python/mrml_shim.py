"""Load NPCPrognosis.py on real MRML: slicer-core's ``slicer`` (MRML, Segmentations logic, slicer.util) with a
small shim for the parts only a running Slicer has (Qt widgets, the ScriptedLoadableModule base classes and the
parameter node wrapper). Every node operation in the tests runs on the real library."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class _Anything:
    """Stands in for Qt and ctk classes; the Logic never touches them."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()


class _QtModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Anything,), {})


def _base(name):
    def __init__(self, parent=None, *args, **kwargs):
        self.parent = parent

    return type(name, (), {"__init__": __init__, "getParameterNode": lambda self: None})


def load_module():
    """The NPCPrognosis module, imported once with the real slicer-core ``slicer`` package."""
    if "NPCPrognosis" in sys.modules and getattr(sys.modules["NPCPrognosis"], "_MRML_SHIM", False):
        return sys.modules["NPCPrognosis"]
    import slicer  # slicer-core: the real MRML library

    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _QtModule(name))
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, _base(name))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    for name in ("Choice", "Default", "WithinRange"):
        setattr(wrapper, name, lambda *args, **kwargs: None)
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    sys.modules["slicer.parameterNodeWrapper"] = wrapper
    slicer.ScriptedLoadableModule = scripted
    slicer.parameterNodeWrapper = wrapper
    spec = importlib.util.spec_from_file_location("NPCPrognosis", ROOT / "NPCPrognosis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["NPCPrognosis"] = module
    spec.loader.exec_module(module)
    module._MRML_SHIM = True
    return module


def segmentations_logic(scene):
    """Slicer's Segmentations logic on ``scene``, wired as the application wires it: the Terminologies logic is
    reachable through the application logic (``GetModuleLogic("Terminologies")``), so imports with terminology
    run the real code path. Slicer's default terminology files are not part of slicer-core; the module's own
    context file is all the tests load."""
    import slicer

    application = slicer.vtkMRMLApplicationLogic()
    application.SetMRMLScene(scene)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    application.SetModuleLogic("Terminologies", terminologies)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(application)
    segmentations._keepAlive = (application, terminologies)  # the VTK objects hold no Python references
    return segmentations
