"""Are these the scans the network expects? Checks of the network's input before its contours are trusted.

Why. A segmentation network answers every input with contours: given uniform noise as the CET1W, or the T2W
loaded in the CET1W's place, the shipped demo network drew a tumour of plausible size inside the head, and the
volume and position checks (:func:`NPCPrognosisLib.deep.segmentation._plausibility_warnings`) passed. Three facts
about the input catch these mistakes, cheap to measure inside the head:

* **noise**: neighbouring voxels of any anatomical image are strongly correlated (0.71-0.97 on all three phantom
  families); a corrupted or wrongly decoded volume is not (0.00 for uniform noise on its own grid). This needs no
  reference: a sequence below :data:`NOISE_CORRELATION` is said to look like noise.
* **the same series twice**: two sequences that correlate above :data:`SAME_SERIES_CORRELATION` inside the head
  are one series given in two places (1.00 when the T1W is given as the CET1W).
* **sequences in the wrong places**: how the sequences correlate with one another is a signature of the
  protocol (on the demo network's family-A training scans T1W-CET1W -0.44 to +0.22, T1W-T2W +0.26 to +0.66; with T2W
  and CET1W exchanged, T1W-CET1W about +0.8). The network bundle records each pair's range over its training and
  validation patients (:func:`typicality_reference`), measured on the network's input as ``train-net`` keeps it,
  and a scan more than :data:`CORRELATION_MARGIN` outside a range is warned about. The margin is wide because a new
  clinic's protocol legitimately differs (the other phantom families' median T1W-T2W correlations were 0.68-0.76).

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

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, SEQUENCES

#: A sequence whose neighbouring voxels correlate below this (median of the three axes, inside the head, on the scan's
#: own grid) looks like noise: anatomy 0.71-0.97 on every phantom family even on the network's coarser working grid,
#: uniform noise 0.00 on its own grid and at most 0.49 along one axis once resampled.
NOISE_CORRELATION = 0.5
#: Voxels taken off the head's edge before anything is correlated (:func:`_inner_head`).
EDGE_VOXELS = 2
#: Two sequences correlated above this inside the head are one series given twice.
SAME_SERIES_CORRELATION = 0.995
#: How far (in correlation) outside the training patients' range a pair of sequences may lie before a warning.
CORRELATION_MARGIN = 0.25


def _pairs() -> list[tuple[int, int]]:
    return list(combinations(range(len(SEQUENCES)), 2))


def _pair_name(i: int, j: int) -> str:
    return f"{SEQUENCES[i]}-{SEQUENCES[j]}"


def _inner_head(reference: sitk.Image) -> np.ndarray:
    """The CET1W's head (as the normalisation finds it) less its edge, as a (z, y, x) boolean array.

    The edge blurs air into tissue, and air voxels, far below tissue in every sequence, would make any two sequences
    look correlated.
    """
    from NPCPrognosisLib.imaging.preprocess import head_mask

    return sitk.GetArrayFromImage(sitk.BinaryErode(head_mask(reference), [EDGE_VOXELS] * 3)) > 0


def neighbour_correlations(preprocessed: Mapping[str, sitk.Image]) -> dict[str, float]:
    """How strongly each sequence's neighbouring voxels correlate inside the head, on the CET1W's own grid.

    On the scan's own grid, not the network's working grid: resampling onto a coarser or finer grid interpolates
    neighbouring samples from the same voxels and made uniform noise correlate up to 0.49 along one axis. The median
    of the three axes, so thick slices (one weakly correlated axis) do not count against an anatomical image.

    Parameters
    ----------
    preprocessed : mapping of str to SimpleITK.Image
        The sequences aligned on the CET1W grid and preprocessed (``segment``'s input to the network's grid).

    Returns
    -------
    correlations : dict of str to float
        Per sequence.
    """
    head = _inner_head(preprocessed[REFERENCE_SEQUENCE])
    out = {}
    for name in SEQUENCES:
        if name not in preprocessed:
            continue
        array = sitk.GetArrayViewFromImage(preprocessed[name]).astype(np.float64)
        per_axis = []
        for axis in range(3):
            a, h = np.moveaxis(array, axis, 0), np.moveaxis(head, axis, 0)
            both = h[1:] & h[:-1]
            per_axis.append(_correlation(a[1:][both], a[:-1][both]))
        out[name] = float(np.median(per_axis))
    return out


def cross_correlations(x: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """How the sequences correlate with one another inside the head, on the network's input.

    Parameters
    ----------
    x : ndarray of shape (3, X, Y, Z)
        The normalised sequences on the network's working grid (order :data:`~NPCPrognosisLib.contract.SEQUENCES`):
        what ``train-net`` keeps of each training patient, so the bundle's record and a new scan are measured alike.
    spacing : sequence of float
        The working grid's voxel size (x, y, z) in mm.

    Returns
    -------
    correlations : dict of str to float
        Per pair of sequences (``"t1-t2"``, ``"t1-t1c"``, ``"t2-t1c"``).
    """
    x = np.asarray(x, np.float64)
    reference = sitk.GetImageFromArray(np.ascontiguousarray(x[SEQUENCES.index(REFERENCE_SEQUENCE)].T))
    reference.SetSpacing([float(s) for s in spacing])
    head = _inner_head(reference).T
    return {_pair_name(i, j): _correlation(x[i][head], x[j][head]) for i, j in _pairs()}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 0 where either side is constant (a blank volume is no anatomy either)."""
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def typicality_reference(correlations: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """The bundle's record of the training scans: each pair of sequences' correlation range.

    Parameters
    ----------
    correlations : sequence of dict
        :func:`cross_correlations` of the network's training and validation patients.

    Returns
    -------
    reference : dict
        ``cross_correlation``: pair -> [min, max]; ``n``; the margin a scan may lie outside them; JSON-ready
        (the noise and same-series thresholds need no training scans and stay in the code).
    """
    pairs = {_pair_name(i, j) for i, j in _pairs()}
    ranges = {}
    for pair in sorted(pairs):
        values = [float(c[pair]) for c in correlations]
        ranges[pair] = [min(values), max(values)]
    return {"cross_correlation": ranges, "n": len(correlations), "margin": CORRELATION_MARGIN}


def typicality_warnings(reference: Mapping[str, Any] | None, neighbours: Mapping[str, float],
                        cross: Mapping[str, float]) -> list[str]:
    """Warnings about a network input that is not what the network expects.

    Parameters
    ----------
    reference : mapping or None
        The network bundle's ``network.typicality`` record; None (bundles trained before it) skips the check of
        the sequences' places, the noise and same-series checks still run.
    neighbours : mapping of str to float
        :func:`neighbour_correlations` of the scan.
    cross : mapping of str to float
        :func:`cross_correlations` of the scan.

    Returns
    -------
    warnings : list of str
    """
    fix = "check that each sequence is the right series, in its place (T1W, T2W, CET1W), and readable"
    warnings = []
    noisy = [name for name, r in neighbours.items() if r < NOISE_CORRELATION]
    if noisy:
        values = ", ".join(f"{name} {neighbours[name]:.2f}" for name in noisy)
        warnings.append(f"{' and '.join(noisy)} look(s) like noise, not anatomy (neighbouring voxels correlate "
                        f"{values}; anatomy above 0.7): {fix}; the contours cannot be trusted")
    same = [pair for pair, r in cross.items() if r > SAME_SERIES_CORRELATION]
    if same:
        warnings.append(f"{', '.join(same)} are the same image (correlation {max(cross[p] for p in same):.3f}): {fix}")
    if reference and not noisy and not same:
        margin = float(reference.get("margin", CORRELATION_MARGIN))
        outside = []
        for pair, (low, high) in reference["cross_correlation"].items():
            value = float(cross[pair])
            if not low - margin <= value <= high + margin:
                outside.append(f"{pair} {value:+.2f} (training scans {low:+.2f} to {high:+.2f})")
        if outside:
            warnings.append("the sequences do not relate to one another as in the network's training scans ("
                            f"{'; '.join(outside)}): a series in the wrong place, or a protocol unlike the training "
                            f"scans'; {fix}, and check the contours (a swapped series gives wrong ones)")
    return warnings
