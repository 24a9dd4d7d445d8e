"""Per-layer benchmark of the lynx linear against cuBLAS, on the DiT GEMM shapes (GPU).

For each (layer, M): cuBLAS ``F.linear`` with bias; the fused prune+compress kernel beside its
memory floor (read 2 B/elem, write 1 B/elem of values plus the metadata, at the device-to-device
copy bandwidth measured in the same run), and with a channel order to permute in each tile (option
``permute_channels``, ``prune_ordered_ms``); the cuSPARSELt GEMM alone with the fastest algorithm
id (``best_alg``); and the whole lynx linear as the compiled model runs it (prune_compress,
sparse_mm, row slice, bias add), also without the bias add: in a compiled DiT the add can fuse
into the consumer (GELU, gated residual), a pointwise kernel the dense path runs too; and with the
bias folded into the GEMM (option ``fold_bias``: the activation compressed with a ones column, the
weight with the bias appended, K + BIAS_COLUMNS, its own algorithm id); and with the low-rank branch of
option ``low_rank=32`` fused into the sparse GEMM as the backend runs it (``lynx_lowrank32_ms``: ``x @ A``, the
prune kernel with its columns appended (``prune_compress_low_rank``), the GEMM at K + 2r on ``[W | spread(B^T)]``
with its own algorithm id, the bias add; NaN where that kernel fails its self-check, as the backend then keeps the
branch unfused) and unfused (``lynx_lowrank32_unfused_ms``: the lynx linear, then ``x @ A`` and ``@ B`` with the
add in cuBLAS's epilogue, as ``addmm``); ``lowrank32 / lynx``: the fused branch's cost, its time over the lynx
linear's. The table's `floor bound` is
what a prune+compress pass of its own could give at best (the sparse GEMM plus the pass at its memory
floor). All under CUDA-graph replay (at least 20
calls per graph, median of 15 replays), after warm-up, on fresh random inputs rotated so that L2
never holds them. A separate section measures the CPU time per call without graphs (cuSPARSELt
plans its GEMM at every call).

    python -m benchmarks.linear [--m 1024 4096 16384] [--quick] [--no-fp8]

With fp8 (default): rows gain ``lynx_fp8_ms`` (precision="fp8": the row amax as a reduction of its own (in a
model Inductor can fuse it into x's producer), prune + quantise + compress, the e4m3 GEMM, the scale
epilogue + bias compiled into one kernel) and ``torchao_fp8_ms`` (torchao's
``Float8DynamicActivationFloat8WeightConfig(PerRow())`` + torch.compile, Inductor's settings left as
they are: ``benchmarks.common.torchao_fp8``; empty without torchao).

Writes benchmarks/results/<gpu>/linear.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, result_stem, stamp, torchao_fp8, write_json, write_table
from lynx_compile.calibration import balanced_order
from lynx_compile.codegen.cusparselt import compress_compat, compress_compat_fp8, sparse_mm
from lynx_compile.codegen.cusparselt_layout import CSLT_MULTIPLE, FP8_MULTIPLE, metadata_nbytes
from lynx_compile.codegen.prune_compress import prune_compress, prune_compress_autotuned
from lynx_compile.codegen.prune_compress_low_rank import prune_compress_low_rank
from lynx_compile.codegen.prune_quantise_compress import prune_quantise_compress, row_amax
from lynx_compile.codegen.self_check import fast_compress_ok
from lynx_compile.codegen.tuning import best_alg, cuda_graph_ms, rotating_inputs
from lynx_compile.semantics import (
    BIAS_COLUMNS,
    fp8_epilogue,
    quantise_fp8_rows,
    round_up,
    with_bias_column,
    with_branch_columns,
)

LAYERS = [  # (name, K, N): in_features -> out_features
    ("pixart fc1", 1152, 4608),
    ("pixart fc2", 4608, 1152),
    ("sd3 fc1", 1536, 6144),
    ("sd3 fc2", 6144, 1536),
    ("flux proj", 3072, 3072),
    ("flux qkv", 3072, 9216),
    ("flux fc1", 3072, 12288),
    ("flux fc2", 12288, 3072),
    ("flux single out", 15360, 3072),
    ("wan fc1", 5120, 13824),
    ("wan fc2", 13824, 5120),
]
M_VALUES = (1024, 4096, 16384)
LOW_RANK = 32  # the branch's rank in lynx_lowrank32_ms and lynx_lowrank32_unfused_ms


@dataclasses.dataclass
class Row:
    layer: str
    m: int
    k: int
    n: int
    dtype: str
    dense_ms: float
    prune_ms: float
    prune_floor_ms: float
    sparse_gemm_ms: float
    lynx_ms: float
    lynx_nobias_ms: float
    lynx_folded_ms: float  # bias inside the GEMM (fold_bias)
    path: str
    alg_id: int
    search: list[int]  # everything cuSPARSELt's search returned: alg_id, split_k, split_k_mode, ...
    prune_ordered_ms: float = math.nan  # the prune kernel permuting a channel order in its tiles (permute_channels)
    lynx_lowrank32_ms: float = math.nan  # the lynx linear with a rank-LOW_RANK branch fused in (option low_rank)
    lynx_lowrank32_unfused_ms: float = math.nan  # ... the branch as two cuBLAS GEMMs beside it instead
    # precision="fp8": prune + quantise + compress, the e4m3 GEMM (bf16 out), the scale epilogue and the
    # bias add (one compiled pointwise kernel, as Inductor fuses it in a model); torchao's dense fp8
    # (Float8DynamicActivationFloat8WeightConfig, per row, torch.compile), None where it is not installed
    lynx_fp8_ms: float | None = None
    torchao_fp8_ms: float | None = None
    fp8_alg_id: int | None = None
    # lynx_fp8_ms's parts, each alone: the row amax + prune + quantise + compress, the e4m3 GEMM, the epilogue
    fp8_prune_ms: float | None = None
    fp8_amax_ms: float | None = None  # the row amax alone, part of fp8_prune_ms: the rest is the Triton pass
    fp8_gemm_ms: float | None = None
    fp8_epilogue_ms: float | None = None


def compressor(dtype: torch.dtype) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The compressor the backend would pick after its self-check."""
    if fast_compress_ok(torch.device("cuda"), dtype):
        return "cusparselt", prune_compress
    return "cusparselt-compat", compress_compat


