"""Compile-time tuning of the fast path: timing helpers, cuSPARSELt's algorithm search, the cost
model's measurements, and the disk cache that makes a second compile measure nothing.

The cache lives in Inductor's cache directory (``<TORCHINDUCTOR_CACHE_DIR>/lynx/``), so
``torch._inductor.utils.fresh_cache()`` starts it afresh as it does Inductor's and Triton's; it is
keyed by GPU, cuSPARSELt version, dtype and shape. How the timings are taken: docs/design.md,
"Algorithm search and timing".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

from ..semantics import BIAS_COLUMNS, norm_partials, quantise_fp8_rows, round_up
from . import cusparselt, self_check
from .cusparselt_layout import CSLT_MULTIPLE
from .prune_compress import prune_compress, prune_compress_with_norms
from .prune_compress_low_rank import prune_compress_low_rank
from .prune_quantise_compress import prune_quantise_compress

log = logging.getLogger("lynx_compile")

K = TypeVar("K", bound=Hashable)
_LOCK = threading.Lock()
_MEMORY: dict[Path, dict[str, object]] = {}  # each cache file's entries read or written by this process
# cuSPARSELt numbers its algorithms from 0 and refuses an id past the last (0-20 for bf16 on an H100
# with cuSPARSELt 0.8, whose ALG_CONFIG_MAX_ID reads 21); the bound only stops a runaway loop
MAX_ALG_IDS = 256


def cache_dir() -> Path:
    """Where searched algorithms and measured times persist: ``lynx/`` in Inductor's cache directory."""
    return Path(inductor_cache_dir()) / "lynx"


def _cache_key(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> str:
    name = torch.cuda.get_device_name(device)
    return f"{name}|cusparselt={torch.backends.cusparselt.version()}|{dtype}|m={m},k={k},n={n}"


def _cached(section: str, key: str, compute: Callable[[], object]) -> object:
    """Look ``key`` up in memory, then on disk; compute and persist it on a miss. Memory is kept per
    file, so a new cache directory (``fresh_cache``) is a miss."""
    path = cache_dir() / f"{section}.json"
    with _LOCK:
        memory = _MEMORY.setdefault(path, {})
        if key in memory:
            return memory[key]
        try:
            stored = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError) as e:  # a damaged cache costs a re-measurement only
            log.warning("lynx: ignoring unreadable cache %s: %s", path, e)
            stored = {}
        if key not in stored:
            stored[key] = compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
            tmp.replace(path)  # atomic: concurrent compiles never read half a file
        memory[key] = stored[key]
        return stored[key]


