"""Where the GPU time of one transformer forward goes, dense vs lynx (GPU): the per-kernel answer to
"why is the end-to-end speed-up below the per-layer one".

Profiles the same full-width zoo model as ``e2e.py`` compiled as dense Inductor and as the lynx
``--variants`` (default: ``lynx``, with the standalone prune+compress kernel, and ``lynx_fused``, with
``fuse_producers``; also ``lynx_fold``, ``lynx_fold_fused``), by default with CUDA graphs off
(``--cudagraphs``: dense ``reduce-overhead`` and lynx's default graphs; the profiler still sees each
kernel of a replayed graph). Sums the device time of each kernel over ``--calls`` back-to-back
forwards and sorts it into categories by kernel name:

- ``dense_gemm``: cuBLAS / CUTLASS / Inductor GEMM templates;
- ``sparse_gemm``: cuSPARSELt;
- ``prune_compress``: the standalone Triton kernel, or the Inductor kernels of the lowering (which
  then also carry the fused producer's work, e.g. a GELU);
- ``attention``: flash / cuDNN / efficient attention;
- ``other``: norms, RoPE, elementwise, copies.

``idle_ms``: the GPU's idle time per forward (span of the profiled forwards minus kernel time; with
graphs off it includes waiting for the CPU to launch). ``amdahl_bound`` is the speed-up the whole
forward would get if only the GEMMs lynx sparsified ran at the measured ``sparse_gemm`` speed and
pruning were free. Writes benchmarks/results/<gpu>/breakdown.{json,md};
``--append`` adds cases to them (rows differ by model, batch, variant and ``cudagraphs``).

    python -m benchmarks.breakdown --cases flux:1
    python -m benchmarks.breakdown --cases sd3:1 --cudagraphs --append
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import lynx_compile
from benchmarks.common import RESULTS, earlier_rows, result_stem, stamp, write_json, write_table
from benchmarks.e2e import CASES
from benchmarks.e2e import VARIANTS as E2E_VARIANTS
from lynx_compile import zoo

PROTOCOL = "torch.profiler device time per kernel, summed over --calls back-to-back forwards after 3 warm-up calls"

CATEGORIES = ("dense_gemm", "sparse_gemm", "prune_compress", "attention", "other")
_PATTERNS = [  # first match wins
    ("prune_compress", re.compile(r"compress", re.I)),
    ("sparse_gemm", re.compile(r"sparse|cusparselt|sptensor|_sp_|spmma|spgemm", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
    ("dense_gemm", re.compile(r"gemm|nvjet|cutlass|xmma|matmul|triton_tem_fused_(?:add)?mm|_mm_|addmm", re.I)),
]
# dense, then e2e's lynx variants: lynx (defaults), lynx_fused, lynx_fold, lynx_fold_fused
# (not e2e's model-side variants: the dense model profiled beside them would have to change too)
VARIANTS = {
    "dense": {},
    **{"lynx" if v == "default" else f"lynx_{v}": e.options for v, e in E2E_VARIANTS.items() if not e.fuse_qkv},
}


def category(kernel: str) -> str:
    return next((cat for cat, pattern in _PATTERNS if pattern.search(kernel)), "other")


def _profile(fn, kwargs: dict[str, Any], calls: int) -> tuple[dict[str, float], dict[str, float], float]:
    """(ms per forward per category, per kernel name, and idle) over ``calls`` forwards."""
    for _ in range(3):
        fn(**kwargs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(**kwargs)
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = collections.defaultdict(float)
    spans = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time_total > 0:
            per_kernel[event.name] += event.device_time_total / 1e3 / calls
            spans.append((event.time_range.start, event.time_range.end))
    span_ms = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e3 / calls
    per_cat = dict.fromkeys(CATEGORIES, 0.0)
    for name, ms in per_kernel.items():
        per_cat[category(name)] += ms
    return per_cat, dict(per_kernel), span_ms - sum(per_kernel.values())


def run_case(
    name: str, batch: int, calls: int, cudagraphs: bool, variants: list[str]
) -> tuple[list[dict[str, Any]], dict[str, list]]:
    spec = CASES[name]
    built = zoo.build(name, size="full", batch=batch, dtype=torch.bfloat16, device="cuda", **spec)
    rows, kernels = [], {}
    with torch.no_grad():
        for variant in ["dense", *variants]:
            options = VARIANTS[variant]
            torch._dynamo.reset()
            n = len(lynx_compile.reports())
            if variant == "dense":
                model = torch.compile(built.model, mode="reduce-overhead" if cudagraphs else None)
            else:
                model = torch.compile(built.model, backend="lynx", options={**options, "cudagraphs": cudagraphs})
            per_cat, per_kernel, idle_ms = _profile(model, built.example_kwargs, calls)
            layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "tokens": built.tokens,
                    "depth": spec["depth"],
                    "variant": variant,
                    "cudagraphs": cudagraphs,
                    "total_ms": sum(per_cat.values()),
                    **{f"{c}_ms": per_cat[c] for c in CATEGORIES},
                    "idle_ms": idle_ms,
                    "layers_sparse": sum(layer.sparse for layer in layers),
                    "layers_fused": sum(layer.prune == "fused" for layer in layers),
                }
            )
            kernels[variant] = sorted(per_kernel.items(), key=lambda kv: -kv[1])
            kernels[f"{variant}_layers"] = [
                (layer.name, layer.m, layer.k, layer.n, layer.prune) for layer in layers if layer.sparse
            ]
    dense = rows[0]
    for row in rows[1:]:  # the dense GEMM time lynx moved to the sparse path, and what it became there
        moved = dense["dense_gemm_ms"] - row["dense_gemm_ms"]
        row["amdahl_bound"] = dense["total_ms"] / (dense["total_ms"] - moved + row["sparse_gemm_ms"])
    for row in rows:
        row["speedup_vs_dense"] = dense["total_ms"] / row["total_ms"]
    return rows, kernels


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["model"], row["batch"], row["variant"], row["cudagraphs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["flux:1"])
    p.add_argument("--calls", type=int, default=5)
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS)[1:],
        default=["lynx", "lynx_fused"],
        help="lynx variants profiled beside dense",
    )
    p.add_argument("--cudagraphs", action="store_true", help="profile graph replays (dense: reduce-overhead)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results root; files go to OUT/<gpu>/breakdown.*")
    p.add_argument("--append", action="store_true", help="add the cases to the rows already in the result files")
    args = p.parse_args()
    stem = result_stem("breakdown", args.out)
    meta = stamp(vars(args), PROTOCOL)
    earlier, kernels = [], {}
    if args.append and stem.with_suffix(".json").exists():
        earlier = earlier_rows(stem, meta)
        kernels = json.loads(stem.with_suffix(".json").read_text()).get("kernels", {})
    rows = []
    for case in args.cases:
        name, batch = case.split(":")
        case_rows, kernels[f"{case}{':cudagraphs' if args.cudagraphs else ''}"] = run_case(
            name, int(batch), args.calls, args.cudagraphs, args.variants
        )
        rows.extend({**row, "commit": meta["commit"]} for row in case_rows)
        for row in case_rows:
            print(row, flush=True)
    rerun = {_row_key(r) for r in rows}
    rows = [r for r in earlier if _row_key(r) not in rerun] + rows
    write_json(stem, meta, rows, kernels=kernels)
    write_table(
        stem.with_suffix(".md"),
        "GPU time per forward by kernel category (ms; `cudagraphs`: CUDA graphs on)",
        rows,
        [
            "model",
            "batch",
            "tokens",
            "depth",
            "variant",
            "cudagraphs",
            "total_ms",
            *(f"{c}_ms" for c in CATEGORIES),
            "idle_ms",
            "speedup_vs_dense",
            "amdahl_bound",
            "layers_sparse",
            "layers_fused",
        ],
        meta=meta,
    )


if __name__ == "__main__":
    main()
