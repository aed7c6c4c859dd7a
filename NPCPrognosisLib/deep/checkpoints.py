"""Checkpoints of a training run: weights, optimizer moments and the running weight average as safetensors, the
rest as JSON, so that a run killed after any epoch resumes to exactly the weights of an uninterrupted one.

Why not ``torch.save``: it pickles, and a bundle or checkpoint must never run code when it is opened. Why the JSON
is written last: it names the epoch every tensor file carries, so a crash between two files is detected on
resume instead of mixing epochs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from NPCPrognosisLib.imaging.preprocess import PreprocessConfig
from NPCPrognosisLib.io.atomic import write_bytes_atomic, write_json_atomic


def save_tensors(tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str]) -> None:
    """``tensors`` as a safetensors file at ``path``, written atomically (:func:`write_bytes_atomic`).

    Why the bytes and not ``safetensors.torch.save_file``: that writes through a hidden ``.tmpXXXXXX`` file of its
    own in the target's folder, which names no owner; ``kill -9`` during a checkpoint left one beside the checkpoints
    (a 4.7 MB ``.tmpbWqwey`` of the demo network's weights) that no later run could tell from a running writer's.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        Copied to the CPU, contiguous.
    path : str or Path
        The file.
    metadata : dict of str to str
        Stored in the file's header (the epoch, which :func:`load_checkpoint` checks).
    """
    from safetensors.torch import save

    write_bytes_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def save_checkpoint(ckpt_dir: Path, name: str, model, optimizer, state: dict[str, Any],
                    average: Mapping[str, Any] | None = None) -> None:
    """Weights, optimizer moments (and the running weight average) as safetensors, the rest as JSON; the JSON is
    written last and names the epoch every tensor file carries, so a crash between files is detected instead of
    mixing epochs."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = {"epoch": str(state["epoch"])}
    save_tensors(model.state_dict(), ckpt_dir / f"{name}.safetensors", meta)
    if average is not None:
        save_tensors(average, ckpt_dir / f"{name}_average.safetensors", meta)
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        tensors = {f"{idx}.{key}": value for idx, entry in opt_state["state"].items()
                   for key, value in entry.items()}
        save_tensors(tensors, ckpt_dir / f"{name}_optimizer.safetensors", meta)
        state = dict(state, param_groups=opt_state["param_groups"])
    write_json_atomic(ckpt_dir / f"{name}.json", state, indent=1)


def load_checkpoint(ckpt_dir: Path, name: str, model, optimizer=None) -> dict[str, Any] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    state_path = ckpt_dir / f"{name}.json"
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_bytes())
    weights = ckpt_dir / f"{name}.safetensors"
    with safe_open(str(weights), "pt") as handle:
        if handle.metadata().get("epoch") != str(state["epoch"]):
            raise RuntimeError(f"checkpoint {weights} does not match {state_path}; delete the checkpoints folder")
    model.load_state_dict(load_file(str(weights)))
    if optimizer is not None and "param_groups" in state:
        flat = load_file(str(ckpt_dir / f"{name}_optimizer.safetensors"))
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in flat.items():
            idx, sub = key.split(".", 1)
            per_param.setdefault(int(idx), {})[sub] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def load_average(ckpt_dir: Path, name: str, epoch: int) -> dict[str, Any] | None:
    """The running weight average saved with checkpoint ``name`` at ``epoch``, or ``None`` when there is none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = ckpt_dir / f"{name}_average.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as handle:
        if handle.metadata().get("epoch") != str(epoch):
            raise RuntimeError(f"weight average {path} is not of epoch {epoch}; delete the checkpoints folder")
    return load_file(str(path))


def update_average(average: dict[str, Any] | None, model, count: int) -> dict[str, Any]:
    """Fold the model's current weights into the running mean of ``count`` earlier ones (float tensors; others,
    such as counters, are taken as they are)."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if average is None or count == 0:
        return current
    for key, value in current.items():
        if value.is_floating_point():
            current[key] = average[key] + (value - average[key]) / (count + 1)
    return current


#: Augmentations added after checkpoints were first written, with the probability that reproduces a run started
#: before them (the transform absent), so such a run can still be resumed.
_ADDED_AUGMENTATIONS = {"gin_prob": 0.0, "fat_unsuppressed_prob": 0.0, "vessel_prob": 0.0, "lump_prob": 0.0}


#: The default batch size of the versions whose checkpoints did not record it.
_BATCH_SIZE_BEFORE = 4


def checkpoint_settings(ckpt_dir: Path) -> tuple[dict[str, Any] | None, int | None]:
    """The settings and batch size a checkpointed run was started with (None, None when there is no checkpoint),
    with the options added since filled in as that run had them (preprocessing settings as
    :meth:`PreprocessConfig.from_dict` fills an older bundle's; an older version's checkpoint does not record its
    batch size: that version's default is assumed)."""
    state_path = ckpt_dir / "latest.json"
    if not state_path.exists():
        return None, None
    state = json.loads(state_path.read_bytes())
    config = state.get("config") or {}
    augment = dict(config.get("augment") or {})
    for key, value in _ADDED_AUGMENTATIONS.items():
        augment.setdefault(key, value)
    preprocess = PreprocessConfig.from_dict(config.get("preprocess") or {}).to_dict()
    return ({**config, "augment": augment, "preprocess": preprocess},
            int(state.get("batch_size", _BATCH_SIZE_BEFORE)))
