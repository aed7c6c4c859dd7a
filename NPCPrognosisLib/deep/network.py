"""Multi-task network: tumour segmentation and a log-hazard risk from one 3D encoder (DeepMTS idea).

Design, and why:

* Backbone: MONAI ``SegResNet`` (residual 3D U-Net with group norm). It splits cleanly into ``encode`` and
  ``decode``, so the risk head can read the bottleneck without forking MONAI code; group norm behaves the same
  at batch size 2-8, which is all a CPU (or one GPU with 3D volumes) affords. Input: the three preprocessed
  sequences (T1W, T2W, CET1W) as channels; output: background / GTVp / GTVn logits.
* Risk head: the segmentation feeds the survival branch, as in DeepMTS. Bottleneck features are pooled three
  ways (whole field, inside the predicted GTVp probability, inside the predicted GTVn probability) and the
  full-resolution decoder features give mean and SD inside GTVp; an MLP reads them. Beside it, a linear path
  reads 14 segmentation-guided image measures: soft GTVp/GTVn volumes (log mL) and the mean and SD of each input
  sequence inside each predicted structure (enhancement, necrosis, heterogeneity). Volume is the strongest
  known image prognostic factor, and a linear path lets the head use it from the first epochs on. The
  probabilities used as pooling weights are detached, so the Cox loss cannot inflate or shrink a contour to
  change a risk: the mask shown to the clinician is the one the Dice loss trained, and the volumes reported
  are the ones the risk saw.
* After joint training the linear path is refitted on the whole training split by a ridge Cox model
  (:func:`NPCPrognosisLib.deep.risk_head.refit_risk_head`): mini-batches of four patients give risk sets of four,
  a poor estimate of the partial likelihood. The MLP's output is left out of that refit by default (and its
  weight set to zero): the joint Cox loss fitted it to the very same patients' outcomes, so on them it looks
  far better than it is (demo: training C 0.80, validation C 0.49), while the segmentation-guided measures
  generalise (fresh cohort C 0.74). The joint Cox term still shapes the shared encoder during training.
  The measure standardisation (training mean and SD) is stored as buffers so it travels with the weights.
* Output: one linear log-hazard (no activation), trained with the Cox partial likelihood (Efron
  ties); higher = worse. An optional binary head (e.g. response to induction chemotherapy) shares everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from NPCPrognosisLib.contract import LABELS, SEQUENCES


@dataclass
class NetworkConfig:
    """Architecture; stored in the bundle so the same network is rebuilt before the weights are loaded."""

    in_channels: int = 3
    n_classes: int = 3
    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    risk_hidden: int = 32
    dropout: float = 0.1
    binary_head: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks_down"], data["blocks_up"] = list(self.blocks_down), list(self.blocks_up)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        data = dict(data)
        data["blocks_down"] = tuple(int(v) for v in data.get("blocks_down", cls.blocks_down))
        data["blocks_up"] = tuple(int(v) for v in data.get("blocks_up", cls.blocks_up))
        return cls(**data)

    @property
    def downsampling(self) -> int:
        """Every working-grid dimension must be a multiple of this."""
        return 2 ** (len(self.blocks_down) - 1)


class ChannelsLastGroupNorm(nn.GroupNorm):
    """Group norm that takes a channels-last tensor through PyTorch's contiguous CPU kernel while training.

    Why: the network runs channels-last (oneDNN's 3D convolutions are faster so), but PyTorch's CPU group norm has
    no fast channels-last path for few channels: on the full-resolution 8-channel features of a 64 x 64 x 32 patch
    its backward took 8 ms against 0.7 ms on the same data laid out contiguously, a fifth of a training step on 2
    cores. Copying in and out costs less than that (``bench/bench_network_step.py``). Only with gradients, on the
    CPU and for at most :attr:`max_channels` channels: without a backward, or on wider and smaller features, the
    copies cost more than they save. The arithmetic, the parameters and their names are nn.GroupNorm's, so
    bundles load either way.
    """

    #: Measured: 16-channel features gain too, 32-channel ones (16 x 16 x 8 voxels) lose.
    max_channels = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 5 and x.shape[1] <= self.max_channels
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)):
            y = nn.functional.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last_3d)
        return super().forward(x)


def replace_group_norms(module: nn.Module, norm_class: type[nn.GroupNorm]) -> nn.Module:
    """``module`` with every group norm of another class replaced, in place, by a ``norm_class`` of the same
    parameters (the state-dict keys do not change): the network swaps in :class:`ChannelsLastGroupNorm`,
    ``bench/bench_network_step.py`` swaps PyTorch's own back to compare."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm) and type(child) is not norm_class:
                swapped = norm_class(child.num_groups, child.num_channels, child.eps, child.affine)
                swapped.load_state_dict(child.state_dict())
                setattr(parent, name, swapped)
    return module


def _weighted_mean(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of (B, C, ...) features under a (B, 1, ...) weight; an empty weight gives zeros, not NaN."""
    total = weight.flatten(1).sum(1).clamp_min(1e-3)
    return (features * weight).flatten(2).sum(2) / total[:, None]


def _weighted_sd(features: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Weighted SD around ``mean`` (the square root is kept off zero so its gradient stays finite)."""
    return (_weighted_mean(features ** 2, weight) - mean ** 2).clamp_min(0).add(1e-6).sqrt()


#: Names of the linear path's segmentation-guided image measures, in order (shown in the bundle).
IMAGE_MEASURES = (("log_ml_gtvp", "log_ml_gtvn")
                  + tuple(f"{stat}_{seq}_{roi}" for roi in LABELS for stat in ("mean", "sd")
                          for seq in SEQUENCES))


class MultiTaskSegResNet(nn.Module):
    """SegResNet with a risk head (and an optional binary head) on segmentation-weighted features."""

    def __init__(self, config: NetworkConfig, voxel_ml: float) -> None:
        super().__init__()
        from monai.networks.nets import SegResNet

        self.config = config
        self.voxel_ml = float(voxel_ml)
        self.backbone = SegResNet(spatial_dims=3, in_channels=config.in_channels, out_channels=config.n_classes,
                                  init_filters=config.init_filters, blocks_down=config.blocks_down,
                                  blocks_up=config.blocks_up)
        replace_group_norms(self.backbone, ChannelsLastGroupNorm)
        deep = config.init_filters * config.downsampling
        n_features = 3 * deep + 2 * config.init_filters + 2
        n_measures = 2 + 4 * config.in_channels
        self.risk_mlp = nn.Sequential(nn.Linear(n_features, config.risk_hidden), nn.ReLU(),
                                      nn.Dropout(config.dropout), nn.Linear(config.risk_hidden, 1))
        self.risk_linear = nn.Linear(n_measures, 1)
        self.register_buffer("measure_mean", torch.zeros(n_measures))
        self.register_buffer("measure_sd", torch.ones(n_measures))
        nn.init.normal_(self.risk_mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.risk_mlp[-1].bias)
        nn.init.zeros_(self.risk_linear.weight)
        nn.init.zeros_(self.risk_linear.bias)
        self.binary = nn.Linear(n_features, 1) if config.binary_head else None

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor, torch.Tensor]:
        """(bottleneck, encoder stages, decoder features before the last 1x1 conv, segmentation logits)."""
        net = self.backbone
        bottleneck, down = net.encode(x)
        skips = list(reversed(down))
        y = bottleneck
        for i, (up, upl) in enumerate(zip(net.up_samples, net.up_layers)):
            y = upl(up(y) + skips[i + 1])
        logits = net.conv_final(y)
        return bottleneck, down, y, logits

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only: what the sliding-window inferer stitches."""
        return self.encode_decode(x)[3]

    def risk_features(self, x: torch.Tensor, bottleneck: torch.Tensor, decoded: torch.Tensor,
                      logits: torch.Tensor, *, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep features for the MLP, raw image measures for the linear path; see ``IMAGE_MEASURES``).

        ``detach=False`` only for saliency: the gradient of the risk then flows through the contours too.
        """
        prob = torch.softmax(logits.float(), dim=1)
        prob = prob.detach() if detach else prob
        p_gtvp = prob[:, 1:2]
        small = nn.functional.adaptive_avg_pool3d(prob[:, 1:3], bottleneck.shape[2:])
        bottleneck, decoded = bottleneck.float(), decoded.float()
        mean_p = _weighted_mean(decoded, p_gtvp)
        sd_p = _weighted_sd(decoded, p_gtvp, mean_p)
        measures = self.image_measures(x, prob)
        features = torch.cat([bottleneck.flatten(2).mean(2), _weighted_mean(bottleneck, small[:, :1]),
                              _weighted_mean(bottleneck, small[:, 1:2]), mean_p, sd_p, measures[:, :2]], dim=1)
        return features, measures

    def image_measures(self, x: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """The linear path's measures (``IMAGE_MEASURES``) of inputs ``x`` under class probabilities ``prob``.

        Separate from the network's pass because on a grid larger than one window the measures are taken on the
        stitched probabilities of the whole grid: a structure cut by a window would otherwise lose volume.
        """
        x, prob = x.float(), prob.float()
        measures = [torch.log1p(prob[:, 1:3].flatten(2).sum(2) * self.voxel_ml)]
        for weight in (prob[:, 1:2], prob[:, 2:3]):
            mean = _weighted_mean(x, weight)
            measures += [mean, _weighted_sd(x, weight, mean)]
        return torch.cat(measures, dim=1)

    def heads(self, features: torch.Tensor, measures: torch.Tensor) -> dict[str, torch.Tensor]:
        standard = (measures - self.measure_mean) / self.measure_sd
        out = {"risk": (self.risk_mlp(features) + self.risk_linear(standard)).squeeze(1)}
        if self.binary is not None:
            out["binary_logit"] = self.binary(features).squeeze(1)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottleneck, down, decoded, logits = self.encode_decode(x)
        features, measures = self.risk_features(x, bottleneck, decoded, logits)
        with torch.autocast(x.device.type, enabled=False):  # risks to float32's precision, ties out of the Cox loss
            out = self.heads(features, measures)
        out["seg_logits"] = logits
        out["features"], out["measures"] = features, measures
        return out


def build_network(config: NetworkConfig, voxel_ml: float) -> MultiTaskSegResNet:
    return MultiTaskSegResNet(config, voxel_ml)


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Efron ties; the risk set of time t is every case with time >= t), mean
    over events.

    Written out rather than taken from torchsurv: without tied events its fast path sorts the times with an unstable
    sort and takes "everyone after me" as the risk set, so a case censored at an event's own time fell in or out of
    that risk set with the batch order (loss 0.47 or 0.00 for the same two patients), and its Efron path averaged
    over distinct event times, not events. Vectorised over the distinct times (the MMoE scores whole cohorts).

    Parameters
    ----------
    risk : torch.Tensor
        Log-hazard of each case (higher = worse).
    time, event : torch.Tensor
        Follow-up and event indicator of each case.

    Returns
    -------
    loss : torch.Tensor
        A scalar; 0 (still in the graph) without events or with fewer than two cases, as a risk set of one carries
        no information.
    """
    event = event.bool().reshape(-1)
    if not bool(event.any()) or risk.numel() < 2:
        return risk.sum() * 0.0
    risk, time = risk.float().reshape(-1), time.float().reshape(-1)
    weight = torch.exp(risk - risk.max().detach())  # rescaled: log-sum-exp without overflow
    times, group = torch.unique(time, return_inverse=True)  # ascending distinct times; each case's
    at_time = torch.zeros_like(times).index_add(0, group, weight)
    at_risk = at_time.flip(0).cumsum(0).flip(0)  # sum of weights of time >= t
    dead_weight = torch.zeros_like(times).index_add(0, group, weight * event)
    deaths = torch.zeros_like(times).index_add(0, group, event.float())
    # Efron: the l-th (0-based) of the d events at a time removes l/d of their weight from its risk set
    dead_group = group[event]
    order = torch.argsort(dead_group, stable=True)
    sorted_group = dead_group[order]
    rank = torch.empty_like(dead_group)
    rank[order] = torch.arange(len(sorted_group), device=risk.device) - torch.searchsorted(sorted_group, sorted_group)
    share = rank.float() / deaths[dead_group]
    log_denominator = torch.log(at_risk[dead_group] - share * dead_weight[dead_group]) + risk.max().detach()
    return -(risk[event].sum() - log_denominator.sum()) / event.sum()
