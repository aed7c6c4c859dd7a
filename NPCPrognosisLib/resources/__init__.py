"""What the core needs at run time and ships as package data: radiomics parameter files, the demo model and the
synthetic sample patient.

They live inside the package (not in the Slicer module's ``Resources/``) so that a plain, non-editable
``pip install`` finds them; ``importlib.resources`` resolves them wherever the package was installed. Inside
Slicer the extension build copies this folder beside the rest of ``NPCPrognosisLib``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from NPCPrognosisLib.contract import SEQUENCES


def resource_path(*parts: str) -> Path:
    """A shipped file or folder as a real path (the package is installed unzipped, so no extraction is needed).

    Parameters
    ----------
    parts : str
        Path components below ``NPCPrognosisLib/resources``.

    Returns
    -------
    path : pathlib.Path
        The file or folder; it may not exist when a caller asks for an optional resource.
    """
    return Path(str(resources.files(__name__).joinpath(*parts)))


#: PyRadiomics settings of the papers (3 mm resampling, bin width 25, original + wavelet + LoG).
RADIOMICS_PARAMS = resource_path("radiomics", "NPCPrognosis.yaml")
#: The same settings with the original image only: for tests and smoke runs, never for models.
RADIOMICS_FAST_PARAMS = resource_path("radiomics", "NPCPrognosis_fast.yaml")
#: The SYNTHETIC demo prognosis bundle; it carries the demo segmentation network in ``network/``.
DEMO_BUNDLE = resource_path("DemoBundle")
#: The SYNTHETIC demo segmentation network (stored once, inside the demo bundle).
DEMO_NETWORK = DEMO_BUNDLE / "network"
#: The SYNTHETIC sample patient (T1W, T2W, CET1W, contours, clinical record).
SAMPLE_CASE = resource_path("SampleData", "NPC-SAMPLE-001")


def sample_case_files(folder: str | Path = SAMPLE_CASE) -> dict[str, Path]:
    """The files of a sample patient folder: ``t1``, ``t2``, ``t1c``, ``mask`` and ``clinical`` (when present).

    Parameters
    ----------
    folder : str or pathlib.Path, default SAMPLE_CASE
        A folder whose images are named ``t1c.nii.gz`` or ``<folder name>_t1c.nii.gz`` (as SampleData names them).

    Returns
    -------
    files : dict of str to pathlib.Path
        Only the files that exist.
    """
    folder = Path(folder)
    out = {}
    for key in (*SEQUENCES, "mask"):
        for candidate in (folder / f"{key}.nii.gz", folder / f"{folder.name}_{key}.nii.gz"):
            if candidate.exists():
                out[key] = candidate
                break
    if (folder / "clinical.json").exists():
        out["clinical"] = folder / "clinical.json"
    return out
