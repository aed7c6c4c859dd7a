"""Multi-gate mixture of experts (MMoE) over modality blocks, with a survival head and binary heads.

Why this shape (Ma et al. 2018; the MoEMIL study of IC response): one small expert per modality (radiomics,
deep, clinical, each extra block such as pathology) turns that modality into a shared representation, and each
task (DMFS ranking, IC response) has its own softmax gate that mixes the experts per patient. The gate weights
say which modality drove a patient's prediction; a patient without a modality gets that expert's gate weight
masked to zero (renormalised over what the patient has), so missing slides need no imputation.

Sized for a CPU and a cohort of ~160: experts of a few units, full-batch Adam, weight decay and dropout, an
ensemble of a few seeded members averaged. The members (and, in the inner cross-validation, every fold's
members) train side by side as one batched computation (:func:`train_members`), each on its own patients with
its own optimiser state. Training is deterministic for a seed (one thread, seeded initialisation and dropout).
Losses: the Cox partial likelihood with Efron ties (:func:`~NPCPrognosisLib.deep.network.cox_loss`) and binary
cross entropy on the patients whose label is known; the tasks are summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: The survival task's name (binary tasks are named by their manifest column).
SURVIVAL = "survival"


@dataclass
class MMoEConfig:
    """Architecture and optimisation of one MMoE (stored in the bundle; ``width``/``epochs`` chosen by CV)."""

    blocks: dict[str, int]
    tasks: list[str]
    width: int = 8
    #: Nonlinear layers per expert (0: a linear map of its block, so a task's output is a gate-weighted sum of
    #: per-modality linear scores).
    expert_layers: int = 1
    dropout: float = 0.5
    #: Small enough that the validation curve peaks after a few checkpoints, so early stopping can see the peak.
    lr: float = 0.003
    #: Decoupled (AdamW) weight decay: strong, because ~160 patients overfit even a few hundred weights.
    weight_decay: float = 1.0
    #: Longest schedule; ``task_epochs`` (chosen by CV) says after how many epochs each task's head is taken.
    epochs: int = 200
    members: int = 5
    task_epochs: dict[str, int] = field(default_factory=dict)
    #: Chance that a training patient's non-clinical block is hidden in an epoch (modality dropout): regularises
    #: and teaches the gates to do without a modality, as they must for a patient without slides.
    block_dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MMoEConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class FusionData:
    """Aligned per-patient inputs: each block z-scored (NaN where absent), presence, and the task labels."""

    blocks: dict[str, np.ndarray]
    present: np.ndarray
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def subset(self, rows: np.ndarray) -> FusionData:
        return FusionData(blocks={k: v[rows] for k, v in self.blocks.items()}, present=self.present[rows],
                          time=None if self.time is None else self.time[rows],
                          event=None if self.event is None else self.event[rows],
                          labels={k: v[rows] for k, v in self.labels.items()})

    def tensors(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = {k: torch.from_numpy(np.nan_to_num(v, nan=0.0).astype(np.float32)) for k, v in self.blocks.items()}
        return x, torch.from_numpy(self.present.astype(np.float32))


class MMoE(nn.Module):
    """Experts per block, one gate and one linear head per task."""

    def __init__(self, config: MMoEConfig) -> None:
        super().__init__()
        self.names = list(config.blocks)
        width = config.width
        self.experts = nn.ModuleDict({name: self._expert(size, config) for name, size in config.blocks.items()})
        gate_in = sum(config.blocks.values()) + len(config.blocks)
        self.gates = nn.ModuleDict({task: nn.Linear(gate_in, len(config.blocks)) for task in config.tasks})
        for gate in self.gates.values():  # start from an even mixture: a modality earns its weight from the data
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)
        self.heads = nn.ModuleDict({task: nn.Linear(width, 1) for task in config.tasks})

    @staticmethod
    def _expert(size: int, config: MMoEConfig) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(config.dropout), nn.Linear(size, config.width)]
        for _ in range(config.expert_layers):
            layers += [nn.ELU(), nn.Dropout(config.dropout), nn.Linear(config.width, config.width)]
        return nn.Sequential(*layers)

    def expert_outputs(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Every expert's representation of its block, (n, blocks, width)."""
        return torch.stack([self.experts[name](x[name]) for name in self.names], dim=1)

    def forward(self, x: Mapping[str, torch.Tensor],
                present: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per task the output (risk or logit, shape (n,)) and the gate weights (n, blocks)."""
        experts = self.expert_outputs(x)  # (n, B, width)
        # a block the patient lacks (or that modality dropout hides) reaches the gates as zeros, never as values
        gate_in = torch.cat([*(x[name] * present[:, [j]] for j, name in enumerate(self.names)), present], dim=1)
        outputs, gates = {}, {}
        for task, gate in self.gates.items():
            logits = gate(gate_in).masked_fill(present < 0.5, -1e9)
            weights = torch.softmax(logits, dim=1)
            mixed = (weights.unsqueeze(-1) * experts).sum(dim=1)
            outputs[task] = self.heads[task](mixed).squeeze(-1)
            gates[task] = weights
        return outputs, gates


def _loss(outputs: Mapping[str, torch.Tensor], time: torch.Tensor | None, event: torch.Tensor | None,
          labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    from NPCPrognosisLib.deep.network import cox_loss

    total = torch.zeros(())
    if SURVIVAL in outputs and event is not None and bool(event.any()):
        total = total + cox_loss(outputs[SURVIVAL], time, event)  # the mean negative log partial likelihood per event
    for task, y in labels.items():
        known = ~torch.isnan(y)
        if task in outputs and bool(known.any()):
            total = total + nn.functional.binary_cross_entropy_with_logits(outputs[task][known], y[known])
    return total


class _single_thread:
    """Tiny networks run fastest (and reproducibly) on one thread."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.threads)


def _stack(config: MMoEConfig, seeds: Sequence[int]) -> tuple[MMoE, dict[str, torch.Tensor]]:
    """Members initialised one by one (member ``k`` exactly as ``MMoE`` is after ``torch.manual_seed(seeds[k])``)
    with their parameters stacked on a leading member axis, and a weightless copy of the architecture to call them
    through."""
    from torch.func import stack_module_state

    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(MMoE(config))
    params, _ = stack_module_state(members)  # an MMoE holds no buffers
    return members[0].to("meta"), params


def _forward_members(base: MMoE, params: Mapping[str, torch.Tensor], x: Mapping[str, torch.Tensor],
                     present: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every member's forward pass at once (``present`` per member: (members, n, blocks)); outputs (members, n).

    Each member draws its own dropout masks; ``base.training`` says whether dropout is on."""
    from torch.func import functional_call, vmap

    def one(member_params: Mapping[str, torch.Tensor], shown: torch.Tensor):
        return functional_call(base, dict(member_params), (x, shown))

    return vmap(one, in_dims=(0, 0), randomness="different")(dict(params), present)


def _member_loss(outputs: Mapping[str, torch.Tensor], rows: torch.Tensor,
                 time: torch.Tensor | None, event: torch.Tensor | None,
                 labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The sum over members of each member's loss on its own training patients (``rows``: (members, n) bool)."""
    total = torch.zeros(())
    for m in range(rows.shape[0]):
        keep = rows[m]
        total = total + _loss({task: out[m][keep] for task, out in outputs.items()},
                              None if time is None else time[keep], None if event is None else event[keep],
                              {task: y[keep] for task, y in labels.items()})
    return total


def _clip_per_member(params: Mapping[str, torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each member on its own: a member's step never depends on another's gradients."""
    squares = sum(p.grad.reshape(p.shape[0], -1).pow(2).sum(dim=1) for p in params.values())
    scale = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params.values():
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))


def train_members(data: FusionData, config: MMoEConfig, seeds: Sequence[int], *, rows: np.ndarray | None = None,
                  checkpoints: Sequence[int] = ()) -> tuple[list[dict[int, dict[str, torch.Tensor]]],
                                                             list[dict[str, np.ndarray]]]:
    """Several members trained side by side for ``config.epochs`` full-batch steps, each on its own patients.

    The members' parameters are stacked and every step runs them as one batched computation (``torch.func``):
    the ensembles and the inner cross-validation train dozens of networks of a few hundred weights each, which
    one at a time spend their time in per-operation overhead. Each member keeps its own initialisation, dropout
    masks, modality dropout, loss on its own patients, gradient clipping and AdamW state, so it is the network it
    would be trained alone (up to its random streams).

    Parameters
    ----------
    data : FusionData
        The patients (``time``/``event`` for the survival task, ``labels`` for binary tasks).
    config : MMoEConfig
        Architecture and optimisation.
    seeds : sequence of int
        One per member: its initialisation and its modality-dropout stream (the first also seeds dropout).
    rows : bool array (members, patients), optional
        Each member's training patients (default: all); the others are only scored.
    checkpoints : sequence of int
        Epochs after which the weights are kept and every patient is scored (dropout off, every block shown).

    Returns
    -------
    weights : list of dict
        Per member, its state dict after each checkpoint epoch.
    outputs : list of dict
        Per checkpoint, each task's outputs (members, patients).
    """
    n, members = len(data), len(seeds)
    rows_t = torch.ones(members, n, dtype=torch.bool) if rows is None else torch.from_numpy(np.asarray(rows, bool))
    base, params = _stack(config, seeds)
    torch.manual_seed(seeds[0])
    generators = [np.random.default_rng(seed) for seed in seeds]
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    x, present = data.tensors()
    time = None if data.time is None else torch.from_numpy(np.asarray(data.time, np.float32))
    event = None if data.event is None else torch.from_numpy(np.asarray(data.event, bool))
    labels = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in data.labels.items()}
    droppable = torch.tensor([name != "clinical" for name in base.names])
    everything = present.expand(members, *present.shape)
    wanted = set(checkpoints)
    weights: list[dict[int, dict[str, torch.Tensor]]] = [{} for _ in seeds]
    scored = []
    for epoch in range(1, config.epochs + 1):
        base.train()
        optimizer.zero_grad()
        shown = everything
        if config.block_dropout > 0:
            hide = torch.from_numpy(np.stack([g.random(tuple(present.shape)) for g in generators])
                                    < config.block_dropout) & droppable
            shown = everything * (~hide).float()
        outputs, _ = _forward_members(base, params, x, shown)
        loss = _member_loss(outputs, rows_t, time, event, labels)
        if not torch.isfinite(loss):
            raise ArithmeticError(f"the fusion model's loss diverged at epoch {epoch}")
        loss.backward()
        _clip_per_member(params, 5.0)
        optimizer.step()
        if epoch in wanted:
            base.eval()
            for m, kept in enumerate(weights):
                kept[epoch] = {name: value[m].detach().clone() for name, value in params.items()}
            with torch.no_grad():
                outputs, _ = _forward_members(base, params, x, everything)
            scored.append({task: out.numpy().astype(float) for task, out in outputs.items()})
    return weights, scored


def _member(config: MMoEConfig, state: Mapping[str, torch.Tensor]) -> MMoE:
    member = MMoE(config)
    member.load_state_dict(state)
    member.eval()
    return member


def predict_members(members: Mapping[str, Sequence[MMoE]], data: FusionData
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each task's output and gate weights from that task's members, averaged over them."""
    x, present = data.tensors()
    outputs, gates = {}, {}
    with torch.no_grad():
        for task, task_members in members.items():
            runs = [member(x, present) for member in task_members]
            outputs[task] = np.mean([out[task].numpy().astype(float) for out, _ in runs], axis=0)
            gates[task] = np.mean([gate[task].numpy().astype(float) for _, gate in runs], axis=0)
    return outputs, gates


def expert_contributions(members: Mapping[str, Sequence[MMoE]], data: FusionData) -> dict[str, np.ndarray]:
    """Per task, each expert's additive part of the output (patients x blocks), averaged over the task's members.

    Why: a task's head is linear, so its output is the head's bias plus, over the experts, gate weight x (head
    weights . expert output); that product is what a modality adds to the patient's output. The gate weight alone is
    not: an expert whose output the head barely uses, or that is nearly the same for every patient, can hold a
    large weight and move no one's risk (only pathology predictive: its mean gate weight 0.43, its share of the
    output's variance 0.69).

    Returns
    -------
    contributions : dict of str to ndarray
        Per task, (patients, blocks); each row sums to the task's output less the members' mean head bias.
    """
    x, present = data.tensors()
    contributions = {}
    with torch.no_grad():
        for task, task_members in members.items():
            parts = []
            for member in task_members:
                gates = member(x, present)[1][task]
                parts.append((gates * (member.expert_outputs(x) @ member.heads[task].weight[0])).numpy())
            contributions[task] = np.mean(parts, axis=0).astype(float)
    return contributions


def fit_ensemble(data: FusionData, config: MMoEConfig, seed: int) -> dict[str, list[MMoE]]:
    """``config.members`` members (seeds ``seed``, ``seed + 1``, ...), each trained once; a task takes every
    member's weights after its own epoch count (``config.task_epochs``: early stopping per task)."""
    epochs = {task: config.task_epochs.get(task, config.epochs) for task in config.tasks}
    schedule = MMoEConfig(**{**config.to_dict(), "epochs": max(epochs.values())})
    with _single_thread():
        runs = train_members(data, schedule, [seed + k for k in range(config.members)],
                             checkpoints=sorted(set(epochs.values())))[0]
    return {task: [_member(config, run[epochs[task]]) for run in runs] for task in config.tasks}


def save_members(members: Mapping[str, Sequence[MMoE]], path: str | Path) -> None:
    """Every task's members in one safetensors file (``t<task index>.m<k>.<parameter>``, tasks in config order)."""
    from NPCPrognosisLib.deep.checkpoints import save_tensors

    tensors = {f"t{t}.m{k}.{name}": value
               for t, task_members in enumerate(members.values()) for k, member in enumerate(task_members)
               for name, value in member.state_dict().items()}
    save_tensors(tensors, path, metadata={"tasks": str(len(members))})


def load_members(path: str | Path, config: MMoEConfig) -> dict[str, list[MMoE]]:
    """The ensembles written by :func:`save_members` (weights only: nothing is executed)."""
    from safetensors.torch import load_file

    flat = load_file(str(path))
    states: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in flat.items():
        task, index, name = key.split(".", 2)
        states.setdefault(int(task[1:]), {}).setdefault(int(index[1:]), {})[name] = value
    return {task: [_member(config, states[t][k]) for k in sorted(states[t])] for t, task in enumerate(config.tasks)}


def task_score(task: str, output: np.ndarray, data: FusionData) -> float:
    """Validation score of one task: Harrell's C (survival) or the AUC (binary); NaN when undefined."""
    from sklearn.metrics import roc_auc_score

    from NPCPrognosisLib.survival.metrics import harrell_c

    if task == SURVIVAL:
        if data.event is None or not np.any(data.event):
            return float("nan")
        try:
            return float(harrell_c(data.time, data.event, output))
        except ValueError:
            return float("nan")
    y = data.labels[task]
    known = ~np.isnan(y)
    if len(set(y[known].tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y[known], output[known]))


def _choice(fold_scores: Sequence[np.ndarray], tasks: Sequence[str], use: np.ndarray
            ) -> tuple[int, dict[str, int], list[float], list[dict[str, np.ndarray]]]:
    """The inner cross-validation's choice from the folds ``use`` selects: each candidate's per-task score curve
    (mean over those folds), each task's peak checkpoint, and the candidate with the best mean of those peaks.

    Parameters
    ----------
    fold_scores : sequence of ndarray
        Per candidate, the held-out score of every fold, checkpoint and task (folds x checkpoints x tasks).
    tasks : sequence of str
        The tasks, in the scores' last-axis order.
    use : bool ndarray
        The folds the choice may look at.

    Returns
    -------
    chosen : int
        The winning candidate (ties: the first).
    checkpoint : dict of str to int
        Each task's peak checkpoint index under that candidate.
    peaks : list of float
        Every candidate's mean of its tasks' peaks.
    curves : list of dict
        Every candidate's per-task curve (-inf where no fold could score it).
    """
    curves = []
    for scores in fold_scores:
        with np.errstate(all="ignore"):
            means = np.nanmean(scores[use], axis=0)  # (checkpoints, tasks)
        curves.append({task: np.nan_to_num(means[:, t], nan=-math.inf) for t, task in enumerate(tasks)})
    peaks = [float(np.mean([c.max() for c in curve.values()])) for curve in curves]
    chosen = int(np.argmax(peaks))
    return chosen, {task: int(np.argmax(curve)) for task, curve in curves[chosen].items()}, peaks, curves


def _nested(fold_scores: Sequence[np.ndarray], outputs: Sequence[Sequence[Mapping[str, np.ndarray]]],
            folds: Sequence[np.ndarray], tasks: Sequence[str], checkpoints: Sequence[int]) -> dict[str, Any]:
    """The held-out outputs of a choice each fold had no say in: for every fold, the candidate and epoch counts that
    :func:`_choice` picks from the *other* folds' scores, and that fold's held-out outputs under them.

    Why: the out-of-fold outputs of the choice made on every fold are optimistic, because the same held-out scores
    both pick among ~120 candidate schedules and then report the winner (outcomes shuffled between patients, the
    pooled out-of-fold C of 160 training patients was above 0.5 in most cohorts). Repeating the choice without each
    fold is nested cross-validation without retraining: the held-out outputs of every candidate and checkpoint are
    already there, so it costs nothing.

    Returns
    -------
    nested : dict
        ``oof`` (per task, each patient's output under the choice made without their fold), ``per_task`` (the mean
        over folds of each fold's held-out score under its own choice) and ``choices`` (per fold, the candidate index
        and each task's epoch count).
    """
    oof = {task: np.zeros(len(folds[0])) for task in tasks}
    scores = np.full((len(folds), len(tasks)), np.nan)
    choices = []
    for f, held in enumerate(folds):
        others = np.arange(len(folds)) != f
        chosen, best, _, _ = _choice(fold_scores, tasks, others)
        for t, task in enumerate(tasks):
            oof[task][held] = outputs[chosen][best[task]][task][held]
            scores[f, t] = fold_scores[chosen][f, best[task], t]
        choices.append({"candidate": chosen, "task_epochs": {task: checkpoints[i] for task, i in best.items()}})
    with np.errstate(all="ignore"):
        per_task = {task: float(np.nanmean(scores[:, t])) for t, task in enumerate(tasks)}
    return {"oof": oof, "per_task": per_task, "choices": choices}


def cross_validate(data: FusionData, base: MMoEConfig, candidates: Sequence[Mapping[str, Any]],
                   folds: Sequence[np.ndarray], seed: int, step: int = 10) -> dict[str, Any]:
    """Inner cross-validation of the architecture and of each task's number of epochs (early stopping on
    held-out folds), and an honest estimate of what the choice is worth (:func:`_nested`).

    Every fold trains ``base.members`` members per candidate for ``base.epochs`` epochs and scores its held-out
    patients every ``step`` epochs (each task by its own metric, averaged over folds). Each task takes the epoch
    count where its mean score peaks; the candidate with the best mean of those peaks wins (:func:`_choice`).
    A fold's survival outputs are centred on their mean over that fold's training patients: the Cox loss ignores a
    shift, so every fold's ensemble keeps an offset of its own (from its initialisation), and pooled out of fold
    those offsets rank patients by fold (160 training patients with signal: pooled C 0.63 against 0.71 per fold).

    Parameters
    ----------
    data : FusionData
        The training patients.
    base : MMoEConfig
        The configuration the candidates modify; ``epochs`` is the longest schedule tried.
    candidates : sequence of mapping
        :class:`MMoEConfig` fields to try (e.g. ``{"width": 8, "weight_decay": 0.1}``).
    folds : sequence of bool arrays
        Held-out patients of each fold.

    Returns
    -------
    report : dict
        ``chosen`` (the winning candidate), ``task_epochs``, ``score`` (mean over tasks of the chosen CV scores),
        ``per_task`` scores (optimistic: the peaks they are the maxima of were picked on the same folds), the
        ``grid`` of every candidate's per-task score curve, ``oof`` (out-of-fold outputs of the choice, per task)
        and ``nested`` (:func:`_nested`: the choice repeated without each fold; its ``oof`` and ``per_task`` are
        the honest estimates).
    """
    checkpoints = list(range(step, base.epochs + 1, step))
    tasks = list(base.tasks)
    fold_scores: list[np.ndarray] = []
    oof: list[list[dict[str, np.ndarray]]] = []
    with _single_thread():
        for candidate in candidates:
            config = MMoEConfig(**{**base.to_dict(), **candidate})
            scores = np.full((len(folds), len(checkpoints), len(tasks)), np.nan)
            outputs = [{task: np.zeros(len(data)) for task in tasks} for _ in checkpoints]
            # every fold's members in one batched run, each member on its fold's training patients
            seeds = [seed + 1000 * f + k for f in range(len(folds)) for k in range(config.members)]
            rows = np.stack([~np.asarray(held, bool) for held in folds for _ in range(config.members)])
            scored = train_members(data, config, seeds, rows=rows, checkpoints=checkpoints)[1]
            for f, held in enumerate(folds):
                val = data.subset(held)
                members = slice(f * config.members, (f + 1) * config.members)
                for c, out in enumerate(scored):
                    for t, task in enumerate(tasks):
                        mean_out = out[task][members, held].mean(axis=0)
                        if task == SURVIVAL:  # each fold's own offset (the Cox loss ignores a shift) taken out
                            mean_out = mean_out - out[task][members][:, ~held].mean()
                        outputs[c][task][held] = mean_out
                        scores[f, c, t] = task_score(task, mean_out, val)
            fold_scores.append(scores)
            oof.append(outputs)
    chosen, best, peaks, curves = _choice(fold_scores, tasks, np.ones(len(folds), bool))
    nested = _nested(fold_scores, oof, folds, tasks, checkpoints)
    return {"chosen": dict(candidates[chosen]), "task_epochs": {task: checkpoints[i] for task, i in best.items()},
            "score": peaks[chosen], "per_task": {task: float(curves[chosen][task][i]) for task, i in best.items()},
            "grid": [{**dict(candidate), "epochs": checkpoints,
                      **{task: [float(v) for v in curve[task]] for task in curve}}
                     for candidate, curve in zip(candidates, curves)],
            "oof": {task: oof[chosen][i][task] for task, i in best.items()},
            "nested": nested}
