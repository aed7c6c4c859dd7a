"""Relaxometry phantom: a second, independently modelled family of synthetic NPC cohorts ("family B").

SYNTHETIC DATA - NOT CLINICAL. Everything this module writes is drawn from a random model; no patient,
scanner or hospital stands behind any number or image, and nothing here may inform a clinical decision.

Why it exists: the survival models are tuned on :mod:`NPCPrognosisLib.datasets.synth` ("family A"). A model
can fit the quirks of one generator (its anatomy, intensity table, texture or hazard shape) rather than the
signal it is meant to find, so methods are also measured here, on data produced by different modelling
choices. Only the output contract is shared (``manifest.csv`` with ``synth.MANIFEST_COLUMNS``, ``truth.csv``
with ``synth.TRUTH_COLUMNS``, the :class:`~NPCPrognosisLib.datasets.synth.SynthCohort` record), so the same
pipeline reads both families.

Modelling choices, and why:

* **Anatomy is analytic, not painted.** Every structure (neck outline, subcutaneous fat, airway with its
  mucosa, vertebrae, discs, spinal canal, vessels, glands, tumour, nodes) is an implicit surface whose level
  function is close to a signed distance in mm. Any scanner grid samples it directly, so a T2W series on a
  different grid from the CET1W series sees the same anatomy without a resampling step of ours, and partial
  volume is a linear occupancy ramp one (geometric mean) voxel wide across each surface.
* **Intensities come from physics.** Each tissue has a proton density, T1, T2, gadolinium uptake and fat
  fraction; each patient's scanner has a field strength (1.5 or 3 T: longer T1, slightly shorter T2), its own
  TR/TE, and the spin-echo equation ``PD (1 - 2 exp(-(TR - TE/2)/T1) + exp(-TR/T1)) exp(-TE/T2)`` turns
  tissue into signal. CET1W shortens T1 by ``r1 * [Gd]`` (relaxivity by field strength) and is fat-suppressed
  on most scanners, with suppression failing towards the edge of the field of view. Because contrasts follow
  from relaxation, sequence-to-sequence ratios change with the protocol, as between real hospitals.
* **Scanner effects**: a receive-coil array (6-8 surface coils around the neck, root-sum-of-squares
  sensitivity mixed with a uniform body-coil term) instead of a random polynomial bias; Rician noise
  (magnitude of complex Gaussian) whose level depends on field strength; a per-sequence gain and offset;
  integer storage like a scanner's pixels.
* **Tumour biology tied to outcome**: the primary is a star-shaped solid (radial function of a few random
  cosine lobes) with an optional necrotic core (deepest part, irregular edge). Its viable part contains a
  hypercellular sub-region (lower T2 and PD, less extracellular space so less enhancement), the set where a
  Gaussian random field of patient-specific correlation length exceeds the quantile that yields the drawn
  fraction. ``truth.csv``'s ``heterogeneity`` column holds that hypercellular fraction of the viable tumour:
  it raises the risk of distant metastasis (and improves induction-chemotherapy response), and it is visible
  as a darker, more mottled T2W tumour. The random fields are sums of random plane waves, so they too are
  functions of physical position, identical on every grid.
* **Nodes** have gamma-distributed short-axis diameters, a cranio-caudal elongation, a level (II, III, IV)
  and side; rENE 1 is a coalescent two-lobed node, rENE 2 an irregular, spiculated boundary with stranding
  (oedema) in the surrounding fat. Large nodes may have a necrotic centre.
* **Outcomes**: accelerated failure time models, not proportional hazards. Distant metastasis and
  locoregional failure times are log-logistic, death is log-normal; a shared normal frailty correlates them.
  DMFS counts distant metastasis (death first censors it), PFS is the first of locoregional failure,
  metastasis or death, OS is death. ``lp_*`` in ``truth.csv`` are the AFT linear predictors in the risk
  direction (higher = shorter expected time). Administrative censoring is uniform on 36-120 months plus
  exponential drop-out. Chemotherapy is confounded by stage and age (advanced stage: nearly always; older
  patients: fewer cycles); cumulative cisplatin above 160 mg/m2 prolongs time to metastasis only in the
  high-risk half (pre-treatment lp > 0, the population median by construction).
* **Geometry**: in-plane spacing 0.8-1.0 mm, slices 3-4 mm over ~200 x 200 x 120 mm; a third of the grids
  are stored flipped (RAS-like, reversed slice order or both), some with small tilts; half the T2W series
  have their own grid. Every tenth patient (indices 3, 13, 23, ...) is written as DICOM series folders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy.special import expit

from NPCPrognosisLib.contract import ENDPOINTS, LABELS, SEQUENCES
from NPCPrognosisLib.datasets.cohort_files import (
    patient_generators,
    patient_rows,
    write_cohort,
    write_patient_images,
    writes_dicom,
)
from NPCPrognosisLib.datasets.synth import MANIFEST_COLUMNS, TRUTH_COLUMNS, SynthCohort, SynthPatient

if TYPE_CHECKING:
    import pandas as pd

SYNTHETIC_NOTICE = (
    "SYNTHETIC DATA - NOT CLINICAL. These images, masks, clinical factors and outcomes were generated by "
    "NPCPrognosisLib.datasets.relaxometry_phantom (relaxometry phantom, family B) from a random model for software "
    "testing and method evaluation only. They describe no real patient and must never be used for clinical "
    "decisions or reported as clinical results."
)

#: Tissue -> (proton density, T1 ms at 1.5 T, T2 ms at 1.5 T, gadolinium uptake mM, fat fraction).
TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "air": (0.0, 1000.0, 1.0, 0.0, 0.0),
    "fat": (0.90, 290.0, 130.0, 0.01, 1.0),
    "muscle": (0.72, 1000.0, 42.0, 0.06, 0.0),
    "mucosa": (0.85, 1100.0, 85.0, 0.40, 0.0),
    "gland": (0.82, 620.0, 85.0, 0.22, 0.35),
    "marrow": (0.85, 450.0, 70.0, 0.10, 0.6),
    "cortex": (0.05, 1000.0, 5.0, 0.0, 0.0),
    "csf": (1.0, 3800.0, 1800.0, 0.0, 0.0),
    "cord": (0.75, 850.0, 75.0, 0.0, 0.0),
    "disc": (0.80, 1100.0, 110.0, 0.03, 0.0),
    "vessel": (0.08, 1400.0, 200.0, 0.0, 0.0),  # flow void on spin echo
    "oedema": (0.88, 1300.0, 150.0, 0.15, 0.0),
    "tumour": (0.82, 1150.0, 95.0, 0.35, 0.0),
    "hypercellular": (0.78, 1050.0, 62.0, 0.22, 0.0),
    "necrosis": (0.92, 2200.0, 260.0, 0.0, 0.0),
    "node": (0.83, 1100.0, 88.0, 0.30, 0.0),
}
TISSUE: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

#: AFT effects on the DMFS linear predictor (risk direction, log time-ratio units).
DMFS_EFFECTS: dict[str, float] = {
    "log_gtvp_ml": 0.42, "hypercellular_fraction": 2.4, "necrosis_fraction": 1.4, "log1p_gtvn_ml": 0.30,
    "rene": 0.25, "log10_ebv": 0.28, "age_per_decade": 0.08, "ldh_high": 0.30,
}
#: Makes the population median of the pre-treatment DMFS lp zero, so ``high_risk`` is ``lp > 0`` and never depends
#: on who else is in a cohort; computed once from 200k draws (``LP_CENTRE + population_lp_median()``).
LP_CENTRE = 0.712
CHEMO_EFFECT = 0.5  # log time ratio of ccnd > 160 mg/m2 on metastasis, high-risk patients only
CCND_THRESHOLD = 160.0
LDH_ULN = 245.0
_AFT = {"dmfs": (math.log(85.0), 0.85), "pfs": (math.log(1000.0), 0.90), "os": (math.log(160.0), 1.10)}
_FRAILTY_SD = 0.30
_MAX_NODES = 4
_NODE_LEVEL_Z = {2: (-4.0, 12.0), 3: (-34.0, -14.0), 4: (-62.0, -44.0)}
@dataclass
class PhantomPatient(SynthPatient):
    """One phantom patient (the record of family A plus the scanner protocol). ``t2`` may lie on its own grid;
    ``mask`` and ``tissue`` lie on the t1c grid."""

    protocol: dict[str, object] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------------------------
# Clinical record and outcomes (no images)
# ---------------------------------------------------------------------------------------------------------

def _draw_nodes(rng: np.random.Generator, z_burden: float) -> list[dict[str, float]]:
    """Metastatic nodes: count ~ Poisson(burden), gamma short-axis diameter, elongation, side and level."""
    count = min(_MAX_NODES, int(rng.poisson(math.exp(0.45 + 0.30 * z_burden))))
    first_side = -1.0 if rng.random() < 0.5 else 1.0
    nodes = []
    for j in range(count):
        diameter = min(7.0 + rng.gamma(2.2, 4.5), 55.0)
        elongation = rng.uniform(1.1, 1.6)
        side = first_side if j == 0 or rng.random() < 0.7 else -first_side
        level = int(rng.choice([2, 3], p=[0.7, 0.3])) if j == 0 else int(rng.choice([2, 3, 4], p=[0.5, 0.38, 0.12]))
        volume = math.pi / 6.0 * diameter * 0.85 * diameter * elongation * diameter / 1000.0
        nodes.append({"diameter_mm": diameter, "elongation": elongation, "side": side, "level": level,
                      "volume_ml": volume})
    return nodes


def _draw_record(rng: np.random.Generator) -> dict[str, object]:
    """Tumour biology, clinical factors, treatment and the three outcomes of one patient."""
    age = float(np.round(18.0 + 62.0 * rng.beta(4.0, 3.2)))
    male = bool(rng.random() < 0.73)
    z_v = float(rng.standard_normal())
    gtvp_ml = float(np.clip(math.exp(math.log(16.0) + 0.75 * z_v), 2.5, 85.0))
    z_h = 0.35 * z_v + 0.94 * float(rng.standard_normal())
    hyper = float(0.04 + 0.50 * expit(1.5 * z_h))
    grain_mm = float(rng.uniform(2.5, 6.0))
    has_necrosis = rng.random() < expit(-1.0 + 1.2 * z_v)
    necrosis = float(0.04 + 0.26 * rng.beta(1.6, 3.0)) if has_necrosis else 0.0
    nodes = _draw_nodes(rng, z_v)
    gtvn_ml = float(sum(nd["volume_ml"] for nd in nodes))
    if nodes:
        d_max = max(nd["diameter_mm"] for nd in nodes)
        latent = -1.4 + 0.09 * (d_max - 15.0) + 0.45 * (len(nodes) - 1) + rng.logistic()
        rene = 0 if latent < 0.0 else (1 if latent < 1.8 else 2)
        bilateral = len({nd["side"] for nd in nodes}) > 1
        n_stage = 3 if any(nd["level"] == 4 for nd in nodes) else (2 if bilateral else 1)
    else:
        rene, n_stage = 0, 0
    extent = math.log(gtvp_ml) + rng.normal(0.0, 0.3)
    t_stage = 1 + int(np.searchsorted([math.log(7.0), math.log(15.0), math.log(32.0)], extent))
    log_ebv = 2.0 + 0.55 * z_v + 0.45 * math.log1p(gtvn_ml) + 0.9 * hyper + rng.normal(0.0, 0.85)
    ebv = 0.0 if log_ebv < math.log10(40.0) else float(math.floor(10.0 ** log_ebv))
    ebv_missing = bool(rng.random() < 0.05)
    ldh = float(np.clip(round(172.0 * math.exp(0.07 * z_v + 0.06 * math.log1p(gtvn_ml) + rng.normal(0.0, 0.16))),
                        95, 520))
    advanced = t_stage >= 3 or n_stage >= 2
    chemo = bool(rng.random() < expit((2.4 if advanced else -0.7) - 0.04 * (age - 52.0)))
    weekly = rng.random() < 0.5
    if weekly:
        cycles = int(np.clip(6 - rng.poisson(max(0.3, 1.8 + 0.05 * (age - 52.0))), 2, 7))
        ccnd = 40.0 * cycles
    else:
        ccnd = 100.0 * (3 - int(rng.binomial(2, expit(-0.2 + 0.05 * (age - 52.0)))))
    ccnd = ccnd if chemo else 0.0
    p_ic_response = float(expit(0.5 + 3.0 * (hyper - 0.29) - 4.0 * necrosis - 0.45 * z_v))
    ic_response = bool(rng.random() < p_ic_response)
    rec: dict[str, object] = {
        "age": age, "male": male, "z_burden": z_v, "gtvp_volume_ml": gtvp_ml, "heterogeneity": hyper,
        "grain_mm": grain_mm, "necrosis_fraction": necrosis, "nodes": nodes, "n_nodes": len(nodes),
        "gtvn_volume_ml": gtvn_ml, "rene": rene, "t_stage": t_stage, "n_stage": n_stage, "ebv": ebv,
        "ebv_missing": ebv_missing, "ldh": ldh, "chemo": chemo, "ccnd": ccnd, "ic_response": ic_response,
        "p_ic_response": p_ic_response,
    }
    rec.update(_draw_outcomes(rng, rec))
    return rec


def _pretreatment_lp(rec: dict[str, object]) -> float:
    """DMFS linear predictor before treatment (uses the true EBV DNA even where the manifest hides it)."""
    c = DMFS_EFFECTS
    return (
        c["log_gtvp_ml"] * math.log(rec["gtvp_volume_ml"] / 16.0)
        + c["hypercellular_fraction"] * (rec["heterogeneity"] - 0.29)
        + c["necrosis_fraction"] * rec["necrosis_fraction"]
        + c["log1p_gtvn_ml"] * math.log1p(rec["gtvn_volume_ml"])
        + c["rene"] * rec["rene"]
        + c["log10_ebv"] * (math.log10(rec["ebv"] + 1.0) - 2.5)
        + c["age_per_decade"] * (rec["age"] - 52.0) / 10.0
        + c["ldh_high"] * (rec["ldh"] > LDH_ULN)
        - LP_CENTRE
    )


def _draw_outcomes(rng: np.random.Generator, rec: dict[str, object]) -> dict[str, object]:
    """AFT event times (log-logistic metastasis and locoregional failure, log-normal death), censored."""
    base = _pretreatment_lp(rec)
    high = base > 0.0
    benefit = bool(high and rec["chemo"] and rec["ccnd"] > CCND_THRESHOLD)
    lp = {
        "dmfs": base - CHEMO_EFFECT * benefit,
        "pfs": 0.75 * base + 0.20 * (rec["t_stage"] >= 3) + 0.15 * (rec["rene"] > 0) - 0.35 * benefit,
        "os": 0.70 * base + 0.25 * (rec["age"] - 52.0) / 10.0 - 0.30 * benefit,
    }
    frailty = _FRAILTY_SD * float(rng.standard_normal())
    log_t = {}
    for name, error in (("dmfs", rng.logistic()), ("pfs", rng.logistic()), ("os", rng.standard_normal())):
        intercept, scale = _AFT[name]
        log_t[name] = intercept - lp[name] + frailty + scale * float(error)
    t_dm, t_loc, t_death = (math.exp(min(log_t[k], 12.0)) for k in ("dmfs", "pfs", "os"))
    censor = min(rng.uniform(36.0, 120.0), rng.exponential(300.0))
    t_prog = min(t_loc, t_dm, t_death)
    ends = {"dmfs": (min(t_dm, t_death), t_dm <= t_death), "os": (t_death, True), "pfs": (t_prog, True)}
    out: dict[str, object] = {"lp_" + k: float(v) for k, v in lp.items()}
    out.update(lp_base=float(base), high_risk=bool(high), chemo_benefit_applied=benefit)
    for name, (t_end, is_event) in ends.items():
        out[name + "_time"] = max(round(min(t_end, censor), 2), 0.01)
        out[name + "_event"] = int(bool(is_event) and t_end <= censor)
    return out


def _records(rec: dict[str, object], patient_id: str) -> tuple[dict[str, object], dict[str, object]]:
    """The manifest's clinical/outcome fields and the truth fields of one record."""
    clinical: dict[str, object] = {
        "age": int(rec["age"]), "sex": "M" if rec["male"] else "F", "t_stage": f"T{rec['t_stage']}",
        "n_stage": f"N{rec['n_stage']}", "ebv_dna": None if rec["ebv_missing"] else int(rec["ebv"]),
        "rene": int(rec["rene"]), "ldh": int(rec["ldh"]), "chemo": int(rec["chemo"]), "ccnd": float(rec["ccnd"]),
    }
    for name in ENDPOINTS:
        clinical[name + "_time"] = float(rec[name + "_time"])
        clinical[name + "_event"] = int(rec[name + "_event"])
    clinical["ic_response"] = int(rec["ic_response"])
    truth: dict[str, object] = {"patient_id": patient_id}
    for col in TRUTH_COLUMNS[1:]:
        value = rec[col]
        truth[col] = float(value) if col.startswith(("lp_", "p_")) or col.endswith(("_ml", "heterogeneity",
                                                                                    "fraction")) else int(value)
    return clinical, truth


