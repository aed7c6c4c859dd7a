"""Synthetic cohort generators: three independently written phantom families with the same output contract.

``synth`` (family A) is what the methods were developed on; ``relaxometry`` (family B, different anatomy,
intensity physics, scanners and outcome model) is where they are measured, so no number of this project rests
only on the generator a method was tuned on. ``gradient_echo`` (family C: gradient-echo / TSE physics, its own
anatomy, scanners and Weibull outcome model) stands in for an outside party's unseen generator: it is measured
on, never tuned on. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Family name -> module of this package with its ``synthesize_cohort(n, seed, out_dir, *, progress, id_prefix,
#: workers)`` and ``simulate_outcomes(n, seed)``. Imported on first use: the CLI lists the names at start-up, and
#: importing the generators (SciPy, pandas) would add a second to every command.
FAMILY_MODULES: dict[str, str] = {
    "synth": "synth",
    "relaxometry": "relaxometry_phantom",
    "gradient_echo": "gradient_echo_phantom",
}


def phantom_family(name: str) -> ModuleType:
    """The generator module of phantom family ``name`` (a key of :data:`FAMILY_MODULES`)."""
    return importlib.import_module(f"{__name__}.{FAMILY_MODULES[name]}")
