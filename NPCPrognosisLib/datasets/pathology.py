"""A synthetic pathology block: what a whole-slide-image pipeline run elsewhere would hand over per patient.

The IC-response study this product follows fuses MRI with features of the biopsy's whole-slide image (a
multiple-instance-learning model's outputs and slide-level measurements). To give the fusion something real to
find, each phantom patient gets such a block, drawn from the generator's *truth* (the shared ``truth.csv``
contract, so every phantom family gets one without sharing any of its image or outcome code):

* ``necrosis_pct`` - the biopsy's necrotic share: the true necrosis fraction seen through sampling noise;
* ``cellularity_pct`` and ``ki67_pct`` - slide measures of the tumour's cellular heterogeneity (the texture
  the images only hint at through partial volume and noise);
* ``mil_risk`` and ``mil_response`` - a MIL model's two slide scores, correlated ~0.55 with the true
  log-hazard and the true log-odds of response (trained elsewhere: noisy, but independent of the images);
* ``til_density`` and ``patch_pc1`` ... ``patch_pc6`` - measurements with no signal at all (negative
  controls a fusion method must learn to ignore).

A fifth of the patients have no slide (no row), as in practice, so missing-modality handling is exercised.
Drawn from its own random stream (seeded by the cohort seed), so adding the block changes nothing else of a
cohort. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Columns of ``pathology.csv`` after ``patient_id``.
PATHOLOGY_COLUMNS: tuple[str, ...] = (
    "necrosis_pct", "cellularity_pct", "ki67_pct", "mil_risk", "mil_response", "til_density",
    *(f"patch_pc{k}" for k in range(1, 7)),
)
#: Share of patients without a slide.
MISSING_SLIDE_FRACTION = 0.2
#: Correlation of the MIL scores with the truth they read.
MIL_CORRELATION = 0.55
_STREAM = 0x5A1DE  # separates this block's random numbers from the images' and outcomes'


def _standardised(values: np.ndarray) -> np.ndarray:
    sd = values.std()
    return (values - values.mean()) / (sd if sd > 0 else 1.0)


def pathology_block(truth: pd.DataFrame, seed: int,
                    missing_fraction: float = MISSING_SLIDE_FRACTION) -> pd.DataFrame:
    """Slide features for the patients of a truth table.

    Parameters
    ----------
    truth : pandas.DataFrame
        ``truth.csv`` rows: ``patient_id``, ``lp_dmfs``, ``heterogeneity``, ``necrosis_fraction`` and
        ``p_ic_response``.
    seed : int
        The cohort's seed (the block has its own stream under it).
    missing_fraction : float, default 0.2
        Share of patients without a slide; they get no row.

    Returns
    -------
    table : pandas.DataFrame
        ``patient_id`` and :data:`PATHOLOGY_COLUMNS`, one row per patient with a slide.
    """
    rng = np.random.default_rng([int(seed), _STREAM])
    n = len(truth)
    necrosis = truth["necrosis_fraction"].to_numpy(float)
    heterogeneity = _standardised(truth["heterogeneity"].to_numpy(float))
    lp = _standardised(truth["lp_dmfs"].to_numpy(float))
    p = np.clip(truth["p_ic_response"].to_numpy(float), 1e-4, 1 - 1e-4)
    log_odds = _standardised(np.log(p / (1 - p)))
    rho = MIL_CORRELATION
    noise = np.sqrt(1.0 - rho ** 2)
    table = pd.DataFrame({
        "patient_id": truth["patient_id"].astype(str).to_numpy(),
        "necrosis_pct": np.clip(100.0 * necrosis * np.exp(rng.normal(0.0, 0.3, n)) + rng.normal(0.0, 2.0, n), 0, 100),
        "cellularity_pct": np.clip(55.0 + 12.0 * (0.8 * heterogeneity + 0.6 * rng.standard_normal(n)), 5, 98),
        "ki67_pct": 100.0 / (1.0 + np.exp(-(-0.8 + 0.7 * heterogeneity + 0.7 * rng.standard_normal(n)))),
        "mil_risk": rho * lp + noise * rng.standard_normal(n),
        "mil_response": rho * log_odds + noise * rng.standard_normal(n),
        "til_density": np.exp(rng.normal(4.0, 0.6, n)),
        **{f"patch_pc{k}": rng.standard_normal(n) for k in range(1, 7)},
    })
    has_slide = rng.random(n) >= missing_fraction
    return table[has_slide].reset_index(drop=True).round(4)


def write_pathology(truth_path: str | Path, out_path: str | Path, seed: int) -> Path:
    """``pathology.csv`` for the cohort whose ``truth.csv`` is given (see :func:`pathology_block`)."""
    from NPCPrognosisLib.io.atomic import write_text_atomic

    truth = pd.read_csv(truth_path, dtype={"patient_id": str})
    write_text_atomic(out_path, pathology_block(truth, seed).to_csv(index=False))
    return Path(out_path)