def simulate_outcomes(n: int, seed: int, *, id_prefix: str = "RLX") -> pd.DataFrame:
    """Clinical factors, outcomes and truth of ``synthesize_cohort(n, seed)`` without rendering images.

    Parameters
    ----------
    n : int
        Number of patients.
    seed : int
        Cohort seed; row i equals patient i of the image cohort with the same seed.
    id_prefix : str, default "RLX"
        Prefix of the patient IDs.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient_id``, the manifest's clinical and outcome columns, then the truth
        columns (``lp_dmfs``, ``lp_os``, ``lp_pfs``, ``heterogeneity``, ...).
    """
    import pandas as pd

    rows = []
    for i, rng in enumerate(patient_generators(n, seed)):
        clinical, truth = _records(_draw_record(rng), f"{id_prefix}{i + 1:04d}")
        rows.append(dict(truth, **clinical))
    cols = ["patient_id", *MANIFEST_COLUMNS[5:]]
    cols += [c for c in TRUTH_COLUMNS[1:] if c not in cols]
    return pd.DataFrame(rows, columns=cols)


@lru_cache(maxsize=1)
def population_lp_median(n: int = 200_000, seed: int = 20240917) -> float:
    """Median of the pre-treatment DMFS lp over a fixed large draw; :data:`LP_CENTRE` makes it ~0.

    Parameters
    ----------
    n : int, default 200000
        Number of records drawn.
    seed : int, default 20240917
        Seed of the draw.

    Returns
    -------
    float
        The median (0 up to sampling error when :data:`LP_CENTRE` is current).
    """
    rng = np.random.default_rng(seed)
    return float(np.median([_pretreatment_lp(_draw_record(rng)) for _ in range(int(n))]))


