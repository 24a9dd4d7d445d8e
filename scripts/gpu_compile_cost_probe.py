"""What the two biggest parts of lynx's compile time buy (GPU): the algorithm sweep and the
prune+compress kernel's tile configs (each compiled by the self-check and benchmarked by the
autotuner for every new shape).

1. Tiles: each of 12 candidate tiles (the autotuner's list before session 9), and 4 with more
   elements per thread or more warps per row (session 17, for the H200, where the kernel is
   further from its memory floor), on the DiT activation shapes; ``prune_compress._configs``
   keeps the three that cover them all.
2. Sweep: the time of its parts (the rotating operands, whose compression autotunes the kernel
   for a new shape; the quick pass over every id; the finalists), and the id it picks, for four
   shapes; then the cost model's timing of the same shape. The run in benchmarks/results/ also timed cuSPARSELt's own search, which the sweep then
   called to learn the number of ids (0.5 s for 4608 x 3072 x 12288; since replaced).

    python scripts/gpu_compile_cost_probe.py OUT_DIR [--sweep-only | --tiles-only]   # one part: compile_{sweep,tiles}_probe_<gpu>.json
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import meta, result_stem  # noqa: E402
from lynx_compile.codegen import cusparselt  # noqa: E402
from lynx_compile.codegen.prune_compress import _launch, padded_rows  # noqa: E402

DT = torch.bfloat16
KS = [1152, 1536, 3072, 4608, 5120, 6144, 12288, 13824, 15360]
MS = [512, 1024, 4096, 4608, 8192, 16384]
CANDIDATES = [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w)  # rows a divisor of the 64-row metadata tile
              for bm, bk, w in [(16, 128, 2), (16, 256, 4), (16, 512, 4), (32, 64, 2), (32, 128, 4), (32, 256, 4),
                                (32, 512, 8), (64, 64, 4), (64, 128, 4), (64, 128, 8), (64, 256, 8), (64, 512, 16),
                                (16, 256, 2), (16, 512, 8), (16, 1024, 8), (32, 512, 4)]]


def tiles() -> list[dict[str, object]]:
    rows = []
    for m in MS:
        for k in KS:
            xs = cusparselt.rotating_inputs(lambda: torch.randn(m, k, device="cuda", dtype=DT), m * k * 2)
            times = {}
            for c in CANDIDATES:
                name = f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_K']}w{c.num_warps}"
                times[name] = cusparselt.cuda_graph_ms(lambda i: _launch(xs[i % len(xs)], padded_rows(m), c),
                                                       calls=max(20, len(xs)), replays=7)
            rows.append({"m": m, "k": k, "ms": times})
            best = min(times, key=times.get)
            print(f"tiles {m}x{k}: best {best} {times[best]:.4f} ms", flush=True)
    return rows


def sweep() -> list[dict[str, object]]:
    """Each shape's sweep and cost timing, split into parts (first calls of a process included:
    the first shape runs again at the end)."""
    parts: dict[str, float] = {}
    phase = ["sweep"]

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                torch.cuda.synchronize()
                parts[f"{phase[0]}: {name}"] = parts.get(f"{phase[0]}: {name}", 0.0) + time.perf_counter() - t0
        return wrapper

    cusparselt._cached = lambda section, key, compute: compute()  # time every call, cache or not
    cusparselt._operands = timed("operands", cusparselt._operands)
    queued_ms = cusparselt.queued_ms
    cusparselt.queued_ms = lambda call, keys, calls, rounds=1, refused=(): timed(  # the walk over ids: refused
        "quick pass" if refused else "timings", queued_ms)(call, keys, calls, rounds, refused)
    logging.getLogger("lynx_compile").setLevel(logging.DEBUG)
    logging.getLogger("lynx_compile").addHandler(logging.StreamHandler(sys.stdout))
    cusparselt.fast_compress_ok(torch.device("cuda"), DT)
    out = []
    shapes = [(4608, 3072, 12288), (512, 3072, 3072), (4096, 1536, 1536), (4096, 12288, 3072)]
    for m, k, n in [*shapes, shapes[0]]:
        parts.clear()
        phase[0] = "sweep"
        t0 = time.perf_counter()
        alg = cusparselt._search(m, k, n, DT, torch.device("cuda"))
        total = time.perf_counter() - t0
        phase[0] = "costs"
        t0 = time.perf_counter()
        cusparselt.measure_costs(m, k, n, DT, alg)
        costs = time.perf_counter() - t0
        out.append({"m": m, "k": k, "n": n, "alg": alg, "sweep_s": total, "costs_s": costs, **parts})
        print(f"sweep {m},{k},{n} -> {alg}: {total:.2f} s, costs {costs:.2f} s {parts}", flush=True)
    return out


def main() -> None:
    out = Path(sys.argv[1])
    parts = {"sweep": sweep, "tiles": tiles}
    modes = {"--sweep-only": ("compile_sweep_probe", ["sweep"]), "--tiles-only": ("compile_tiles_probe", ["tiles"])}
    stem, wanted = next((modes[flag] for flag in modes if flag in sys.argv), ("compile_cost_probe", list(parts)))
    result = {"meta": meta(), **{name: parts[name]() for name in wanted}}
    result_stem(out, stem).with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
