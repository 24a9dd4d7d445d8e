"""How far bf16 rounding alone moves each zoo model from float32: dense, and with the inputs of the
GEMMs lynx sparsifies pruned by the reference (eager, forward pre-hooks; no lynx kernel involved).

Pruning is discontinuous: rounding flips near-tie decisions (which two of four values are kept), a
flip swaps a kept value for a dropped one of nearly the same magnitude, which moves the GEMM's
output by about that magnitude, and the flips compound block by block. This is the floor the GPU
tests hold the fast path to (``tests/gpu/test_gpu_backend.py``: fast vs float32 reference within
1.5x of the bf16 reference's distance). Tiny builds (the GPU tests' sizes), random weights. Also the
dense bf16 model under Inductor, which rounds fewer intermediates than eager (see the notes).

    python -m benchmarks.rounding [--models flux zimage] [--device cuda]    (default: cpu)

Writes benchmarks/results/<gpu>/rounding.{json,md} (``cpu/`` on a CPU, whatever ``--device``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
from pathlib import Path

import torch

import lynx_compile
from benchmarks.common import RESULTS, result_stem, stamp, write_json, write_table
from lynx_compile import prune_2to4, zoo
from lynx_compile.semantics import keep_mask_2to4

PROTOCOL = "relative L2 distances of the outputs of tiny zoo builds (width 4, 256 px, batch 2), eager; no timing"

COLUMNS = [
    "model",
    "dense_bf16_vs_fp32",
    "compiled_bf16_vs_fp32",
    "pruned_bf16_vs_fp32",
    "pruning_effect",
    "gemms_pruned",
    "flips_first",
    "flips_median",
    "flips_max",
    "flips_max_layer",
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _run(built: zoo.ZooModel, pruned: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output with the named GEMMs' inputs pruned, and those inputs as they arrived."""
    inputs: dict[str, torch.Tensor] = {}

    def prune(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            inputs[name] = args[0].float()
            return (prune_2to4(args[0]), *args[1:])

        return hook

    hooks = [built.model.get_submodule(name).register_forward_pre_hook(prune(name)) for name in pruned]
    try:
        return built().float(), inputs
    finally:
        for h in hooks:
            h.remove()


def measure(name: str, device: torch.device) -> dict[str, object]:
    width = 3 if name == "zimage" else 4  # as the GPU tests: Z-Image's SwiGLU width must be 2:4-aligned
    bf16 = zoo.build(name, width=width, resolution=256, batch=2, dtype=torch.bfloat16, device=device)
    # the same weights and inputs, widened: only the arithmetic's rounding differs
    fp32 = dataclasses.replace(
        bf16,
        model=copy.deepcopy(bf16.model).float(),
        example_kwargs=zoo.to_device_dtype(bf16.example_kwargs, device, torch.float32),
    )
    report = lynx_compile.inspect(fp32.model, **fp32.example_kwargs, options={"min_rows": 16, "path": "reference"})
    names = [layer.name for layer in report.layers if layer.sparse]
    dense32, pruned32, x32 = _run(fp32, [])[0], *_run(fp32, names)
    dense16, pruned16, x16 = _run(bf16, [])[0], *_run(bf16, names)
    torch._dynamo.reset()
    compiled16 = zoo.sample(torch.compile(bf16.model)(**bf16.example_kwargs)).float()  # dense Inductor, default mode
    torch._dynamo.reset()
    flips = {n: (keep_mask_2to4(x32[n]) ^ keep_mask_2to4(x16[n])).float().mean().item() for n in names}
    worst, first = max(flips, key=flips.get), next(iter(x32))  # x32: in the order the GEMMs ran
    return {
        "model": name,
        "dense_bf16_vs_fp32": _rel(dense16, dense32),
        "compiled_bf16_vs_fp32": _rel(compiled16, dense32),
        "pruned_bf16_vs_fp32": _rel(pruned16, pruned32),
        "pruning_effect": _rel(pruned32, dense32),
        "gemms_pruned": len(names),
        "flips_first": flips[first],
        "flips_median": statistics.median(flips.values()),
        "flips_max": flips[worst],
        "flips_max_layer": worst,
        "flips": flips,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(zoo.ZOO_NAMES), choices=zoo.ZOO_NAMES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS, help="results root; files go to OUT/<gpu>/rounding.*")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    for name in args.models:
        rows.append(measure(name, torch.device(args.device)))
        print({c: rows[-1][c] for c in COLUMNS}, flush=True)
    stem = result_stem("rounding", args.out)
    meta = stamp(vars(args), PROTOCOL)
    write_json(stem, meta, rows)
    write_table(
        stem.with_suffix(".md"),
        "bf16 rounding vs float32, dense and reference-pruned (tiny zoo builds)",
        rows,
        COLUMNS,
        meta=meta,
        notes=(
            "Relative L2 distances of the model output. `flips_*`: share of the pruned GEMMs' input "
            "positions whose keep/drop decision differs between bf16 and float32 (first pruned GEMM, "
            "median over them, the largest and where). Eager, reference pruning: no lynx kernel ran. "
            "`compiled_bf16_vs_fp32`: the dense bf16 model under Inductor against float32 eager: Inductor "
            "computes a chain of pointwise ops in float32 and rounds only what it stores, so where a model "
            "rounds an intermediate to bf16 (FLUX: `guidance.to(bf16) * 1000`, 3500 -> 3504, and the "
            "timestep likewise) eager bf16 and compiled bf16 differ."
        ),
    )


if __name__ == "__main__":
    main()