# ---------------------------------------------------------------------------------------------------------
# Shapes: implicit surfaces with a level function ~ signed distance in mm (negative inside)
# ---------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _sphere_directions(count: int = 2000) -> np.ndarray:
    """Near-uniform unit vectors (Fibonacci lattice) for integrating over directions."""
    k = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * k / count)
    azimuth = math.pi * (1.0 + 5.0 ** 0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


class _Tube:
    """Ellipse swept along z; centre and radii interpolated between knots, flat caps at the ends."""

    def __init__(self, zk, cx, cy, rx, ry) -> None:
        self.zk = np.asarray(zk, float)
        self.cx, self.cy, self.rx, self.ry = (np.broadcast_to(np.asarray(v, float), self.zk.shape).copy()
                                              for v in (cx, cy, rx, ry))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = [np.min(self.cx - self.rx), np.min(self.cy - self.ry), self.zk[0]]
        hi = [np.max(self.cx + self.rx), np.max(self.cy + self.ry), self.zk[-1]]
        return np.array(lo), np.array(hi)

    def level(self, x, y, z) -> np.ndarray:
        cx, cy, rx, ry = (np.interp(z, self.zk, v).astype(np.float32) for v in (self.cx, self.cy, self.rx, self.ry))
        q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        lev = (q - 1.0) * np.minimum(rx, ry)
        return np.maximum(lev, np.maximum(self.zk[0] - z, z - self.zk[-1]))


class _Ellipsoid:
    def __init__(self, center, radii) -> None:
        self.c, self.r = np.asarray(center, float), np.asarray(radii, float)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.c - self.r, self.c + self.r

    def level(self, x, y, z) -> np.ndarray:
        q = np.sqrt(((x - self.c[0]) / self.r[0]) ** 2 + ((y - self.c[1]) / self.r[1]) ** 2
                    + ((z - self.c[2]) / self.r[2]) ** 2)
        return (q - 1.0) * float(self.r.min())


class _Star:
    """Star-shaped solid: ``|M (x - c)| < r(u)`` with ``r(u) = exp(sum_k a_k cos(w_k u.v_k + phi_k))``."""

    def __init__(self, rng: np.random.Generator, center, axes, *, lobes: int, freq: tuple[float, float],
                 amplitude: float, max_rotation: float = 30.0) -> None:
        self.c = np.asarray(center, float)
        self.axes = np.asarray(axes, float)
        self.rot = _random_rotation(rng, max_rotation)
        v = rng.standard_normal((lobes, 3))
        self.v = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.w = rng.uniform(freq[0], freq[1], lobes)
        self.phi = rng.uniform(0.0, 2.0 * math.pi, lobes)
        self.a = amplitude * rng.uniform(0.5, 1.0, lobes)

    def _radial(self, u: np.ndarray) -> np.ndarray:
        arg = np.tensordot(u, self.v.T, axes=1) * self.w + self.phi
        return np.exp((np.cos(arg) * self.a).sum(axis=-1))

    def fit_volume(self, volume_ml: float) -> _Star:
        r3 = float(np.mean(self._radial(_sphere_directions()) ** 3))
        volume = 4.0 / 3.0 * math.pi * float(np.prod(self.axes)) * r3 / 1000.0
        self.axes = self.axes * (volume_ml / volume) ** (1.0 / 3.0)
        return self

    def extent(self) -> float:
        return float(self.axes.max() * self._radial(_sphere_directions()).max() * 1.15)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        e = self.extent()
        return self.c - e, self.c + e

    def polar(self, x, y, z) -> tuple[np.ndarray, np.ndarray]:
        """(rho, r(u)): normalised radius of each point and the surface radius in its direction."""
        d = np.stack(np.broadcast_arrays(x - self.c[0], y - self.c[1], z - self.c[2]), axis=-1)
        p = (d @ self.rot) / self.axes
        rho = np.sqrt((p ** 2).sum(axis=-1))
        u = p / np.maximum(rho, 1e-6)[..., None]
        return rho.astype(np.float32), self._radial(u).astype(np.float32)

    def level(self, x, y, z) -> np.ndarray:
        rho, r = self.polar(x, y, z)
        return (rho - r) * float(self.axes.mean())

    def depth(self, x, y, z) -> np.ndarray:
        rho, r = self.polar(x, y, z)
        return rho / r


class _Union:
    def __init__(self, *parts) -> None:
        self.parts = parts

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [p.bounds() for p in self.parts]
        return np.min([lo for lo, _ in b], axis=0), np.max([hi for _, hi in b], axis=0)

    def level(self, x, y, z) -> np.ndarray:
        return np.minimum.reduce([p.level(x, y, z) for p in self.parts])

    def depth(self, x, y, z) -> np.ndarray:
        return np.minimum.reduce([p.depth(x, y, z) for p in self.parts])


class _Dilated:
    def __init__(self, shape, margin: float) -> None:
        self.shape, self.margin = shape, margin

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bounds()
        return lo - self.margin, hi + self.margin

    def level(self, x, y, z) -> np.ndarray:
        return self.shape.level(x, y, z) - self.margin


class _Field:
    """Stationary Gaussian random field with covariance exp(-r^2 / 2L^2), as a sum of random plane waves."""

    def __init__(self, rng: np.random.Generator, length_mm: float, waves: int = 48) -> None:
        self.k = rng.normal(0.0, 1.0 / length_mm, (waves, 3))
        self.phi = rng.uniform(0.0, 2.0 * math.pi, waves)

    def __call__(self, x, y, z) -> np.ndarray:
        acc = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        for (kx, ky, kz), p in zip(self.k, self.phi):
            acc += np.cos(kx * x + ky * y + kz * z + p)
        return acc * np.float32(math.sqrt(2.0 / len(self.phi)))


# ---------------------------------------------------------------------------------------------------------
# Scene: layers painted in order; a layer's appearance is a tissue or a function of position
# ---------------------------------------------------------------------------------------------------------

Appearance = Callable  # (x, y, z, tissue signals) -> (signal per sequence, tissue index array)


@dataclass
class _Layer:
    shape: object
    tissue: str
    label: int = 0
    opacity: float = 1.0
    appearance: Appearance | None = None  # (x, y, z, tissue signals) -> (signal per sequence, tissue index)


def _anatomy(rng: np.random.Generator) -> list[_Layer]:
    """Head-and-neck anatomy from skull base (z ~ +50 mm) to the lower neck (z ~ -90 mm), LPS mm."""
    size = rng.uniform(0.92, 1.08)
    fat_mm = rng.uniform(4.0, 14.0)
    zk = np.array([-95.0, -60.0, 0.0, 30.0, 65.0])
    body_rx = np.array([58.0, 58.0, 62.0, 68.0, 74.0]) * size
    body_ry = np.array([60.0, 60.0, 70.0, 82.0, 92.0]) * size
    body_cy = np.array([15.0, 15.0, 12.0, 8.0, 5.0])
    layers = [
        _Layer(_Tube(zk, 0.0, body_cy, body_rx, body_ry), "fat"),
        _Layer(_Tube(zk, 0.0, body_cy, body_rx - fat_mm, body_ry - fat_mm), "muscle"),
    ]
    for s in (-1.0, 1.0):
        layers += [
            _Layer(_Ellipsoid([s * 22.0, -2.0, 26.0], [6.0, 10.0, 14.0] * rng.uniform(0.85, 1.15, 3)), "fat"),
            _Layer(_Ellipsoid([s * 47.0 * size, 12.0, 16.0], [11.0, 17.0, 21.0] * rng.uniform(0.85, 1.15, 3)),
                   "gland"),
            _Layer(_Ellipsoid([s * 32.0 * size, -28.0, -26.0], [11.0, 10.0, 9.0] * rng.uniform(0.85, 1.15, 3)),
                   "gland"),
            _Layer(_Tube([-95.0, 0.0, 50.0], s * np.array([20.0, 18.0, 16.0]), [10.0, 8.0, 10.0], 3.5, 3.5),
                   "vessel"),
            _Layer(_Tube([-95.0, 0.0, 50.0], s * np.array([29.0, 27.0, 26.0]), [14.0, 12.0, 14.0], 5.5, 5.0),
                   "vessel"),
        ]
    spine_cy = np.array([26.0, 27.0, 28.0])
    spine_z = [-95.0, -30.0, 22.0]
    layers += [
        _Layer(_Tube(spine_z, 0.0, spine_cy, 16.0, 13.0), "cortex"),
        _Layer(_Tube(spine_z, 0.0, spine_cy, 14.0, 11.0), "marrow"),
        _Layer(_Ellipsoid([0.0, 14.0, 38.0], [13.0, 15.0, 9.0]), "cortex"),
        _Layer(_Ellipsoid([0.0, 14.0, 38.0], [11.0, 13.0, 7.0]), "marrow"),
    ]
    disc_gap = rng.uniform(15.0, 18.0)
    for k in range(7):
        layers.append(_Layer(_Ellipsoid([0.0, 27.0, 14.0 - disc_gap * k], [15.0, 12.0, 2.5]), "disc"))
    layers += [
        _Layer(_Tube([-95.0, 25.0], 0.0, 48.0, 9.0, 7.0), "csf"),
        _Layer(_Tube([-95.0, 25.0], 0.0, 48.0, 5.0, 4.0), "cord"),
    ]
    az = np.array([-95.0, -45.0, -25.0, -5.0, 15.0, 35.0, 55.0])
    acy = np.array([-26.0, -24.0, -16.0, -10.0, -10.0, -14.0, -22.0])
    arx = np.array([9.0, 9.0, 12.0, 14.0, 11.0, 13.0, 10.0]) * rng.uniform(0.85, 1.15)
    ary = np.array([8.0, 8.0, 8.0, 9.0, 7.0, 9.0, 8.0]) * rng.uniform(0.85, 1.15)
    mucosa_mm = rng.uniform(2.0, 4.0)
    layers += [
        _Layer(_Tube(az, 0.0, acy, arx + mucosa_mm, ary + mucosa_mm), "mucosa"),
        _Layer(_Tube(az, 0.0, acy, arx, ary), "air"),
    ]
    return layers


def _quantile_inside(rng: np.random.Generator, shape: _Star, values: Callable, q: float,
                     keep: Callable | None = None) -> float:
    """Quantile ``q`` of ``values`` over points uniformly filling ``shape`` (and ``keep``): grid-independent."""
    lo, hi = shape.bounds()
    pts = lo + (hi - lo) * rng.random((20000, 3))
    x, y, z = (pts[:, a].astype(np.float32) for a in range(3))
    inside = shape.level(x, y, z) < 0
    if keep is not None:
        inside &= keep(x, y, z)
    if inside.sum() < 50:
        inside = shape.level(x, y, z) < 0
    return float(np.quantile(values(x[inside], y[inside], z[inside]), q))


def _primary(rng: np.random.Generator, rec: dict) -> tuple[_Layer, dict[str, float]]:
    """Primary tumour in the lateral nasopharyngeal wall: necrotic core, hypercellular GRF sub-region."""
    side = -1.0 if rng.random() < 0.5 else 1.0
    center = np.array([side * 8.0, -5.0, 22.0]) + rng.normal(0.0, [2.0, 2.0, 2.0])
    shape = _Star(rng, center, [1.0, 0.9, 1.15] * rng.uniform(0.85, 1.15, 3), lobes=4, freq=(1.0, 3.0),
                  amplitude=0.22).fit_volume(float(rec["gtvp_volume_ml"]))
    g_hyper = _Field(rng, float(rec["grain_mm"]))
    g_nec = _Field(rng, 6.0)
    g_micro = _Field(rng, 1.2, waves=32)
    nec = float(rec["necrosis_fraction"])

    def nec_score(x, y, z):
        return 1.0 - shape.depth(x, y, z) + 0.3 * g_nec(x, y, z)

    thr_n = _quantile_inside(rng, shape, nec_score, 1.0 - nec) if nec > 0 else math.inf
    viable = (lambda x, y, z: nec_score(x, y, z) <= thr_n) if nec > 0 else None
    thr_h = _quantile_inside(rng, shape, g_hyper, 1.0 - float(rec["heterogeneity"]), viable)

    def appearance(x, y, z, sig):
        p_n = expit((nec_score(x, y, z) - thr_n) / 0.03).astype(np.float32) if nec > 0 else np.float32(0.0)
        p_h = expit((g_hyper(x, y, z) - thr_h) / 0.08).astype(np.float32)
        tex = 1.0 + 0.06 * g_micro(x, y, z)
        values = {s: ((1.0 - p_n) * ((1.0 - p_h) * v["tumour"] + p_h * v["hypercellular"]) * tex
                      + p_n * v["necrosis"]) for s, v in sig.items()}
        tissue = np.where(p_n >= 0.5, TISSUE["necrosis"], np.where(p_h >= 0.5, TISSUE["hypercellular"],
                                                                    TISSUE["tumour"]))
        return values, tissue.astype(np.uint8)

    return _Layer(shape, "tumour", LABELS["gtvp"], appearance=appearance), {"side": side}


def _node_layers(rng: np.random.Generator, rec: dict, primary: _Star) -> list[_Layer]:
    """Neck nodes by level and side, clear of the primary; rENE 1 coalescent, rENE 2 spiculated + stranding."""
    nodes = list(rec["nodes"])
    if not nodes:
        return []
    index = max(range(len(nodes)), key=lambda j: nodes[j]["volume_ml"])
    rene = int(rec["rene"])
    placed: list[tuple[np.ndarray, float]] = []
    layers: list[_Layer] = []
    for j in sorted(range(len(nodes)), key=lambda j: j != index):
        nd = nodes[j]
        radius = 0.5 * nd["diameter_mm"]
        zlo, zhi = _NODE_LEVEL_Z[nd["level"]]
        c = np.array([nd["side"] * rng.uniform(30.0, 38.0), rng.uniform(2.0, 14.0), rng.uniform(zlo, zhi)])
        if nd["level"] == 4:
            c[:2] = [nd["side"] * rng.uniform(26.0, 33.0), rng.uniform(-4.0, 8.0)]
        reach = radius * nd["elongation"]
        for _ in range(40):  # push caudally until clear of the primary and of earlier nodes (8 mm gap)
            gap_primary = float(primary.level(*(np.float32(v) for v in c))) - reach - 8.0
            gaps = [np.linalg.norm(c - c2) - r2 - reach - 8.0 for c2, r2 in placed]
            worst = min([gap_primary, *gaps])
            if worst >= 0:
                break
            c[2] -= -worst + 1.0
        placed.append((c, reach * (1.6 if j == index and rene == 1 else 1.0)))
        axes = np.array([radius, 0.85 * radius, reach])
        spiculated = j == index and rene == 2
        shape = _Star(rng, c, axes, lobes=8 if spiculated else 3, freq=(6.0, 10.0) if spiculated else (1.0, 2.5),
                      amplitude=0.11 if spiculated else 0.05, max_rotation=15.0)
        if j == index and rene == 1:  # coalescent: a second lobe fused caudo-laterally
            shape.fit_volume(0.6 * nd["volume_ml"])
            c2 = c + np.array([0.35 * nd["side"], 0.2, -1.3]) * shape.axes.mean()
            lobe = _Star(rng, c2, axes, lobes=3, freq=(1.0, 2.5), amplitude=0.05).fit_volume(0.45 * nd["volume_ml"])
            shape = _Union(shape, lobe)
        else:
            shape.fit_volume(nd["volume_ml"])
        if spiculated:
            layers.append(_Layer(_Dilated(shape, 4.0), "oedema", opacity=0.45))
        cystic = nd["diameter_mm"] >= 22.0 and rng.random() < 0.5
        layers.append(_Layer(shape, "node", LABELS["gtvn"], appearance=_node_appearance(rng, shape, cystic)))
    return layers


def _node_appearance(rng: np.random.Generator, shape, cystic: bool) -> Appearance:
    g_micro = _Field(rng, 1.5, waves=32)

    def appearance(x, y, z, sig):
        tex = 1.0 + 0.04 * g_micro(x, y, z)
        p_n = expit((0.45 - shape.depth(x, y, z)) / 0.05).astype(np.float32) if cystic else np.zeros_like(tex)
        values = {s: (1.0 - p_n) * v["node"] * tex + p_n * v["necrosis"] for s, v in sig.items()}
        tissue = np.where(p_n >= 0.5, TISSUE["necrosis"], TISSUE["node"]).astype(np.uint8)
        return values, tissue

    return appearance


# ---------------------------------------------------------------------------------------------------------
# Scanner: grid, protocol, signal equation, coil sensitivity, noise
# ---------------------------------------------------------------------------------------------------------

_FLIPS = (np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]))


