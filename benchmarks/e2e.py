"""End-to-end transformer forward: eager bf16 vs dense torch.compile vs backend="lynx" (GPU).

Full-width zoo architectures at realistic sizes; depth is reduced to fit the GPU time (say so in
the table) and the per-block time is reported beside the whole forward. Timing: CUDA events around
each call (the compiled models replay CUDA graphs), warm-up first, median of ``--runs``, fresh
inputs every call. Writes benchmarks/results/e2e_<gpu>.{json,md,png}.

    python benchmarks/e2e.py --cases flux:1 flux:2 sd3:1 pixart:1 wan:1 flux:1:fused --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lynx_compile  # noqa: E402
from benchmarks.common import gpu_slug, meta, write_table  # noqa: E402
from lynx_compile import zoo  # noqa: E402

# (depth used, depth of the real model) per architecture; resolution/frames as in issue 4
CASES: dict[str, dict[str, Any]] = {
    "flux": {"depth": 2, "resolution": 1024},
    "sd3": {"depth": 4, "resolution": 1024},
    "pixart": {"depth": 4, "resolution": 1024},
    "wan": {"depth": 4, "resolution": 480, "frames": 17},
}


@dataclasses.dataclass
class Row:
    model: str
    variant: str  # "default" (lynx's defaults) or "fused" (fuse_producers=True)
    batch: int
    tokens: int
    depth: int
    eager_ms: float
    inductor_ms: float
    lynx_ms: float
    rel_err_vs_dense: float
    inductor_compile_s: float
    lynx_compile_s: float
    lynx_recompile_s: float  # a second compile in the same process: Inductor's and lynx's caches warm
    layers_sparse: int
    layers_fused: int  # sparse layers whose pruning runs inside the producer's kernel
    layers_total: int
    speedup_vs_inductor: float
    per_block_inductor_ms: float
    per_block_lynx_ms: float


def _sample(out: Any) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)


def _time_ms(fn, make_inputs, runs: int) -> float:
    """Median of CUDA-event times, one fresh input set per call (made outside the timed region)."""
    times = []
    for _ in range(runs):
        kwargs = make_inputs()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn(**kwargs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


VARIANTS: dict[str, dict[str, Any]] = {"default": {}, "fused": {"fuse_producers": True}}


def run_case(name: str, batch: int, runs: int, variant: str = "default") -> Row:
    spec = CASES[name]
    built = zoo.build(name, size="full", batch=batch, dtype=torch.bfloat16, device="cuda", **spec)
    model, kwargs0 = built.model, built.example_kwargs
    seeds = iter(range(1, 10_000))

    def make_inputs() -> dict[str, Any]:
        return zoo.example_inputs(name, model, resolution=spec["resolution"], frames=spec.get("frames"),
                                  batch=batch, dtype=torch.bfloat16, device="cuda", seed=next(seeds))

    with torch.no_grad():
        eager_ms = _time_ms(model, make_inputs, runs)
        dense = torch.compile(model, mode="reduce-overhead")
        t0 = time.perf_counter()
        for _ in range(3):  # cudagraph trees record on the second/third call
            ref = _sample(dense(**kwargs0)).clone()
        torch.cuda.synchronize()
        inductor_compile_s = time.perf_counter() - t0
        inductor_ms = _time_ms(dense, make_inputs, runs)

        n_reports = len(lynx_compile.reports())
        lynx = torch.compile(model, backend="lynx", options=VARIANTS[variant])
        t0 = time.perf_counter()
        for _ in range(3):
            out = _sample(lynx(**kwargs0)).clone()
        torch.cuda.synchronize()
        lynx_compile_s = time.perf_counter() - t0
        lynx_ms = _time_ms(lynx, make_inputs, runs)
        layers = [layer for r in lynx_compile.reports()[n_reports:] for layer in r.layers]
        torch._dynamo.reset()
        t0 = time.perf_counter()
        for _ in range(3):
            _sample(torch.compile(model, backend="lynx", options=VARIANTS[variant])(**kwargs0))
        torch.cuda.synchronize()
        lynx_recompile_s = time.perf_counter() - t0
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    depth = spec["depth"]
    return Row(
        model=name, variant=variant, batch=batch, tokens=built.tokens, depth=depth, eager_ms=eager_ms,
        inductor_ms=inductor_ms,
        lynx_ms=lynx_ms, rel_err_vs_dense=rel, inductor_compile_s=inductor_compile_s, lynx_compile_s=lynx_compile_s,
        lynx_recompile_s=lynx_recompile_s, layers_sparse=sum(layer.sparse for layer in layers),
        layers_fused=sum(layer.prune == "fused" for layer in layers), layers_total=len(layers),
        speedup_vs_inductor=inductor_ms / lynx_ms, per_block_inductor_ms=inductor_ms / depth,
        per_block_lynx_ms=lynx_ms / depth,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", nargs="+", default=["flux:1", "flux:2", "sd3:1", "pixart:1", "wan:1"])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    rows, failures = [], []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        name, batch, *variant = case.split(":")
        try:
            row = run_case(name, int(batch), args.runs, *variant)
            rows.append(dataclasses.asdict(row))
            print(row, flush=True)
        except Exception as e:  # one architecture failing must not lose the others' numbers
            failures.append({"case": case, "error": repr(e)[:500]})
            print(f"{case} FAILED: {e!r}", flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        stem = out / f"e2e_{gpu_slug()}"
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta(), "rows": rows, "failures": failures}, indent=2))
        write_table(stem.with_suffix(".md"), "End-to-end transformer forward (depth reduced: see `depth`)", rows,
                    ["model", "variant", "batch", "tokens", "depth", "eager_ms", "inductor_ms", "lynx_ms", "speedup_vs_inductor",
                     "rel_err_vs_dense", "inductor_compile_s", "lynx_compile_s", "lynx_recompile_s", "layers_sparse",
                     "layers_fused", "layers_total",
                     "per_block_inductor_ms", "per_block_lynx_ms"], failures)


if __name__ == "__main__":
    main()