def fp8_compressor(dtype: torch.dtype) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """The fp8 compressor the backend would pick after its self-check, with the row amax its graph computes
    first (``ops.compress_activation_fp8``): counted, as a reduction of its own (no producer of x to fuse into)."""
    fast = fast_compress_ok(torch.device("cuda"), dtype, fp8=True)

    def compress(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        amax = row_amax(x)
        return prune_quantise_compress(x, rows, amax=amax) if fast else compress_compat_fp8(x, rows)

    return compress


def lynx_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    alg_id: int,
    compress: Callable[[torch.Tensor], torch.Tensor] = prune_compress,
) -> torch.Tensor:
    """One nn.Linear on the fast path, as the compiled graph runs it."""
    return sparse_mm(compress(x), weight, alg_id)[: x.shape[0]] + bias


def lynx_low_rank_unfused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    alg_id: int,
    a: torch.Tensor,
    b: torch.Tensor,
    compress: Callable[[torch.Tensor], torch.Tensor] = prune_compress,
) -> torch.Tensor:
    """The lynx linear with option ``low_rank``'s branch ``(x A) B`` added (in the second GEMM's epilogue)."""
    return torch.addmm(lynx_linear(x, weight, bias, alg_id, compress), x @ a, b)


def lynx_low_rank_linear(
    x: torch.Tensor, branch_weight: torch.Tensor, bias: torch.Tensor, alg_id: int, a: torch.Tensor
) -> torch.Tensor:
    """The lynx linear with the branch fused in: ``[P(x) | spread(x A)] @ [W | spread(B^T)]^T + b``."""
    compressed, _ = prune_compress_low_rank(x, a)
    return sparse_mm(compressed, branch_weight, alg_id)[: x.shape[0]] + bias