@dataclass
class _Grid:
    size: tuple[int, int, int]  # x, y, z
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray  # columns: physical direction of the x, y, z index axes

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    @property
    def matrix(self) -> np.ndarray:
        return self.direction * self.spacing[None, :]

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index block (z, y, x slices) covering the physical box [lo, hi], or None when outside."""
        corners = np.array([[lo[0] if b & 1 == 0 else hi[0], lo[1] if b & 2 == 0 else hi[1],
                             lo[2] if b & 4 == 0 else hi[2]] for b in range(8)])
        idx = np.linalg.solve(self.matrix, (corners - self.origin).T).T
        i0 = np.clip(np.floor(idx.min(axis=0)) - 1, 0, self.size).astype(int)
        i1 = np.clip(np.ceil(idx.max(axis=0)) + 2, 0, self.size).astype(int)
        if np.any(i1 <= i0):
            return None
        return slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0])

    def coords(self, box=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical x, y, z (float32) of every voxel in ``box`` (default: the whole grid)."""
        box = box or (slice(0, self.size[2]), slice(0, self.size[1]), slice(0, self.size[0]))
        k = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None, None]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :, None]
        i = np.arange(box[2].start, box[2].stop, dtype=np.float64)[None, None, :]
        m, o = self.matrix, self.origin
        return tuple(((o[a] + m[a, 2] * k) + (m[a, 1] * j + m[a, 0] * i)).astype(np.float32) for a in range(3))

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing([float(v) for v in self.spacing])
        img.SetOrigin([float(v) for v in self.origin])
        img.SetDirection([float(v) for v in self.direction.ravel()])
        return img


