"""NPCPrognosisLib: the headless core of NPCPrognosis.

Pure Python (no ``slicer``, ``qt`` or ``vtk``) so that the same code serves the command line, cohort runs and
the Slicer module. Importing the package is cheap on purpose: heavy dependencies (torch, PyRadiomics,
scikit-survival) are imported by the stage modules that need them, so Slicer can load the module before the
user has agreed to install anything.

Subpackages follow the data flow:

``io``             manifests, clinical records, images, atomic writing, model bundles on disk
``imaging``        geometry (grids, resampling), intensity preprocessing (N4, normalisation), overlap metrics
``radiomics``      PyRadiomics extraction, features tables, the LASSO-Cox Rad-score signature
``survival``       Cox models, survival metrics, risk groups, nomograms, chemotherapy benefit, plots
``classification`` binary endpoints (e.g. induction-chemotherapy response): JSON classifiers, AUC/DeLong
``deep``           the multi-task segmentation + survival network: data, training, segmentation
``pipeline``       the stages put together: extract, train, evaluate, predict, segment, demo
``slicer_support`` what the Slicer module needs that is not science: form, formatting, report, jobs
``datasets``       the synthetic cohort generator
``resources``      shipped parameter files, demo model and sample patient (package data)
"""
from __future__ import annotations

__version__ = "0.1.0"
