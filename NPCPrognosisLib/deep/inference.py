"""One pass of the network over a patient's working grid: what training validates and ``segment`` ships.

Why one function for both. The network is trained on patches when the working grid is larger than a CPU step
affords (:attr:`GridConfig.patched`). Group normalisation takes its statistics from the field it sees, so a
network trained on patches must be run on patches of the same size: MONAI's sliding-window inferer stitches them
(Gaussian weighting, as nnU-Net does, so a window's border, where context is missing, counts least). The risk
branch needs one field: its deep features come from a window centred on the predicted tumour, and the image
measures of its linear path (volumes, intensities inside each structure) from the stitched probabilities of the
whole grid, so a node outside that window still counts. The risk-head refit during training and the deep score
at prediction time therefore read exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from NPCPrognosisLib.deep.data import box_slices

#: Overlap of neighbouring windows (share of the window) when a grid is stitched from patches.
SW_OVERLAP = 0.25
#: Windows per forward pass of the sliding-window inferer.
SW_BATCH = 4


def risk_box(prob: np.ndarray, box: Sequence[int]) -> tuple[slice, slice, slice]:
    """A fixed box centred on the probability-weighted tumour centre, shifted to lie inside the grid.

    Parameters
    ----------
    prob : ndarray of shape (3, X, Y, Z)
        Class probabilities (background, GTVp, GTVn) on the working grid.
    box : sequence of int
        Box size (x, y, z); clipped to the grid.

    Returns
    -------
    slices : tuple of slice
        The box's (x, y, z) slices.
    """
    tumour = prob[1] + prob[2]
    shape = tumour.shape
    if tumour.sum() > 1e-3:
        centre = [float((tumour.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(shape[ax])).sum()
                        / tumour.sum()) for ax in range(3)]
    else:
        centre = [(s - 1) / 2.0 for s in shape]
    # half a voxel lower than the centre: where this box has always lain, so bundles keep their deep scores
    return box_slices([c - 0.5 for c in centre], box, shape)


def grid_pass(net, x: np.ndarray, inference: Mapping[str, Any], device: str) -> tuple[np.ndarray, dict, tuple]:
    """Class probabilities on the whole working grid and the network's head outputs for one patient.

    Parameters
    ----------
    net : MultiTaskSegResNet
        The network, in eval mode.
    x : ndarray of shape (3, X, Y, Z)
        The patient's input on the working grid.
    inference : mapping
        The bundle's ``inference`` block: ``roi_size`` (window), ``risk_box``, ``sw_overlap``, ``sw_mode``;
        a window as large as the grid runs the network once on the whole of it.
    device : str
        Torch device.

    Returns
    -------
    prob : ndarray of shape (3, X, Y, Z)
        Softmax probabilities.
    out : dict of str to torch.Tensor
        ``risk``, ``features``, ``measures`` (and ``binary_logit`` with a binary head), batch of one.
    box : tuple of slice
        Where the risk branch's window lay (the whole grid without windows).
    """
    import torch
    from monai.inferers import sliding_window_inference

    grid_size = list(x.shape[1:])
    roi = [min(int(r), g) for r, g in zip(inference.get("roi_size", grid_size), grid_size)]
    box_size = [min(int(b), g) for b, g in zip(inference.get("risk_box", grid_size), grid_size)]
    tensor = torch.from_numpy(np.ascontiguousarray(x)[None]).to(device).contiguous(
        memory_format=torch.channels_last_3d)
    with torch.no_grad():
        if roi == grid_size and box_size == grid_size:
            out = net(tensor)
            prob = torch.softmax(out["seg_logits"].float(), 1)
            return prob[0].cpu().numpy(), out, tuple(slice(0, g) for g in grid_size)
        if roi == grid_size:
            logits = net.segment(tensor)
        else:
            logits = sliding_window_inference(tensor, roi, SW_BATCH, net.segment,
                                              overlap=float(inference.get("sw_overlap", SW_OVERLAP)),
                                              mode=str(inference.get("sw_mode", "constant")))
        prob = torch.softmax(logits.float(), 1)
        prob_np = prob[0].cpu().numpy()
        box = risk_box(prob_np, box_size)
        crop = net(tensor[(slice(None), slice(None)) + box])
        measures = net.image_measures(tensor, prob)
        out = {**net.heads(crop["features"], measures), "features": crop["features"], "measures": measures}
    return prob_np, out, box


def inference_spec(grid) -> dict[str, Any]:
    """The bundle's ``inference`` block for a network trained on ``grid`` (:class:`GridConfig`): windows and the
    risk branch's box the size of a training patch."""
    patch = [int(v) for v in grid.patch_size]
    return {"roi_size": patch, "risk_box": patch, "sw_overlap": SW_OVERLAP, "sw_mode": "gaussian"}
