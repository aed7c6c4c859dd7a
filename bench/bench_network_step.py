"""Time one training step of the shipped architecture: channels-last group norm or not, float32 or bfloat16.

Usage: python bench/bench_network_step.py [--threads 2] [--batch 2] [--rounds 3] [--steps 8] [--compile]

Builds the network ``train-net`` builds at its defaults (``NetworkConfig()``, channels-last, a 64 x 64 x 32 patch,
two samples per step), runs forward, backward and an AdamW step, and times it twice over the same weights and
inputs: with :class:`~NPCPrognosisLib.deep.network.ChannelsLastGroupNorm` (what ships) and with every group norm
put back to PyTorch's own ``nn.GroupNorm``. The two alternate ``--rounds`` times so a machine that speeds up or
slows down during the run affects both. Prints median seconds per step, the ratio shipped / plain (below 1: the
shipped network trains faster) and the largest difference between the two in the segmentation logits and the
gradients (rounding only: the arithmetic is the same). An inference pass (no gradients, four windows) is timed
too: there the shipped module falls back to PyTorch's own kernel, so its ratio should be about 1.

The shipped network's step is also timed under bfloat16 autocast, as ``train-net`` runs it with
``{"precision": "bfloat16"}`` (``native_bfloat16``: whether this CPU computes in bfloat16 in hardware, AVX512-BF16
or AMX; elsewhere it is emulated); the ratio bfloat16 / float32 below 1 means the bfloat16 step is faster here.

With ``--compile`` the shipped network's step is also run through ``torch.compile`` (inductor): the compilation's
own seconds (the first step), the ratio compiled / eager and the largest relative difference of its gradients from
the eager step's. Why it is not used: with torch 2.13 on the CPU the compiled channels-last network computes
wrong gradients. Measured 2026-12-07 (2 threads, one 2 x 3 x 64 x 64 x 32 batch, eval mode so no dropout,
segmentation loss only, root-mean-square error over all parameter gradients relative to a float64 eager pass):
eager channels-last 1.5e-5, compiled channels-last 0.47 (the deep encoder blocks' gradients about 1,000 times too
small, cosine to the true ones near 0), compiled contiguous 1.2e-5 but its step 1.5 times slower than the shipped
eager channels-last one. The compiled channels-last step was twice as fast: speed from wrong arithmetic. Run this
again with a new torch before compiling anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _steps(model, x, n: int, precision: str = "float32") -> list[float]:
    import torch

    from NPCPrognosisLib.deep.validation import autocast

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with autocast("cpu", precision):
            out = model(x)
        (out["seg_logits"].float().square().mean() + out["risk"].square().mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times[1:]  # the first step allocates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time the step through torch.compile")
    args = parser.parse_args(argv)

    import torch
    from torch import nn

    from NPCPrognosisLib.deep.network import (
        ChannelsLastGroupNorm,
        NetworkConfig,
        build_network,
        replace_group_norms,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shipped = build_network(NetworkConfig(), voxel_ml=0.01).to(memory_format=torch.channels_last_3d)
    plain = replace_group_norms(copy.deepcopy(shipped), nn.GroupNorm).to(memory_format=torch.channels_last_3d)
    n_swapped = sum(isinstance(m, ChannelsLastGroupNorm) for m in shipped.modules())
    x = torch.randn(args.batch, 3, 64, 64, 32).contiguous(memory_format=torch.channels_last_3d)

    grads = {}
    for name, model in (("shipped", shipped), ("plain", plain)):
        model.zero_grad()
        out = model(x)
        out["seg_logits"].float().square().mean().backward()
        grads[name] = (out["seg_logits"].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
        model.zero_grad()
    logit_diff = float((grads["shipped"][0] - grads["plain"][0]).abs().max())
    grad_diff = max(float((a - b).abs().max() / (b.abs().max() + 1e-12))
                    for a, b in zip(grads["shipped"][1], grads["plain"][1]))

    compiled, compile_report = None, {}
    if args.compile:
        compiled = torch.compile(shipped, dynamic=False)
        start = time.perf_counter()
        shipped.zero_grad()
        out = compiled(x)
        out["seg_logits"].float().square().mean().backward()
        compile_report["compile_first_step_s"] = round(time.perf_counter() - start, 1)
        got = [p.grad.clone() for p in shipped.parameters() if p.grad is not None]
        shipped.zero_grad()
        compile_report["compiled_max_abs_logit_difference"] = float((out["seg_logits"].detach()
                                                                     - grads["shipped"][0]).abs().max())
        compile_report["compiled_max_relative_gradient_difference"] = max(
            float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(got, grads["shipped"][1]))
    times = {"shipped": [], "plain": [], "shipped_bfloat16": [], "shipped_compiled": []}
    infer = {"shipped": [], "plain": []}
    windows = torch.randn(4, 3, 64, 64, 32).contiguous(memory_format=torch.channels_last_3d)
    for _ in range(args.rounds):
        for name, model in (("shipped", shipped), ("plain", plain)):
            times[name] += _steps(model, x, args.steps)
            if name == "shipped":
                times["shipped_bfloat16"] += _steps(model, x, args.steps, "bfloat16")
                if compiled is not None:
                    times["shipped_compiled"] += _steps(compiled, x, args.steps)
            with torch.no_grad():
                model.segment(windows)
                start = time.perf_counter()
                model.segment(windows)
                infer[name].append(time.perf_counter() - start)
    step = {k: statistics.median(v) for k, v in times.items() if v}
    if compiled is not None:
        compile_report["train_step_ratio_compiled_over_eager"] = round(step["shipped_compiled"] / step["shipped"], 3)
    window = {k: statistics.median(v) for k, v in infer.items()}
    print(json.dumps({
        "threads": args.threads, "batch": args.batch, "group_norms_swapped": n_swapped,
        "train_step_s": {k: round(v, 3) for k, v in step.items()},
        "train_step_ratio_shipped_over_plain": round(step["shipped"] / step["plain"], 3),
        "native_bfloat16": any(bool(getattr(torch.cpu, name, lambda: False)())
                               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")),
        "train_step_ratio_bfloat16_over_float32": round(step["shipped_bfloat16"] / step["shipped"], 3),
        "inference_4_windows_s": {k: round(v, 3) for k, v in window.items()},
        "inference_ratio_shipped_over_plain": round(window["shipped"] / window["plain"], 3),
        "max_abs_logit_difference": logit_diff, "max_relative_gradient_difference": grad_diff,
        **compile_report, "load_average": os.getloadavg(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
