"""NPCPrognosisLib: the headless core of NPCPrognosis.

Pure Python (no ``slicer``, ``qt`` or ``vtk``) so that the same code serves the command line, cohort runs and
the Slicer module. Importing the package is cheap on purpose: heavy dependencies (torch, PyRadiomics,
scikit-survival) are imported by the stage modules that need them, so Slicer can load the module before the
user has agreed to install anything.
"""

__version__ = "0.1.0"

#: Label values of the segmentation contract, shared by every stage.
LABELS = {"gtvp": 1, "gtvn": 2}
