"""Deep radiomic features: the segmentation network's own feature maps pooled inside each contour.

The DM study's "deep radiomics" are a trained network's activations inside the tumour, offered to the same LASSO
as the hand-crafted features. Here each of three layers of the trained SegResNet is averaged inside GTVp, GTVn
and their union (the ``gtv`` ROI of the radiomics), on whatever mask the radiomics use (the manifest's or the
network's own contours), giving columns ``deep_<roi>_<layer>_<k>``:

* ``enc1``: the second encoder stage (2 x init filters, half the working-grid resolution): texture-like;
* ``bottleneck``: the deepest stage (8 x init filters, 1/8 resolution): context and shape;
* ``dec``: the last decoder features before the 1 x 1 classifier (init filters, full resolution): what the
  network uses to draw the contour.

They are columns of the features table like any other, so the robustness filter, the selection and every
cross-validation treat them exactly as PyRadiomics features. Averages (not maxima) because the mean of a feature
map inside a region is stable when one boundary voxel changes; a missing structure gives NaN, as its radiomics do.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, ROIS
from NPCPrognosisLib.deep.data import centred_patch, covering_grid, grid_input, to_array_xyz
from NPCPrognosisLib.deep.network import NetworkConfig
from NPCPrognosisLib.imaging.geometry import resample_onto
from NPCPrognosisLib.radiomics.features_table import DEEP_PREFIX

#: Pooled layers, in column order.
DEEP_LAYERS: tuple[str, ...] = ("enc1", "bottleneck", "dec")


def layer_channels(config: NetworkConfig) -> dict[str, int]:
    """Channels of each pooled layer of a network built from ``config``."""
    stages = len(config.blocks_down)
    return {"enc1": config.init_filters * 2 ** min(1, stages - 1),
            "bottleneck": config.init_filters * 2 ** (stages - 1),
            "dec": config.init_filters}


def deep_feature_columns(config: NetworkConfig) -> list[str]:
    """The fixed, ordered deep columns a network of this architecture writes (table contract)."""
    channels = layer_channels(config)
    return [f"{DEEP_PREFIX}{roi}_{layer}_{k}" for roi in ROIS for layer in DEEP_LAYERS for k in range(channels[layer])]


def deep_features(model, preprocessed: Mapping[str, sitk.Image], mask: sitk.Image) -> dict[str, float]:
    """Deep radiomic features of one patient.

    Parameters
    ----------
    model : NetworkModel
        A loaded network bundle (:func:`NPCPrognosisLib.deep.segmentation.load_network`).
    preprocessed : mapping of str to SimpleITK.Image
        ``t1``, ``t2``, ``t1c`` aligned on the CET1W grid and preprocessed with ``model.preprocess``.
    mask : SimpleITK.Image
        Labels (1 GTVp, 2 GTVn) on the CET1W grid: the contours the radiomics of this patient use.

    Returns
    -------
    features : dict of str to float
        Every column of :func:`deep_feature_columns`; NaN for a structure the mask does not hold.
    """
    import torch

    x, grid_image = grid_input(preprocessed, covering_grid(preprocessed[REFERENCE_SEQUENCE], model.grid)[0])
    labels = to_array_xyz(resample_onto(mask, grid_image, is_label=True))
    if model.grid.patched:  # a network trained on patches sees one patch, centred on the contours
        view = centred_patch(labels[None], model.grid.patch_size)
        x, labels = x[(slice(None),) + view], labels[view]
    tensor = torch.from_numpy(np.ascontiguousarray(x)[None]).to(model.device).contiguous(
        memory_format=torch.channels_last_3d)
    with torch.no_grad():
        bottleneck, down, decoded, _ = model.net.encode_decode(tensor)
    maps = {"enc1": down[1] if len(down) > 1 else down[0], "bottleneck": bottleneck, "dec": decoded}
    out: dict[str, float] = {}
    for roi, values in ROIS.items():
        region = torch.from_numpy(np.isin(labels, values).astype(np.float32))[None, None].to(model.device)
        present = bool(region.sum() > 0)
        for layer in DEEP_LAYERS:
            features = maps[layer].float()
            if present:
                weight = torch.nn.functional.adaptive_avg_pool3d(region, features.shape[2:])
                pooled = (features * weight).flatten(2).sum(2) / weight.flatten(2).sum(2).clamp_min(1e-6)
                values_k = pooled[0].cpu().numpy().astype(float)
            else:
                values_k = np.full(features.shape[1], np.nan)
            for k, value in enumerate(values_k):
                out[f"{DEEP_PREFIX}{roi}_{layer}_{k}"] = float(value)
    return out