def _weight(n: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(n, k, dtype=dtype, device=device) / k**0.5


def _compressor(
    device: torch.device,
    dtype: torch.dtype,
    ones_column: bool = False,
    norms: bool = False,
    fp8: bool = False,
    a: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compression the model will run: the Triton kernel (with a ones column, or summing the
    norms compensation needs, or quantising to fp8, or appending a fused low-rank branch's ``x a``),
    or the exact slow path where that kernel failed its self-check (a branch is fused only where
    its kernel passed)."""
    fast = self_check.fast_compress_ok(device, dtype, ones_column=ones_column, norms=norms, fp8=fp8)

    def compress(x: torch.Tensor) -> torch.Tensor:
        if a is not None:
            return prune_compress_low_rank(x, a, ones_column=ones_column)[0]
        if fp8:
            return (
                prune_quantise_compress(x, round_up(x.shape[0], 32)) if fast else cusparselt.compress_compat_fp8(x)
            )[0]
        if fast:
            return prune_compress_with_norms(x)[0] if norms else prune_compress(x, ones_column=ones_column)
        if norms:
            norm_partials(x)  # the slow path sums the norms in a pass of its own
        return cusparselt.compress_compat(x, ones_column=ones_column)

    return compress


def operands(
    m: int,
    k: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    compress: Callable[[torch.Tensor], torch.Tensor],
    fp8: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A weight (quantised to e4m3 with ``fp8``), rotating activations (``rotating_inputs``) and their
    compressed forms."""
    xs = rotating_inputs(lambda: torch.randn(m, k, dtype=dtype, device=device), m * k * dtype.itemsize)
    w = _weight(n, k, dtype, device)
    return quantise_fp8_rows(w)[0] if fp8 else w, xs, [compress(x) for x in xs]


def search_alg(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, fp8: bool = False) -> int:
    """Time every algorithm id and keep the fastest (uncached: ``best_alg`` caches it).

    cuSPARSELt's own search is not enough: on an H100 it returned id 1 for a shape in one call and
    20 in the next, and its pick was up to 1.2x slower than the fastest id (15360 -> 3072 at
    M=4608); split-k never won (docs/design.md, "Algorithm search and timing"). A quick pass over
    every id, from 0 up to the first one cuSPARSELt refuses, picks three finalists; five rounds of
    those pick the winner. (Asking cuSPARSELt for its number of ids runs its whole
    search: 0.5 s for a large shape.)
    """
    w, _, cs = operands(m, k, n, dtype, device, _compressor(device, dtype, fp8=fp8), fp8)
    out_dtype = dtype if fp8 else None

    def run(alg: int, i: int) -> torch.Tensor:
        return cusparselt.sparse_mm(cs[i % len(cs)], w, alg, out_dtype)

    quick = queued_ms(run, range(MAX_ALG_IDS), calls=2, refused=RuntimeError)
    finalists = sorted(quick, key=quick.get)[:3]
    if not finalists:
        raise RuntimeError(f"cuSPARSELt ran none of its algorithms for ({m}, {k}) x ({k}, {n}) {dtype}")
    final = queued_ms(run, finalists, calls=4, rounds=5)
    return min(final, key=final.get)


def best_alg(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device | str, fp8: bool = False) -> int:
    """The fastest cuSPARSELt algorithm id for (M, K) x (K, N), M padded to cuSPARSELt's multiple of
    16 (32 for ``fp8``: e4m3 operands, ``dtype`` the activation's and the output's); timed once per
    GPU/version/shape."""
    device = torch.device(device)
    m = round_up(m, 32 if fp8 else CSLT_MULTIPLE)
    key = _cache_key(m, k, n, dtype, device) + (",fp8" if fp8 else "")
    return int(_cached("alg_timed", key, lambda: search_alg(m, k, n, dtype, device, fp8)))


def cuda_graph_ms(call: Callable[[int], object], calls: int = 20, replays: int = 15, warmup: int = 3) -> float:
    """Median GPU time of one ``call(i)``, replayed from a CUDA graph of ``calls`` calls.

    Graph replay leaves out CPU launch cost, which is what a compiled model pays with CUDA graphs:
    the benchmarks' timer (a compile times with the cheaper ``queued_ms``). ``call`` gets the call
    index, to rotate through input buffers so L2 does not hold them: every buffer is read once per
    replay when ``calls`` covers them, which Triton's ``do_bench_cudagraph`` (a graph as long as a
    time budget allows) does not promise. The capture is begun by hand: ``torch.cuda.graph`` also
    runs ``gc.collect()`` and empties the allocator's cache (5 ms).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        for i in range(warmup):  # off the capture: autotuning, handles, allocations
            call(i)
        side.synchronize()
        graph.capture_begin()
        try:
            for i in range(calls):
                call(i)
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def queued_ms(
    call: Callable[[K, int], object],
    keys: Iterable[K],
    calls: int,
    rounds: int = 1,
    refused: type[Exception] | tuple[type[Exception], ...] = (),
) -> dict[K, float]:
    """Median GPU ms per ``call(key, i)`` for each key: ``rounds`` samples of ``calls`` calls, the
    keys taking turns in each round, after two warm-up calls per key. With ``refused``, the keys end
    before the first one whose first call raises it (cuSPARSELt's first unknown algorithm id). ``i``
    counts the calls, for rotating through input buffers.

    What the compile-time search and cost model time with. A CUDA graph per key costs ~15 ms to
    capture and instantiate, and a model's first compile captured ~300. Triton's ``do_bench`` and
    Inductor's benchmarker record events around each call as the CPU issues it, so cuSPARSELt's
    ~1 ms of CPU planning per call would read as GPU time. Here a GPU sleep holds the stream while
    the CPU queues every call between CUDA events, so the events see the calls back to back on the
    GPU and none of the CPU time between them. The
    sleep lasts twice what the second warm-up calls took to issue (a first call may load kernels or
    autotune; queued calls took up to 1.7x the second's time), at most 250 ms at first; if it ends
    before the last call is queued (the events would see launch gaps), the rounds run again with a
    longer one, three times at most (a debug log says so). Launches from a stream leave ~1.3 us
    more between kernels than a CUDA graph's replay does: a 6 us kernel reads 7.3 us (H100), a
    30 us GEMM within 5%.
    """
    index = itertools.count()
    issue_ms: dict[K, float] = {}  # CPU time of each key's second warm-up call
    for key in keys:
        try:
            call(key, next(index))
        except refused:
            break
        t0 = time.perf_counter()
        call(key, next(index))
        issue_ms[key] = (time.perf_counter() - t0) * 1e3
    hold_ms = min(2.0 * sum(issue_ms.values()) * calls * rounds + 1.0, 250.0)
    for attempt in range(3):
        torch.cuda.synchronize()
        torch.cuda._sleep(int(hold_ms * sleep_cycles_per_ms()))
        held = torch.cuda.Event()
        held.record()
        t0 = time.perf_counter()
        marks: dict[K, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {key: [] for key in issue_ms}
        for _ in range(rounds):
            for key in issue_ms:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(calls):
                    call(key, next(index))
                end.record()
                marks[key].append((start, end))
        queue_ms = (time.perf_counter() - t0) * 1e3
        if not held.query():  # still asleep: every call was queued before the GPU reached it
            break
        log.debug(
            "lynx: timed calls outran their GPU sleep of %.1f ms (try %d, %.1f ms to queue)",
            hold_ms,
            attempt + 1,
            queue_ms,
        )
        hold_ms = 1.5 * queue_ms
    torch.cuda.synchronize()
    return {
        key: statistics.median(start.elapsed_time(end) for start, end in pairs) / calls for key, pairs in marks.items()
    }


@functools.cache
def sleep_cycles_per_ms() -> float:
    """``torch.cuda._sleep`` counts GPU clock cycles; how many make a millisecond here."""
    torch.cuda._sleep(1000)  # loads the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000)
    end.record()
    end.synchronize()
    return 2_000_000 / start.elapsed_time(end)


def rotating_inputs(make: Callable[[], torch.Tensor], nbytes: int, min_total: int = 256 << 20) -> list[torch.Tensor]:
    """Enough fresh inputs of ``nbytes`` each that cycling through them overflows a 50-60 MB L2."""
    return [make() for _ in range(max(2, min(64, -(-min_total // nbytes))))]


@dataclasses.dataclass(frozen=True)
class Costs:
    """GPU ms per call of one GEMM shape: dense ``x @ w.T`` (cuBLAS), the activation's
    prune+compress, and the sparse GEMM on the compressed activation."""

    dense_ms: float
    prune_ms: float
    sparse_gemm_ms: float


def measure_costs(
    m: int,
    k: int,
    n: int,
    dtype: torch.dtype,
    alg_id: int,
    device: torch.device | str = "cuda",
    ones_column: bool = False,
    norms: bool = False,
    fp8: bool = False,
    low_rank: int = 0,
) -> Costs:
    """Time the three parts separately (cached on disk), so that a caller can charge one
    prune+compress to all the GEMMs that share an activation (q, k, v, and FLUX's MLP input).

    The compression is the standalone Triton kernel (or ``compress_compat`` when the self-check
    failed), also for layers whose producer is fused into the template: on the H100 the fused kernel
    costs about what the producer and the standalone one do (docs/design.md, "Cost model"). Bias adds
    are left out: the dense GEMM fuses its bias, and the sparse path's add fuses into the consumer's
    pointwise kernel (GELU, gated residual) when there is one, which the dense path runs too.
    ``ones_column``: a folded bias; the compression and the sparse GEMM then have K + BIAS_COLUMNS
    columns, the dense GEMM it replaces has K. ``norms``: compensation; the compression also sums
    the row norms (the per-row scale of the GEMM's output is left out, like the bias add). ``fp8``:
    prune + quantise + compress and the e4m3 GEMM against the same dense 16-bit GEMM (the scale
    epilogue is left out: it fuses into the consumer like the bias add; with ``norms`` the fp8 path's
    separate norm pass is not timed). ``low_rank``: R of a low-rank branch fused into the GEMM (R = A's
    columns, 2R = ``Decision.low_rank_columns``): the compression also computes ``x A`` and appends 2R
    columns, the sparse GEMM has K + 2R (+ BIAS_COLUMNS with ``ones_column``).
    """
    device = torch.device(device)

    def measure() -> list[float]:
        a = _weight(low_rank, k, dtype, device).t().contiguous() if low_rank else None  # (K, R), as the graph's A
        compress = _compressor(device, dtype, ones_column, norms and not fp8, fp8, a)
        w, xs, cs = operands(m, k, n, dtype, device, compress, fp8)
        w_dense = _weight(n, k, dtype, device) if fp8 else w
        extra = 2 * low_rank + (BIAS_COLUMNS if ones_column else 0)  # [W | spread(B^T) | b | 0...]
        w_sparse = _weight(n, k + extra, dtype, device) if extra else w
        out_dtype = dtype if fp8 else None
        parts: dict[str, Callable[[int], torch.Tensor]] = {
            "dense": lambda i: F.linear(xs[i % len(xs)], w_dense),
            "prune": lambda i: compress(xs[i % len(xs)]),
            "sparse_gemm": lambda i: cusparselt.sparse_mm(cs[i % len(cs)], w_sparse, alg_id, out_dtype),
        }
        ms = queued_ms(lambda part, i: parts[part](i), parts, calls=4, rounds=5)
        return [ms["dense"], ms["prune"], ms["sparse_gemm"]]

    fast = self_check.fast_compress_ok(device, dtype, ones_column=ones_column, norms=norms and not fp8, fp8=fp8)
    key = f"{_cache_key(round_up(m, CSLT_MULTIPLE), k, n, dtype, device)},alg={alg_id},fast={fast}"
    key += (",ones_column" if ones_column else "") + (",norms" if norms else "") + (",fp8" if fp8 else "")
    key += f",low_rank={low_rank}" if low_rank else ""
    return Costs(*(float(t) for t in _cached("costs", key, measure)))


def measure_branch(m: int, k: int, n: int, rank: int, dtype: torch.dtype, device: torch.device | str = "cuda") -> Costs:
    """GPU ms of an unfused low-rank branch on cuBLAS (cached on disk), in ``Costs``' fields: ``prune_ms``
    holds ``u = x A`` ((M, K) x (K, R), once per activation: GEMMs that read x share A), ``sparse_gemm_ms``
    ``u B`` ((M, R) x (R, N), per GEMM), ``dense_ms`` 0. The add of ``u B`` is left out, like the bias add:
    it fuses into the consumer's pointwise kernel."""
    device = torch.device(device)

    def measure() -> list[float]:
        xs = rotating_inputs(lambda: torch.randn(m, k, dtype=dtype, device=device), m * k * dtype.itemsize)
        a, b = (_weight(rows, cols, dtype, device).t().contiguous() for rows, cols in ((rank, k), (n, rank)))
        us = [x @ a for x in xs]
        parts: dict[str, Callable[[int], torch.Tensor]] = {
            "project": lambda i: xs[i % len(xs)] @ a,
            "expand": lambda i: us[i % len(us)] @ b,
        }
        ms = queued_ms(lambda part, i: parts[part](i), parts, calls=4, rounds=5)
        return [0.0, ms["project"], ms["expand"]]

    key = f"{_cache_key(m, k, n, dtype, device)},rank={rank}"
    return Costs(*(float(t) for t in _cached("branch", key, measure)))