def _draw_grid(rng: np.random.Generator, center: np.ndarray, direction: np.ndarray | None = None) -> _Grid:
    """A scanner's axial grid: 0.8-1.0 mm in plane, 3-4 mm slices, ~200 x 200 x 120 mm."""
    sxy, sz = round(rng.uniform(0.8, 1.0), 4), round(rng.uniform(3.0, 4.0), 3)
    nxy = int(round(rng.uniform(195.0, 205.0) / sxy))
    nz = int(round(rng.uniform(115.0, 125.0) / sz))
    if direction is None:
        direction = np.eye(3)
        if rng.random() < 1.0 / 3.0:
            direction = _FLIPS[int(rng.integers(len(_FLIPS)))].copy()
        if rng.random() < 0.4:
            direction = _random_rotation(rng, 5.0) @ direction
    spacing = np.array([sxy, sxy, sz])
    size = np.array([nxy, nxy, nz])
    origin = np.round(center - (direction * spacing[None, :]) @ ((size - 1) / 2.0), 4)
    return _Grid((nxy, nxy, nz), spacing, origin, direction)


def _protocol(rng: np.random.Generator) -> dict[str, object]:
    """Field strength, TR/TE per sequence, contrast dose, fat suppression, noise, gains: one 'hospital'."""
    b0 = 3.0 if rng.random() < 0.45 else 1.5
    tr1, te1 = rng.uniform(450.0, 650.0), rng.uniform(8.0, 15.0)
    return {
        "field_T": b0,
        "tr_te": {"t1": (tr1, te1), "t1c": (tr1, te1), "t2": (rng.uniform(3000.0, 5000.0), rng.uniform(80.0, 110.0))},
        "relaxivity": (3.7 if b0 > 2 else 4.5) * rng.uniform(0.8, 1.2) / 1000.0,  # per ms per mM (dose/timing)
        "fat_sat": bool(rng.random() < 0.75),
        "noise": {s: rng.uniform(0.025, 0.05) * (0.7 if b0 > 2 else 1.0) for s in SEQUENCES},
        "gain": {s: math.exp(rng.uniform(math.log(0.6), math.log(2.0))) for s in SEQUENCES},
        "offset": {s: rng.uniform(0.0, 30.0) for s in SEQUENCES},
        "coil_mix": {s: rng.uniform(0.25, 0.6) for s in SEQUENCES},
        "relax_jitter": np.exp(rng.normal(0.0, 0.04, (len(TISSUES), 2))),
    }


