"""A DiT MLP block compiled several ways: where does producer fusion put the pruning's cost? (GPU)

    y = x + gate * fc2(gelu(fc1(LayerNorm(x) * (1 + scale) + shift)))      FLUX widths, bf16

- dense: Inductor (CUDA graphs);
- lynx, standalone: prune+compress by the Triton kernel on a materialised activation;
- lynx, fused: prune+compress in Inductor's template, GELU fused in as its prologue (the adaLN
  output comes from the norm's reduction kernel: standalone kernel);
- the same two with ``precision="fp8"`` (the fp8 kernel, and the fp8 template whose amax comes from its
  own load of the GELU), and torchao's dense fp8 (``common.torchao_fp8``, where torchao is installed):
  whether the fp8 template pays where it has a producer to take in.

Reports the time per block (CUDA events over CUDA-graph replays of the compiled block, median,
fresh inputs) and, per sparsified activation, the bytes the generated code moves for it: the
dense activation written and read back (standalone) or not at all (fused), per layer as the report
says it was pruned (``common.BYTES_PER_ELEMENT``). Writes benchmarks/results/<gpu>/fusion.{json,md}.

    python -m benchmarks.fusion [--tokens 4096 16384] [--dump-code DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import lynx_compile
from benchmarks.common import RESULTS, activation_mb, result_stem, stamp, torchao_fp8, write_json, write_table

PROTOCOL = (
    "CUDA events around single calls of the compiled block (CUDA graphs: dense reduce-overhead, lynx's "
    "default), median of --runs, 4 rotating inputs, after 3 warm-up calls"
)


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) * (1 + scale) + shift
        return x + gate * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


def _time_ms(fn, inputs: list[tuple[torch.Tensor, ...]], runs: int) -> float:
    for args in inputs[:3]:
        fn(*args)
    times = []
    for i in range(runs):
        args = inputs[i % len(inputs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 4608, 16384])
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--hidden", type=int, default=12288)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", type=Path, default=RESULTS, help="results root; files go to OUT/<gpu>/fusion.*")
    p.add_argument("--dump-code", metavar="DIR", help="write each variant's generated code there")
    args = p.parse_args()
    torch.manual_seed(0)
    block = MlpBlock(args.dim, args.hidden).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    rows = []
    for m in args.tokens:
        inputs = [
            (
                torch.randn(m, args.dim, device="cuda", dtype=torch.bfloat16),
                *(0.5 * torch.randn(args.dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)),
            )
            for _ in range(4)
        ]
        variants = {
            "dense": torch.compile(block, mode="reduce-overhead"),
            "lynx_standalone": torch.compile(
                block, backend="lynx", options={"fuse_producers": False, "cost_model": False}
            ),
            "lynx_fused": torch.compile(block, backend="lynx", options={"fuse_producers": True, "cost_model": False}),
            **{
                f"lynx_fp8_{how}": torch.compile(
                    block, backend="lynx", options={"fuse_producers": fused, "cost_model": False, "precision": "fp8"}
                )
                for how, fused in (("standalone", False), ("fused", True))
            },
        }
        quantised = torchao_fp8(block)
        if quantised is not None:
            variants["torchao_fp8"] = torch.compile(quantised, mode="reduce-overhead")
        row = {"m": m, "k1": args.dim, "n1": args.hidden}
        # what dense moves for the same two activations (fc1's and fc2's inputs)
        dense_layers = [SimpleNamespace(m=m, k=k, sparse=True, prune="-") for k in (args.dim, args.hidden)]
        with torch.no_grad():
            ref = None
            for name, fn in variants.items():
                n_reports = len(lynx_compile.reports())
                t0 = time.perf_counter()
                _, code = run_and_get_code(fn, *inputs[0])
                torch.cuda.synchronize()
                row[f"{name}_compile_s"] = time.perf_counter() - t0
                layers = [layer for r in lynx_compile.reports()[n_reports:] for layer in r.layers]
                row[f"{name}_act_MB"] = activation_mb(layers or dense_layers, dense=not layers)
                row[f"{name}_prune"] = " ".join(f"{layer.name}:{layer.prune}" for layer in layers) or "-"
                row[f"{name}_kernels"] = sum(c.count("async_compile.triton(") for c in code)
                if args.dump_code:
                    Path(args.dump_code).mkdir(parents=True, exist_ok=True)
                    Path(args.dump_code, f"fusion_{name}_{m}.py").write_text("\n\n".join(code))
                out = fn(*inputs[0]).clone()
                ref = out if ref is None else ref
                row[f"{name}_ms"] = _time_ms(fn, inputs, args.runs)
                row[f"{name}_rel_vs_dense"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                torch._dynamo.reset()
        for name in variants:
            if name != "dense":
                row[f"speedup_{name.removeprefix('lynx_')}"] = row["dense_ms"] / row[f"{name}_ms"]
        rows.append(row)
        print(row, flush=True)
    stem = result_stem("fusion", args.out)
    meta = stamp(vars(args), PROTOCOL)
    write_json(stem, meta, rows)
    write_table(
        stem.with_suffix(".md"),
        "FLUX-width MLP block: dense vs lynx (standalone / fused prune+compress)",
        rows,
        [
            "m",
            "dense_ms",
            "lynx_standalone_ms",
            "lynx_fused_ms",
            "speedup_standalone",
            "speedup_fused",
            "lynx_fp8_standalone_ms",
            "lynx_fp8_fused_ms",
            "torchao_fp8_ms",
            "speedup_fp8_standalone",
            "speedup_fp8_fused",
            "speedup_torchao_fp8",
            "lynx_fp8_fused_prune",
            "dense_kernels",
            "lynx_standalone_kernels",
            "lynx_fused_kernels",
            "dense_act_MB",
            "lynx_standalone_act_MB",
            "lynx_fused_act_MB",
            "lynx_fused_prune",
            "dense_compile_s",
            "lynx_standalone_compile_s",
            "lynx_fused_compile_s",
            "lynx_fused_rel_vs_dense",
        ],
        meta=meta,
    )


if __name__ == "__main__":
    main()
