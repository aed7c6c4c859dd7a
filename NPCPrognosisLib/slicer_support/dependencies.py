"""Python packages the core needs inside Slicer, found without importing them.

Checking must never load torch into Slicer's process (it takes seconds and cannot be undone), so versions are
read with ``importlib.metadata``; the module asks once before installing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Python distributions the core needs inside Slicer: (distribution, requirement, import name, why).
#: Detected with importlib.metadata (no import), so checking never loads torch into Slicer's process.
DEPENDENCIES = (
    ("torch", "torch>=2.0", "torch", "deep segmentation network"),
    ("monai", "monai>=1.3", "monai", "network layers and sliding-window inference"),
    ("pyradiomics", "pyradiomics>=3.0.1", "radiomics", "radiomics features"),
    ("scikit-survival", "scikit-survival>=0.22", "sksurv", "risk-group log-rank statistics"),
    ("pandas", "pandas>=1.5", "pandas", "feature tables"),
    ("PyYAML", "PyYAML>=6.0", "yaml", "radiomics parameter files"),
    ("safetensors", "safetensors>=0.4", "safetensors", "network weights"),
    ("matplotlib", "matplotlib>=3.6", "matplotlib", "survival plot of the exported report"),
    ("pydicom", "pydicom>=2.4", "pydicom", "RT Structure Set export"),
    ("highdicom", "highdicom>=0.22", "highdicom", "DICOM SEG export"),
)


#: What each panel action imports in its job; an action installs only what it needs (Segment does not wait for
#: PyRadiomics, Export does not wait for torch). Predict needs the network too when the bundle carries one.
ACTIONS = {
    "segment": ("torch", "monai", "safetensors", "pandas"),
    "extract": ("pyradiomics", "PyYAML", "pandas", "scikit-survival"),
    "predict": ("pyradiomics", "PyYAML", "pandas", "scikit-survival", "matplotlib"),
    "predict_with_network": ("pyradiomics", "PyYAML", "pandas", "scikit-survival", "matplotlib", "torch", "monai",
                             "safetensors"),
    "export": ("matplotlib",),
    # the writers, and what the job imports on the way (pandas: the cohort code beside them; matplotlib: contourpy,
    # which draws the structure set's polygons)
    "contours": ("pydicom", "highdicom", "pandas", "matplotlib"),
}

#: PyRadiomics 3.0.1 publishes no wheel for Python >= 3.12 (Slicer >= 5.10), and building it needs a compiler:
#: there, the SlicerRadiomics extension provides it.
PYRADIOMICS_WHEEL_PYTHON = (3, 12)
SLICER_RADIOMICS_MESSAGE = ("PyRadiomics has no installable package for this Slicer's Python {python}. Install the "
                            "SlicerRadiomics extension (View > Extensions Manager > SlicerRadiomics), restart Slicer "
                            "and try again: it provides PyRadiomics.")


def dependencies_for(action: str | None) -> tuple[tuple[str, str, str, str], ...]:
    """The :data:`DEPENDENCIES` rows one action needs (all of them for ``None``)."""
    if action is None:
        return DEPENDENCIES
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
    return tuple(row for row in DEPENDENCIES if row[0] in ACTIONS[action])


def installable(missing: Sequence[Mapping[str, str]], python: tuple[int, int]) -> str | None:
    """None when pip can install ``missing`` on this Python, else the message saying what to do instead."""
    if python >= PYRADIOMICS_WHEEL_PYTHON and any(m["distribution"] == "pyradiomics" for m in missing):
        return SLICER_RADIOMICS_MESSAGE.format(python=".".join(map(str, python)))
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _satisfies(installed: str, requirement: str) -> bool:
    """``installed`` meets ``requirement``'s lower bound (the only kind of bound the module declares)."""
    if ">=" not in requirement:
        return True
    wanted = requirement.split(">=", 1)[1].split(",")[0].strip()
    try:
        from packaging.version import Version

        return Version(installed) >= Version(wanted)
    except Exception:  # noqa: BLE001 - packaging missing or an unparsable local version: compare numerically
        return _version_tuple(installed) >= _version_tuple(wanted)


def missing_dependencies(
    dependencies: Sequence[tuple[str, str, str, str]] = DEPENDENCIES,
    version_of: Callable[[str], str] | None = None,
) -> list[dict[str, str]]:
    """Dependencies that are absent or too old, found without importing them (importing torch takes seconds)."""
    if version_of is None:
        from importlib import metadata

        def version_of(name: str) -> str:
            return metadata.version(name)

    out = []
    for distribution, requirement, import_name, why in dependencies:
        try:
            installed: str | None = version_of(distribution)
        except Exception:  # noqa: BLE001 - PackageNotFoundError or a broken install: either way, install it
            installed = None
        if installed is None or not _satisfies(installed, requirement):
            out.append({"distribution": distribution, "requirement": requirement, "import": import_name,
                        "why": why, "installed": installed or ""})
    return out


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def install_question(missing: Sequence[Mapping[str, str]]) -> str:
    """The one confirmation the user sees before anything is installed."""
    rows = "\n".join(f"  - {m['requirement']} ({m['why']})" for m in missing)
    return ("NPCPrognosis needs these Python packages, which are not installed in Slicer yet:\n" + rows +
            "\n\nInstall them now? This downloads several hundred MB (PyTorch) and may take minutes.")


OFFLINE_MESSAGE = ("Could not install {packages}: the package index cannot be reached (offline?). Connect to the "
                   "internet and try again, or install them from the Python console with "
                   "slicer.util.pip_install(...).")

