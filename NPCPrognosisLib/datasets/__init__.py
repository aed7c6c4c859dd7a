"""Synthetic cohort generators: two independently written phantom families with the same output contract.

``synth`` (family A) is what the methods were developed on; ``relaxometry`` (family B, different anatomy,
intensity physics, scanners and outcome model) is where they are measured, so no number of this project rests
only on the generator a method was tuned on. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

from collections.abc import Callable

from NPCPrognosisLib.datasets import relaxometry_phantom, synth

#: Family name -> ``synthesize_cohort(n, seed, out_dir, *, progress, id_prefix, workers)``.
FAMILIES: dict[str, Callable[..., synth.SynthCohort]] = {
    "synth": synth.synthesize_cohort,
    "relaxometry": relaxometry_phantom.synthesize_cohort,
}
