"""Are these the scans the network expects? Checks of the network's input before its contours are trusted.

Why. A segmentation network answers every input with contours: given uniform noise as the CET1W, or the T2W
loaded in the CET1W's place, the shipped demo network drew a tumour of plausible size inside the head, and the
volume and position checks (:func:`NPCPrognosisLib.deep.segmentation._plausibility_warnings`) passed. Three facts
about the input catch these mistakes and are cheap to measure on the network's own input (the three normalised
sequences on its working grid, inside the head):

* **noise**: neighbouring voxels of any anatomical image are strongly correlated (0.8-0.97 on the phantom scans,
  in the best-correlated direction); a corrupted or wrongly decoded volume is not (0.0 for uniform noise). This
  needs no reference: a sequence below :data:`NOISE_CORRELATION` is said to look like noise.
* **the same series twice**: two sequences that correlate above :data:`SAME_SERIES_CORRELATION` inside the head
  are one series given in two places (1.00 when the T1W is given as the CET1W; different sequences of one
  patient correlated at most 0.89 on the phantom scans).
* **sequences in the wrong places**: how the sequences correlate with one another is a signature of the
  protocol (on family-A phantoms T1W-CET1W -0.30, T1W-T2W 0.71; with T2W and CET1W swapped 0.83 and -0.14). The
  network bundle records each pair's range over its training and validation patients (:func:`typicality_reference`),
  and a scan more than :data:`CORRELATION_MARGIN` outside a range is warned about. The margin is wide because a
  new clinic's protocol legitimately differs (another phantom family's T1W-T2W correlation was 0.89 against 0.71).

A check in the network's own feature space (the distance of the bottleneck features from the training patients',
as out-of-distribution detectors do) was measured first and separated nothing: group normalisation at every layer
makes the features nearly blind to such inputs (docs/segmentation-network.md, "Scans the network does not expect").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import SEQUENCES

#: A sequence whose neighbouring voxels correlate below this (in every direction, inside the head) looks like noise.
NOISE_CORRELATION = 0.2
#: Voxels taken off the head's edge before anything is correlated.
EDGE_VOXELS = 2
#: Two sequences correlated above this inside the head are one series given twice.
SAME_SERIES_CORRELATION = 0.995
#: How far (in correlation) outside the training patients' range a pair of sequences may lie before a warning.
CORRELATION_MARGIN = 0.25


def _pairs() -> list[tuple[int, int]]:
    return list(combinations(range(len(SEQUENCES)), 2))


def _pair_name(i: int, j: int) -> str:
    return f"{SEQUENCES[i]}-{SEQUENCES[j]}"


def image_statistics(x: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """What the checks read from one network input.

    Parameters
    ----------
    x : ndarray of shape (3, X, Y, Z)
        The normalised sequences on the network's working grid (order :data:`~NPCPrognosisLib.contract.SEQUENCES`).
    spacing : sequence of float
        The working grid's voxel size (x, y, z) in mm; the head is found on the CET1W as the normalisation finds it.

    Returns
    -------
    statistics : dict
        ``neighbour_correlation`` per sequence (the best-correlated axis) and ``cross_correlation`` per pair of
        sequences (``"t1-t2"`` ...), both inside the head.
    """
    from NPCPrognosisLib.contract import REFERENCE_SEQUENCE
    from NPCPrognosisLib.imaging.preprocess import head_mask

    x = np.asarray(x, np.float64)
    reference = sitk.GetImageFromArray(np.ascontiguousarray(x[SEQUENCES.index(REFERENCE_SEQUENCE)].T))
    reference.SetSpacing([float(s) for s in spacing])
    # the head's edge blurs air into tissue, and air voxels, far below tissue in every sequence, would make any two
    # sequences look correlated: the edge is left out
    head = sitk.GetArrayFromImage(sitk.BinaryErode(head_mask(reference), [EDGE_VOXELS] * 3)).T > 0
    neighbours = {}
    for c, name in enumerate(SEQUENCES):
        best = -1.0
        for axis in range(3):
            a, h = np.moveaxis(x[c], axis, 0), np.moveaxis(head, axis, 0)
            both = h[1:] & h[:-1]
            best = max(best, _correlation(a[1:][both], a[:-1][both]))
        neighbours[name] = best
    cross = {_pair_name(i, j): _correlation(x[i][head], x[j][head]) for i, j in _pairs()}
    return {"neighbour_correlation": neighbours, "cross_correlation": cross}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 0 where either side is constant (a blank volume is no anatomy either)."""
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def typicality_reference(statistics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The bundle's record of the training scans: each pair of sequences' correlation range.

    Parameters
    ----------
    statistics : sequence of dict
        :func:`image_statistics` of the network's training and validation patients.

    Returns
    -------
    reference : dict
        ``cross_correlation``: pair -> [min, max]; ``n``; the margin and thresholds used; JSON-ready.
    """
    pairs = {_pair_name(i, j) for i, j in _pairs()}
    ranges = {}
    for pair in sorted(pairs):
        values = [float(s["cross_correlation"][pair]) for s in statistics]
        ranges[pair] = [min(values), max(values)]
    return {"cross_correlation": ranges, "n": len(statistics), "margin": CORRELATION_MARGIN,
            "noise_correlation": NOISE_CORRELATION, "same_series_correlation": SAME_SERIES_CORRELATION}


def typicality_warnings(reference: Mapping[str, Any] | None, statistics: Mapping[str, Any]) -> list[str]:
    """Warnings about a network input that is not what the network expects.

    Parameters
    ----------
    reference : mapping or None
        The network bundle's ``network.typicality`` record; None (bundles trained before it) skips the check of
        the sequences' places, the noise and same-series checks still run.
    statistics : mapping
        :func:`image_statistics` of the scan.

    Returns
    -------
    warnings : list of str
    """
    fix = "check that each sequence is the right series, in its place (T1W, T2W, CET1W), and readable"
    warnings = []
    noisy = [name for name, r in statistics["neighbour_correlation"].items() if r < NOISE_CORRELATION]
    if noisy:
        values = ", ".join(f"{name} {statistics['neighbour_correlation'][name]:.2f}" for name in noisy)
        warnings.append(f"{' and '.join(noisy)} look(s) like noise, not anatomy (neighbouring voxels correlate "
                        f"{values}; any scan of a head above 0.5): {fix}; the contours cannot be trusted")
    same = [pair for pair, r in statistics["cross_correlation"].items() if r > SAME_SERIES_CORRELATION]
    if same:
        warnings.append(f"{', '.join(same)} are the same image (correlation "
                        f"{max(statistics['cross_correlation'][p] for p in same):.3f}): {fix}")
    if reference and not noisy and not same:
        margin = float(reference.get("margin", CORRELATION_MARGIN))
        outside = []
        for pair, (low, high) in reference["cross_correlation"].items():
            value = float(statistics["cross_correlation"][pair])
            if not low - margin <= value <= high + margin:
                outside.append(f"{pair} {value:+.2f} (training scans {low:+.2f} to {high:+.2f})")
        if outside:
            warnings.append("the sequences do not relate to one another as in the network's training scans ("
                            f"{'; '.join(outside)}): {fix}; a swapped series gives wrong contours")
    return warnings
