"""Study: does refitting each pruned GEMM's weight to its own pruned input recover image quality?

A pruned layer computes P(x) W^T where the dense one computes x W^T. Any W' gives the same sparse GEMM, so
the least-squares W' = W + D with D^T = argmin sum ||P(x) D^T - t||^2, t = (x - P(x)) W^T, costs nothing at
inference. Moments ``Spp = sum P P^T`` and ``Spt = sum P t^T`` over the calibration rows (the dense model's
activations on the benchmark's calibration captions, every step) give D in closed form: ``lowrank.fit`` at full
rank (its ridge chosen by GCV). The refitted copy then runs lynx's naive options through ``quality.compare``
beside naive pruning, on the benchmark's captions and noise.

    python -m benchmarks.studies.weight_refit_cpu.refit --captions 16 --out DIR
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from benchmarks.quality.__main__ import CALIBRATION_NOISE_SEED, CONFIGS, calibration_captions, compare_on_yardstick
from lynx_compile import lowrank, quality, yardstick
from lynx_compile.calibrator import sample_pipeline
from lynx_compile.semantics import prune_2to4


def pruned_linears(transformer: nn.Module) -> dict[str, nn.Linear]:
    """The 69 GEMMs lynx prunes in the yardstick: its blocks' attention and feed-forward projections."""
    return {
        n: m
        for n, m in transformer.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("transformer_blocks.") and (".attn." in n or ".ff" in n)
    }


def sample_hooked(pipe, captions: list[str], steps: int, batch: int, handles: list, desc: str) -> None:
    """The dense sampling loop on the calibration captions and noise, then the hooks removed."""
    try:
        with torch.no_grad():
            sample_pipeline(
                pipe,
                captions,
                steps=steps,
                batch_size=batch,
                seed=CALIBRATION_NOISE_SEED,
                pipe_kwargs=None,
                progress=True,
                desc=desc,
            )
    finally:
        for h in handles:
            h.remove()


def moments(pipe, captions: list[str], steps: int) -> dict[str, list]:
    """Per GEMM [Spp, Spt, sum ||t||^2, rows] (float64 sums of float32 products), over the dense
    sampling loop on ``captions``."""
    stats: dict[str, list] = {}

    def hook(name: str):
        def add(module: nn.Linear, args, _out) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            p = prune_2to4(x)
            t = (x - p) @ module.weight.mT  # float32 products per call (float64 is slow on a CPU), summed in float64
            s = stats.setdefault(name, [0.0, 0.0, 0.0, 0])
            s[0], s[1] = s[0] + (p.mT @ p).double(), s[1] + (p.mT @ t).double()
            s[2] += t.square().sum().item()
            s[3] += x.shape[0]

        return add

    handles = [m.register_forward_hook(hook(n)) for n, m in pruned_linears(pipe.transformer).items()]
    sample_hooked(pipe, captions, steps, len(captions), handles, "refit moments")
    return stats


def lockstep_moments(pipe, captions: list[str], steps: int, deltas: dict[str, torch.Tensor]) -> dict[str, list]:
    """The same moments with the pruned network's own inputs and the dense network's outputs as the target: on
    each call of the dense sampling loop a pruned copy (weights W + ``deltas``) runs on the same inputs, and each
    GEMM's residual is ``x W^T - P(x~) (W + D)^T``, x the dense network's input, x~ the pruned copy's."""
    dense_inputs: dict[str, torch.Tensor] = {}
    stats: dict[str, list] = {}
    pruned = refitted(deltas)(pipe.transformer)
    weights = {n: m.weight for n, m in pruned_linears(pipe.transformer).items()}

    def record(name: str):
        def keep(_module, args, _out) -> None:
            dense_inputs[name] = args[0].reshape(-1, args[0].shape[-1])

        return keep

    def prune(name: str):
        def replace(module: nn.Linear, args, _out) -> torch.Tensor:
            x = args[0]
            p = prune_2to4(x)
            out = nn.functional.linear(p, module.weight, module.bias)
            p = p.reshape(-1, p.shape[-1])
            r = dense_inputs.pop(name) @ weights[name].mT - p @ module.weight.mT
            s = stats.setdefault(name, [0.0, 0.0, 0.0, 0])
            s[0], s[1] = s[0] + (p.mT @ p).double(), s[1] + (p.mT @ r).double()
            s[2] += r.square().sum().item()
            s[3] += p.shape[0]
            return out

        return replace

    def run_pruned(_module, args, kwargs, _out) -> None:
        pruned(*args, **kwargs)

    handles = [m.register_forward_hook(record(n)) for n, m in pruned_linears(pipe.transformer).items()]
    handles += [m.register_forward_hook(prune(n)) for n, m in pruned_linears(pruned).items()]
    handles.append(pipe.transformer.register_forward_hook(run_pruned, with_kwargs=True))
    sample_hooked(pipe, captions, steps, 8, handles, "refit moments (lockstep)")
    return stats


def corrections(stats: dict[str, list], ridge: float | None) -> tuple[dict[str, torch.Tensor], float]:
    """D^T (K x N) per GEMM, and the mean share of the pruning error's energy left on the calibration rows."""
    deltas, left = {}, []
    for name, (spp, spt, tt, rows) in stats.items():
        a, b = lowrank.fit(spp, spt, min(spp.shape[0], spt.shape[1]), rows, tt, ridge)
        deltas[name] = a @ b
        left.append(lowrank.residual(spp, spt, tt, a, b) / tt)
    return deltas, sum(left) / len(left)


def refitted(deltas: dict[str, torch.Tensor]):
    """A transform for ``quality.Variant``: a copy of the transformer with W + D on every pruned GEMM."""

    def transform(transformer: nn.Module) -> nn.Module:
        out = copy.deepcopy(transformer)
        with torch.no_grad():
            for name, m in pruned_linears(out).items():
                m.weight += deltas[name].mT.to(m.weight.dtype)
        return out

    return transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=16)
    p.add_argument("--calibration-captions", type=int, default=32)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--lockstep-passes", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    pipe = yardstick.load_pipeline(device="cpu", dtype=torch.float32)
    calibration = calibration_captions(args.calibration_captions)
    stats = moments(pipe, calibration, args.steps)
    configs = {"naive": CONFIGS["naive"]}
    deltas, left = corrections(stats, None)
    print(f"refit: in sample, {left:.3f} of the pruning error's energy left (mean over the GEMMs)", flush=True)
    configs["refit"] = quality.Variant(options=CONFIGS["naive"], transform=refitted(deltas))
    for i in range(1, args.lockstep_passes + 1):
        more, left = corrections(lockstep_moments(pipe, calibration, args.steps, deltas), None)
        deltas = {n: d + more[n] for n, d in deltas.items()}
        print(f"refit_lockstep{i}: in sample, {left:.3f} of the residual's energy left", flush=True)
        configs[f"refit_lockstep{i}"] = quality.Variant(options=CONFIGS["naive"], transform=refitted(deltas))
    result = compare_on_yardstick(
        pipe, configs, captions=args.captions, steps=args.steps, batch_size=args.captions, out=args.out
    )
    print(result)


if __name__ == "__main__":
    main()