def _spin_echo(pd, t1, t2, tr: float, te: float):
    return pd * (1.0 - 2.0 * np.exp(-(tr - te / 2.0) / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def _tissue_signals(protocol: dict) -> dict[str, dict[str, float]]:
    """Noise-free magnetisation of every tissue in every sequence (before coil, gain and noise)."""
    b0 = protocol["field_T"]
    out: dict[str, dict[str, float]] = {s: {} for s in SEQUENCES}
    for i, (name, (pd, t1, t2, gd, ff)) in enumerate(TISSUES.items()):
        t1_field = t1 * (1.0 + (0.3 * (1.0 - ff) + 0.08 * ff) * (b0 > 2)) * protocol["relax_jitter"][i, 0]
        t2_field = t2 * (0.9 if b0 > 2 else 1.0) * protocol["relax_jitter"][i, 1]
        for s in SEQUENCES:
            tr, te = protocol["tr_te"][s]
            t1_eff = 1.0 / (1.0 / t1_field + protocol["relaxivity"] * gd) if s == "t1c" else t1_field
            out[s][name] = float(_spin_echo(pd, t1_eff, t2_field, tr, te))
    return out


def _fat_residual(x, y, z) -> np.ndarray:
    """Share of fat signal left after spectral fat suppression: good at the centre, failing at the edges."""
    r2 = (x / 95.0) ** 2 + ((y - 10.0) / 110.0) ** 2 + (z / 140.0) ** 2
    return (0.06 + 0.45 * np.clip(r2, 0.0, 1.0) ** 1.5).astype(np.float32)


def _render(layers: list[_Layer], grid: _Grid, sig: dict[str, dict[str, float]], seqs: tuple[str, ...],
            fat_sat: bool, *, with_labels: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Composite the layers on ``grid``: magnetisation per sequence, and (optionally) label and tissue maps."""
    width = float(np.prod(grid.spacing)) ** (1.0 / 3.0)  # partial-volume ramp
    out = {s: np.zeros(grid.shape, np.float32) for s in seqs}
    mask = np.zeros(grid.shape, np.uint8) if with_labels else None
    tissue = np.zeros(grid.shape, np.uint8) if with_labels else None
    fat = {name: p[4] for name, p in TISSUES.items()}
    for layer in layers:
        box = grid.box(*layer.shape.bounds())
        if box is None:
            continue
        x, y, z = grid.coords(box)
        alpha = np.clip(0.5 - layer.shape.level(x, y, z) / width, 0.0, 1.0).astype(np.float32) * layer.opacity
        if not alpha.any():
            continue
        sub = {s: sig[s] for s in seqs}
        index = None
        if layer.appearance is not None:
            values, index = layer.appearance(x, y, z, sub)
        else:
            values = {s: np.float32(v[layer.tissue]) for s, v in sub.items()}
            if fat_sat and "t1c" in seqs and fat[layer.tissue] > 0:
                values["t1c"] = values["t1c"] * (1.0 - fat[layer.tissue] * (1.0 - _fat_residual(x, y, z)))
        for s in seqs:
            block = out[s][box]
            block += alpha * (values[s] - block)
        if with_labels:
            solid = alpha >= 0.5
            mask[box][solid] = layer.label
            tissue[box][solid] = TISSUE[layer.tissue] if index is None else index[solid]
    return out, mask, tissue


def _coil_sensitivity(rng: np.random.Generator, z_center: float) -> Callable:
    """Root-sum-of-squares sensitivity of 6-8 surface coils around the neck, 1 at the array's centre."""
    count = int(rng.integers(6, 9))
    angles = 2.0 * math.pi * (np.arange(count) + rng.uniform(0, 1)) / count + rng.normal(0, 0.15, count)
    rows = np.where(np.arange(count) % 2 == 0, z_center + 15.0, z_center - 45.0) + rng.normal(0, 5.0, count)
    centers = np.stack([85.0 * np.cos(angles), 10.0 + 95.0 * np.sin(angles), rows], axis=1)
    reach = rng.uniform(70.0, 120.0)

    def rss(x, y, z):
        acc = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), np.float32)
        for cx, cy, cz in centers:
            d2 = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / np.float32(reach ** 2)
            acc += (1.0 + d2) ** -3.0
        return np.sqrt(acc)

    ref = float(rss(np.float32(0.0), np.float32(10.0), np.float32(z_center)))
    return lambda x, y, z: rss(x, y, z) / np.float32(ref)


def _coarse_field(func: Callable, grid: _Grid, step: int = 4) -> np.ndarray:
    """A smooth function of position evaluated every ``step`` voxels in plane and linearly interpolated."""
    nz, ny, nx = grid.shape
    xs, ys = np.arange(0, nx + step - 1, step), np.arange(0, ny + step - 1, step)
    coarse = _Grid((len(xs), len(ys), nz), grid.spacing * [step, step, 1], grid.origin, grid.direction)
    values = func(*coarse.coords())
    fx, fy = np.arange(nx) / step, np.arange(ny) / step
    i0, j0 = np.minimum(fx.astype(int), len(xs) - 2), np.minimum(fy.astype(int), len(ys) - 2)
    wx, wy = (fx - i0).astype(np.float32), (fy - j0).astype(np.float32)
    along_x = values[:, :, i0] * (1 - wx) + values[:, :, i0 + 1] * wx
    return along_x[:, j0, :] * (1 - wy)[None, :, None] + along_x[:, j0 + 1, :] * wy[None, :, None]


def _acquire(rng: np.random.Generator, magnetisation: np.ndarray, grid: _Grid, coil: Callable, protocol: dict,
             seq: str, reference_signal: float) -> sitk.Image:
    """Coil shading, Rician noise, gain/offset and integer storage of one sequence."""
    mix = protocol["coil_mix"][seq]
    shading = (1.0 - mix) + mix * _coarse_field(coil, grid)
    clean = magnetisation * shading * np.float32(2500.0)
    sd = np.float32(protocol["noise"][seq] * 2500.0 * reference_signal)
    real = clean + sd * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = sd * rng.standard_normal(clean.shape, dtype=np.float32)
    gain, offset = np.float32(protocol["gain"][seq]), np.float32(protocol["offset"][seq])
    stored = np.sqrt(real * real + imag * imag) * gain + offset
    return grid.image(np.clip(np.rint(stored), 0, 32767).astype(np.int16))


def synthesize_patient(rng: np.random.Generator, patient_id: str, *, dicom: bool = False) -> PhantomPatient:
    """One phantom patient: the record is drawn first (as :func:`simulate_outcomes` does), then the images.

    Parameters
    ----------
    rng : numpy.random.Generator
        The patient's generator; the same state always gives the same patient.
    patient_id : str
        Identifier written into the record.
    dicom : bool, default False
        Restrict the grid to proper rotations (DICOM readers re-sort slices along row x column), as needed
        when the sequences are to be written as DICOM series.

    Returns
    -------
    PhantomPatient
        Images (int16), mask and tissue map on the t1c grid, manifest fields, truth and scanner protocol.
    """
    rec = _draw_record(rng)
    clinical, truth = _records(rec, patient_id)
    layers = _anatomy(rng)
    primary, _ = _primary(rng, rec)
    layers += [primary, *_node_layers(rng, rec, primary.shape)]
    protocol = _protocol(rng)
    center = np.array([rng.uniform(-5.0, 5.0), rng.uniform(5.0, 15.0), rng.uniform(-16.0, -8.0)])
    grid = _draw_grid(rng, center)
    if dicom and np.linalg.det(grid.direction) < 0:
        grid = _Grid(grid.size, grid.spacing, grid.origin, grid.direction @ np.diag([-1.0, 1.0, 1.0]))
        grid.origin = np.round(center - grid.matrix @ ((np.array(grid.size) - 1) / 2.0), 4)
    t2_grid = None
    if rng.random() < 0.5:  # T2W planned on its own grid (same orientation, own spacing and coverage)
        t2_grid = _draw_grid(rng, center + rng.normal(0.0, 2.0, 3), direction=grid.direction)
    sig = _tissue_signals(protocol)
    coil = _coil_sensitivity(rng, float(center[2]) + 25.0)
    seqs = ("t1", "t1c") if t2_grid is not None else SEQUENCES
    mag, mask, tissue = _render(layers, grid, sig, seqs, protocol["fat_sat"], with_labels=True)
    if t2_grid is not None:
        mag.update(_render(layers, t2_grid, sig, ("t2",), protocol["fat_sat"], with_labels=False)[0])
    images = {s: _acquire(rng, mag[s], t2_grid if (s == "t2" and t2_grid is not None) else grid, coil, protocol, s,
                          sig[s]["tumour"]) for s in SEQUENCES}
    protocol_out = {k: v for k, v in protocol.items() if k != "relax_jitter"}
    return PhantomPatient(patient_id, images["t1"], images["t2"], images["t1c"], grid.image(mask), clinical, truth,
                          grid.image(tissue), protocol_out)


# ---------------------------------------------------------------------------------------------------------
# Writing: NIfTI files or DICOM series folders, manifest, truth, README
# ---------------------------------------------------------------------------------------------------------

def _make_and_write(index: int, patient_id: str, rng: np.random.Generator, image_dir: Path,
                    out_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Draw and write one patient (module-level so a process pool can run it)."""
    dicom = writes_dicom(index)
    patient = synthesize_patient(rng, patient_id, dicom=dicom)
    paths = write_patient_images(patient, image_dir, dicom, rng, manufacturer="SYNTHETIC relaxometry phantom")
    return patient_rows(patient_id, paths, patient.clinical, patient.truth, out_dir)


def synthesize_cohort(n: int, seed: int, out_dir: str | Path, *, progress: bool = True, id_prefix: str = "RLX",
                      workers: int = 1) -> SynthCohort:
    """Write ``n`` phantom patients, ``manifest.csv``, ``truth.csv``, ``pathology.csv`` and a README saying
    they are synthetic.

    Parameters
    ----------
    n : int
        Number of patients (>= 1).
    seed : int
        Patient i is drawn from ``SeedSequence(seed).spawn(n)[i]``: it depends neither on ``n`` nor on
        ``workers``, and :func:`simulate_outcomes` reproduces its record.
    out_dir : str or pathlib.Path
        Folder of the cohort; images go to ``out_dir/images`` (NIfTI files, or DICOM series folders for
        one patient in ten, see :func:`writes_dicom`); manifest paths are relative to ``out_dir``.
    progress : bool, default True
        Show a progress bar.
    id_prefix : str, default "RLX"
        Prefix of the patient IDs (``RLX0001``, ...).
    workers : int, default 1
        Worker processes (spawn context); results are identical for any value.

    Returns
    -------
    SynthCohort
        Paths of the manifest and truth tables and the patient IDs.
    """

    readme = (
        SYNTHETIC_NOTICE + f"\n\nCohort of {int(n)} phantom patients drawn with seed {int(seed)}.\n\nGenerator: "
        "NPCPrognosisLib.datasets.relaxometry_phantom (seeded, reproducible; independent of "
        "NPCPrognosisLib.datasets.synth except for the file contract). Labels: 0 background, 1 GTVp (primary "
        "tumour), 2 GTVn (metastatic lymph nodes). Times in months. truth.csv holds the true AFT linear "
        "predictors; 'heterogeneity' is the hypercellular fraction of the viable primary tumour.\n"
    )
    return write_cohort(_make_and_write, n, seed, out_dir, readme=readme,
                        desc="relaxometry phantom", progress=progress, id_prefix=id_prefix,
                        workers=workers)