def copy_bandwidth() -> float:
    """Device-to-device copy rate in bytes/ms (read + written), the best of 256 MiB and 1 GiB copies."""

    def rate(nbytes: int) -> float:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
        dst = torch.empty_like(src)
        return 2 * nbytes / cuda_graph_ms(lambda i: dst.copy_(src), calls=10)

    return max(rate(256 << 20), rate(1 << 30))


def search_all(compressed: torch.Tensor, weight: torch.Tensor) -> list[int]:
    """Everything cuSPARSELt's search returns (torch >= 2.11: alg_id, split_k, split_k_mode, ...)."""
    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is None:
        return []
    return [int(v) for v in search(compressed, weight.t(), None, None, None, False)]


def prune_floor_bytes(m: int, k: int, dtype: torch.dtype) -> int:
    m_pad = round_up(m, CSLT_MULTIPLE)  # what prune_compress writes for m rows
    return m * k * dtype.itemsize + m_pad * k // 2 * dtype.itemsize + metadata_nbytes(m_pad, k, dtype)


def measure(layer: str, m: int, k: int, n: int, dtype: torch.dtype, bandwidth: float, fp8: bool = True) -> Row:
    path, compress = compressor(dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    b = torch.randn(n, device="cuda", dtype=dtype)
    xs = rotating_inputs(lambda: torch.randn(m, k, device="cuda", dtype=dtype), m * k * dtype.itemsize)
    cs = [compress(x) for x in xs]
    alg = best_alg(m, k, n, dtype, "cuda")
    folded_w = with_bias_column(w, b)
    folded_alg = best_alg(m, k + BIAS_COLUMNS, n, dtype, "cuda")
    a = torch.randn(k, LOW_RANK, device="cuda", dtype=dtype) / k**0.5
    b_lr = torch.randn(LOW_RANK, n, device="cuda", dtype=dtype) / LOW_RANK**0.5
    branch_w = with_branch_columns(w, b_lr)
    fused = fast_compress_ok(torch.device("cuda"), dtype, low_rank=True)
    branch_alg = best_alg(m, k + 2 * LOW_RANK, n, dtype, "cuda")
    order = balanced_order(torch.rand(k)).cuda()  # any order in blocks costs the same: a random one
    calls = max(20, len(xs))  # every buffer once per replay

    def timed(call: Callable[[int], object]) -> float:
        return cuda_graph_ms(call, calls=calls)

    row = Row(
        layer=layer,
        m=m,
        k=k,
        n=n,
        dtype=str(dtype).removeprefix("torch."),
        dense_ms=timed(lambda i: F.linear(xs[i % len(xs)], w, b)),
        prune_ms=timed(lambda i: compress(xs[i % len(xs)])),
        prune_floor_ms=prune_floor_bytes(m, k, dtype) / bandwidth,
        prune_ordered_ms=timed(lambda i: prune_compress(xs[i % len(xs)], order=order))
        if path == "cusparselt"
        else math.nan,
        sparse_gemm_ms=timed(lambda i: sparse_mm(cs[i % len(cs)], w, alg)),
        lynx_ms=timed(lambda i: lynx_linear(xs[i % len(xs)], w, b, alg, compress)),
        lynx_nobias_ms=timed(lambda i: sparse_mm(compress(xs[i % len(xs)]), w, alg)),
        lynx_folded_ms=timed(
            lambda i: sparse_mm(compress(xs[i % len(xs)], ones_column=True), folded_w, folded_alg)[:m]
        ),
        path=path,
        alg_id=alg,
        search=search_all(cs[0], w),
        lynx_lowrank32_ms=timed(lambda i: lynx_low_rank_linear(xs[i % len(xs)], branch_w, b, branch_alg, a))
        if fused
        else math.nan,
        lynx_lowrank32_unfused_ms=timed(
            lambda i: lynx_low_rank_unfused_linear(xs[i % len(xs)], w, b, alg, a, b_lr, compress)
        ),
    )
    return measure_fp8(row, w, b, xs, calls) if fp8 else row


@functools.cache
def _fp8_epilogue() -> Callable[..., torch.Tensor]:
    """The scale epilogue and bias add, compiled as the backend's graph gets them (one kernel)."""
    return torch.compile(lambda acc, sx, ws, b: fp8_epilogue(acc, sx, ws, b.dtype) + b, dynamic=True)


def lynx_fp8_linear(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor,
    alg_id: int,
    compress: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """One nn.Linear on the fp8 fast path, as the compiled graph runs it (``compress``: ``fp8_compressor``'s)."""
    c, sx = compress(x, round_up(x.shape[0], FP8_MULTIPLE))
    return _fp8_epilogue()(sparse_mm(c, wq, alg_id, out_dtype=x.dtype)[: x.shape[0]], sx, ws, bias)


def torchao_fp8_linear(w: torch.Tensor, b: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchao's dense fp8 linear (dynamic per-row activation scales, per-row weight scales), compiled;
    None (said once) where torchao is not installed: ``pip install -e '.[bench]'``."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    quantised = torchao_fp8(lin)
    return None if quantised is None else torch.compile(quantised, dynamic=False)


def measure_fp8(row: Row, w: torch.Tensor, b: torch.Tensor, xs: list[torch.Tensor], calls: int) -> Row:
    """The fp8 columns of ``row`` (same weights and inputs): lynx fp8 and torchao's dense fp8."""
    dtype, (m, k, n) = w.dtype, (row.m, row.k, row.n)
    wq, ws = quantise_fp8_rows(w)
    compress = fp8_compressor(dtype)
    alg = best_alg(m, k, n, dtype, "cuda", fp8=True)
    row.fp8_alg_id = alg
    row.lynx_fp8_ms = cuda_graph_ms(lambda i: lynx_fp8_linear(xs[i % len(xs)], wq, ws, b, alg, compress), calls=calls)
    m_pad = round_up(m, FP8_MULTIPLE)
    cs = [compress(x, m_pad) for x in xs]
    accs = [sparse_mm(c, wq, alg, out_dtype=dtype)[:m] for c, _ in cs]
    row.fp8_prune_ms = cuda_graph_ms(lambda i: compress(xs[i % len(xs)], m_pad), calls=calls)
    row.fp8_amax_ms = cuda_graph_ms(lambda i: row_amax(xs[i % len(xs)]), calls=calls)
    row.fp8_gemm_ms = cuda_graph_ms(lambda i: sparse_mm(cs[i % len(cs)][0], wq, alg, out_dtype=dtype), calls=calls)
    row.fp8_epilogue_ms = cuda_graph_ms(
        lambda i: _fp8_epilogue()(accs[i % len(accs)], cs[i % len(cs)][1], ws, b), calls=calls
    )
    torchao = torchao_fp8_linear(w, b)
    if torchao is not None:
        with torch.no_grad():
            row.torchao_fp8_ms = cuda_graph_ms(lambda i: torchao(xs[i % len(xs)]), calls=calls)
    return row


def host_ms_per_call(fn: Callable[[], object], calls: int = 50) -> float:
    """CPU time to issue one call (no graph), with the GPU idle at the start so launches never wait."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) * 1e3 / calls
    torch.cuda.synchronize()
    return host


def cpu_overhead(dtype: torch.dtype) -> dict[str, object]:
    m, k, n = 1024, 3072, 3072
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    b = torch.randn(n, device="cuda", dtype=dtype)
    alg = best_alg(m, k, n, dtype, "cuda")
    c = prune_compress(x)
    return {
        "shape": {"m": m, "k": k, "n": n, "dtype": str(dtype).removeprefix("torch.")},
        "note": "host ms per call without CUDA graphs (time to issue the call)",
        "dense_linear_ms": host_ms_per_call(lambda: F.linear(x, w, b)),
        "prune_compress_ms": host_ms_per_call(lambda: prune_compress(x)),
        "sparse_mm_ms": host_ms_per_call(lambda: sparse_mm(c, w, alg)),
        "lynx_linear_ms": host_ms_per_call(lambda: lynx_linear(x, w, b, alg)),
    }


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


# The table's ratios, per row and as geomeans per M. `floor bound`: the most a separate prune+compress
# pass can give, the sparse GEMM plus that pass at its memory floor.
RATIOS: dict[str, Callable[[Row], float]] = {
    "prune/floor": lambda r: r.prune_ms / r.prune_floor_ms,
    "ordered / prune": lambda r: r.prune_ordered_ms / r.prune_ms,
    "gemm speedup": lambda r: r.dense_ms / r.sparse_gemm_ms,
    "floor bound": lambda r: r.dense_ms / (r.sparse_gemm_ms + r.prune_floor_ms),
    "lynx speedup": lambda r: r.dense_ms / r.lynx_ms,
    "no-bias speedup": lambda r: r.dense_ms / r.lynx_nobias_ms,
    "folded speedup": lambda r: r.dense_ms / r.lynx_folded_ms,
    "lowrank32 speedup": lambda r: r.dense_ms / r.lynx_lowrank32_ms,
    "lowrank32 / lynx": lambda r: r.lynx_lowrank32_ms / r.lynx_ms,
    "lowrank32 unfused speedup": lambda r: r.dense_ms / r.lynx_lowrank32_unfused_ms,
    "fp8 speedup": lambda r: r.dense_ms / r.lynx_fp8_ms if r.lynx_fp8_ms else math.nan,
    "fp8 gemm vs torchao": lambda r: (
        r.torchao_fp8_ms / r.fp8_gemm_ms if r.fp8_gemm_ms and r.torchao_fp8_ms else math.nan
    ),
    "fp8 vs torchao": lambda r: r.torchao_fp8_ms / r.lynx_fp8_ms if r.lynx_fp8_ms and r.torchao_fp8_ms else math.nan,
}
LYNX_SPEEDUPS = ("lynx speedup", "no-bias speedup", "folded speedup")  # what the cost model can keep dense


def markdown_rows(rows: list[Row], columns: list[str]) -> list[dict[str, object]]:
    blank = dict.fromkeys(columns, "")
    out: list[dict[str, object]] = []
    for r in rows:
        out.append({**blank, **dataclasses.asdict(r), **{name: ratio(r) for name, ratio in RATIOS.items()}})
    for m in sorted({r.m for r in rows}):
        sub = [r for r in rows if r.m == m]
        out.append(
            {
                **blank,
                "layer": "**geomean**",
                "m": m,
                **{name: geomean([ratio(r) for r in sub]) for name, ratio in RATIOS.items()},
            }
        )
        out.append(
            {
                **blank,
                "layer": "**geomean, cost model**",
                "m": m,
                **{name: geomean([max(1.0, RATIOS[name](r)) for r in sub]) for name in LYNX_SPEEDUPS},
            }
        )
    return out


PROTOCOL = (
    "CUDA-graph replay of at least 20 calls per graph (every rotating input once), median of 15 replays, "
    "after 3 warm-up calls; inputs rotated so that L2 never holds them; host ms per call without graphs apart"
)
COLUMNS = [
    "layer",
    "m",
    "k",
    "n",
    "dense_ms",
    "prune_ms",
    "prune_floor_ms",
    "prune/floor",
    "prune_ordered_ms",
    "ordered / prune",
    "sparse_gemm_ms",
    "gemm speedup",
    "floor bound",
    "lynx_ms",
    "lynx speedup",
    "lynx_nobias_ms",
    "no-bias speedup",
    "lynx_folded_ms",
    "folded speedup",
    "lynx_lowrank32_ms",
    "lowrank32 speedup",
    "lowrank32 / lynx",
    "lynx_lowrank32_unfused_ms",
    "lowrank32 unfused speedup",
    "lynx_fp8_ms",
    "fp8_prune_ms",
    "fp8_amax_ms",
    "fp8_gemm_ms",
    "fp8_epilogue_ms",
    "fp8 speedup",
    "torchao_fp8_ms",
    "fp8 gemm vs torchao",
    "fp8 vs torchao",
    "alg_id",
    "path",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results root; files go to OUT/<gpu>/linear.*")
    parser.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    parser.add_argument("--quick", action="store_true", help="three layers only")
    parser.add_argument("--no-fp8", dest="fp8", action="store_false", help="skip lynx fp8 and torchao fp8")
    args = parser.parse_args()
    # torchao's compiled linear is one code object for every shape: past Dynamo's default limit of 8
    # recompiles, the later layers would silently run it eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(LAYERS) * len(args.m))
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth()
    print(f"device-to-device copy: {bandwidth / 1e9:.2f} TB/s", flush=True)
    layers = LAYERS[::4] if args.quick else LAYERS
    rows: list[Row] = []
    failures: list[dict[str, str]] = []
    stem = result_stem("linear", args.out)
    for m in args.m:
        for layer, k, n in layers:
            try:
                rows.append(measure(layer, m, k, n, dtype, bandwidth, args.fp8))
                r = rows[-1]
                print(
                    f"{layer:16s} M={m:5d} {k:5d}->{n:5d}  dense {r.dense_ms:.3f}  prune {r.prune_ms:.3f} "
                    f"(floor {r.prune_floor_ms:.3f})  gemm {r.sparse_gemm_ms:.3f}  lynx {r.lynx_ms:.3f}  "
                    f"x{r.dense_ms / r.lynx_ms:.2f}  lowrank32 {r.lynx_lowrank32_ms:.3f} "
                    f"(unfused {r.lynx_lowrank32_unfused_ms:.3f})  fp8 {r.lynx_fp8_ms}  torchao fp8 {r.torchao_fp8_ms}",
                    flush=True,
                )
            except Exception as e:  # one failing shape must not lose the others
                failures.append({"case": f"{layer} M={m}", "error": repr(e)[:300]})
                print("FAILED", failures[-1], flush=True)
            torch.cuda.empty_cache()
    meta = {**stamp(vars(args), PROTOCOL), "copy_tb_s": bandwidth / 1e9}
    overhead = cpu_overhead(dtype)
    write_json(
        stem,
        meta,
        [dataclasses.asdict(r) for r in rows],
        cpu_overhead=overhead,
        failures=failures,
        # the prune kernel's autotuned tiles per (K, M bucket, norms, low rank, dtypes): introspection only
        prune_configs={str(k): str(v) for k, v in prune_compress_autotuned.cache.items()},
    )
    write_table(
        stem.with_suffix(".md"),
        "Linear layers: cuBLAS dense vs lynx 2:4 (bf16, CUDA-graph replay, ms)",
        markdown_rows(rows, COLUMNS),
        COLUMNS,
        failures,
        meta,
    )
    with stem.with_suffix(".md").open("a") as f:
        f.write(
            "\n`floor bound`: dense_ms / (sparse_gemm_ms + prune_floor_ms), the speed-up a prune+compress pass of "
            "its own could give at the copy rate, bias aside.\n"
        )
        f.write(
            f"\nDevice-to-device copy {bandwidth / 1e9:.2f} TB/s (read + write). CPU time per call without "
            f"graphs: {json.dumps(overhead)}\n"
        )
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
