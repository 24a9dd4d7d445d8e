"""How much of a pruned GEMM's output error is its mean, which a corrected bias would remove at no cost on the
fast path? See the README beside this file. Run from the repository's root:
``PYTHONPATH=. python benchmarks/studies/mean_error_cpu/mean_error.py [CAPTIONS]``.

The trained yardstick samples dense (28 steps, guidance) on two disjoint sets of captions, the benchmark's
calibration captions and held-out ones. For each of the 69 GEMMs the quality benchmark prunes, hooks sum the
pruning error ``t = (x - prune_2to4(x)) W^T`` per output column, over all rows and per denoising step, and its
energy. The mean fitted on the first set (over all steps, or per step) is subtracted from the held-out errors;
the table gives the energy left as a share of the pruning error's (1 = no correction)."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch

from benchmarks.quality.__main__ import CALIBRATION_NOISE_SEED, CALIBRATION_SEED
from lynx_compile import yardstick
from lynx_compile.semantics import prune_2to4

HELD_OUT_SEED, HELD_OUT_NOISE_SEED = 999, 200_000  # as studies/shared_low_rank_cpu
STEPS = 28


def captions(n: int, seed: int) -> list[str]:
    return [yardstick.caption(s) for s in yardstick.sample_scenes(n, torch.Generator().manual_seed(seed))]


def pruned_gemms(transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The block GEMMs the quality benchmark prunes (its adaLN ``norm*.linear`` see one row per caption: dense)."""
    return {
        name: m
        for name, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks.") and ".norm" not in name
    }


def error_sums(pipe, prompts: list[str], noise_seed: int) -> dict[str, dict[str, torch.Tensor | float]]:
    """Per GEMM: sum of t and rows per step, and sum ||t||^2, over a dense sampling of ``prompts``."""
    sums: dict[str, dict] = collections.defaultdict(
        lambda: {"st": collections.defaultdict(float), "rows": collections.Counter(), "tt": 0.0, "calls": 0}
    )

    def hook(name: str):
        def record(module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            t = (x - prune_2to4(x)) @ module.weight.double().t()
            s = sums[name]
            step = s["calls"] % STEPS  # one call per step: guidance batches the two halves into one call
            s["calls"] += 1
            s["st"][step] = s["st"][step] + t.sum(0)
            s["rows"][step] += t.shape[0]
            s["tt"] += t.square().sum().item()

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in pruned_gemms(pipe.transformer).items()]
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            pipe([prompt], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(noise_seed + i))
    for h in handles:
        h.remove()
    return sums


def left(held: dict, means: dict[int, torch.Tensor]) -> float:
    """sum over held-out rows of ||t - mean(step)||^2, from the held-out sums alone."""
    return held["tt"] + sum(
        -2 * (means[s] @ held["st"][s]).item() + held["rows"][s] * means[s].square().sum().item() for s in held["rows"]
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    pipe = yardstick.load_pipeline()
    fit = error_sums(pipe, captions(n, CALIBRATION_SEED), CALIBRATION_NOISE_SEED)
    held = error_sums(pipe, captions(n, HELD_OUT_SEED), HELD_OUT_NOISE_SEED)
    rows, total = {}, collections.Counter()
    for name in fit:
        f, h = fit[name], held[name]
        overall = sum(f["st"].values()) / sum(f["rows"].values())
        per_step = {s: f["st"][s] / f["rows"][s] for s in f["rows"]}
        shares = {
            "global_mean": left(h, dict.fromkeys(h["rows"], overall)) / h["tt"],
            "per_step_mean": left(h, per_step) / h["tt"],
        }
        rows[name] = {"rows": sum(h["rows"].values()), **shares}
        total["tt"] += h["tt"]
        for key, share in shares.items():
            total[key] += share * h["tt"]
    result = {
        "captions": n,
        "steps": STEPS,
        "gemms": len(rows),
        "left_global_mean": total["global_mean"] / total["tt"],
        "left_per_step_mean": total["per_step_mean"] / total["tt"],
        "per_gemm": rows,
    }
    out = Path(__file__).with_name("mean_error.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print({k: v for k, v in result.items() if k != "per_gemm"})


if __name__ == "__main__":
    main()
