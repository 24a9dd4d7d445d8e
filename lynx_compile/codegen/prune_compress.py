"""Fused 2:4 prune + cuSPARSELt compress in one Triton pass.

``prune_compress(x) == torch._cslt_compress(prune_2to4(pad_rows(x)))`` bit for bit over the bytes
cuSPARSELt writes (``cusparselt_layout`` documents the layout; the rest of the buffer is zeroed).
It reads x once (2 B/elem) and writes the kept values (1 B/elem) and the metadata (1/8 B/elem):
``torch._cslt_compress`` alone takes about 30x that memory floor on an H100.

Each program prunes a BLOCK_M x BLOCK_K tile. Magnitudes are integers (|x|'s bit pattern, NaN
clamped to the infinity pattern, so NaN ties with inf and no float arithmetic touches the data);
a group's top two come from a min/max network over keys (magnitude, then index), which also gives
cuSPARSELt's index choice; each 16 x 32 block of index nibbles is then packed into the eight
64-bit metadata words cuSPARSELt stores. The selection logic only knows the element width
(ABS_MASK, MAG_MAX); the fp8 kernel (``prune_quantise_compress``) ranks with ``rank_2to4`` too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import triton
import triton.language as tl
import triton.testing

from ..semantics import BIAS_COLUMNS, NORM_CHUNK, SPARSE_DTYPES, check_order, norm_chunks, round_up
from .cusparselt_layout import CSLT_MULTIPLE, TILE_ROWS, compressed_shape, metadata_nbytes, significant_numel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TAIL_BLOCK = 512  # bytes of the unwritten tail each program of the first column zeroes

# Bit patterns per dtype of SPARSE_DTYPES: |x| mask, and the largest magnitude (+inf; a NaN's |bits|
# is larger and is clamped to it, which makes NaN tie with inf as the reference semantics say).
MAGNITUDE_BITS = {torch.bfloat16: (0x7FFF, 0x7F80), torch.float16: (0x7FFF, 0x7C00)}


@triton.jit
def rank_2to4(x, ABS_MASK: tl.constexpr, MAG_MAX: tl.constexpr):
    """The four members of each group of 4 along the last dim of a (BLOCK_M, BLOCK_K) tile, their
    keys, and the two largest keys: element i is kept by ``prune_2to4`` iff ``k_i >= second``.

    Returns (x0, x1, x2, x3, k0, k1, k2, k3, top, second), each (BLOCK_M, BLOCK_K // 4).
    """
    BLOCK_M: tl.constexpr = x.shape[0]
    GROUPS: tl.constexpr = x.shape[1] // 4
    even, odd = tl.split(tl.reshape(x, (BLOCK_M, GROUPS, 2, 2)))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    m0 = tl.minimum(x0.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, MAG_MAX)
    m1 = tl.minimum(x1.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, MAG_MAX)
    m2 = tl.minimum(x2.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, MAG_MAX)
    m3 = tl.minimum(x3.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, MAG_MAX)

    # prune_2to4 keeps the two largest magnitudes, lower index winning ties: rank the elements by a
    # key that is unique within the group (magnitude, then 3 - index) and keep the top two keys.
    k0 = (m0 << 2) | 3
    k1 = (m1 << 2) | 2
    k2 = (m2 << 2) | 1
    k3 = m3 << 2
    hi01, lo01 = tl.maximum(k0, k1), tl.minimum(k0, k1)
    hi23, lo23 = tl.maximum(k2, k3), tl.minimum(k2, k3)
    top = tl.maximum(hi01, hi23)
    second = tl.maximum(tl.minimum(hi01, hi23), tl.maximum(lo01, lo23))
    return x0, x1, x2, x3, k0, k1, k2, k3, top, second


@triton.jit
def select_2to4(x, ABS_MASK: tl.constexpr, MAG_MAX: tl.constexpr):
    """Top two of each group of 4 along the last dim of a (BLOCK_M, BLOCK_K) tile.

    Returns (first, last, v_first, v_last), each (BLOCK_M, BLOCK_K // 4): the two indices
    cuSPARSELt stores (first < last) and the values at them (x's bits; pruned members read as 0).
    """
    x0, x1, x2, x3, _, _, k2, k3, top, second = rank_2to4(x, ABS_MASK, MAG_MAX)
    keep2 = k2 >= second
    keep3 = k3 >= second

    # cuSPARSELt stores the indices of the pruned group's nonzeros (NaN/inf count, +-0 does not),
    # topped up with the highest free indices (3, then 2) when there are fewer than two.
    i_top = 3 - (top & 3)
    i_second = 3 - (second & 3)
    two = second >= 4  # the second-largest magnitude is nonzero
    first = tl.where(two, tl.minimum(i_top, i_second), tl.where(top >= 4, tl.minimum(i_top, 2), 2))
    last = tl.where(two, tl.maximum(i_top, i_second), 3)
    # The stored values are the pruned elements bit for bit (a kept -0.0 stays -0.0).
    zero = tl.zeros_like(x0)
    v_first = tl.where(first == 0, x0, tl.where(first == 1, x1, tl.where(keep2, x2, zero)))
    v_last = tl.where(last == 3, tl.where(keep3, x3, zero), tl.where(last == 2, x2, x1))
    return first, last, v_first, v_last


@triton.jit
def metadata_words(first, last, pid_m, pid_k, META_COL_TILES):
    """cuSPARSELt's metadata words of a (BLOCK_M, 4 * GROUPS) tile at (pid_m, pid_k), and where they go.

    The nibble of row 16b+8h+i, group 8c+4q+j lands at bit 16j+8q+4h of word (b, i, c); a 64 x 32
    tile is 32 words, row tiles outermost. Returns (words, word_index, in_k), shapes
    (BLOCK_M // 16, 8, GROUPS // 8) and (1, 1, GROUPS // 8): in_k is false for 32-column tiles past K.
    """
    BLOCK_M: tl.constexpr = first.shape[0]
    GROUPS: tl.constexpr = first.shape[1]
    nibble = (first | (last << 2)).to(tl.int64)
    h = (tl.arange(0, BLOCK_M) // 8) % 2
    g = tl.arange(0, GROUPS) % 8
    shift = (4 * h)[:, None] + (8 * (g // 4) + 16 * (g % 4))[None, :]
    fields = tl.reshape(nibble << shift.to(tl.int64), (BLOCK_M // 16, 2, 8, GROUPS // 8, 8))
    words = tl.sum(tl.sum(fields, axis=4), axis=1)  # disjoint bit fields: the sum is the OR
    block = pid_m * (BLOCK_M // 16) + tl.arange(0, BLOCK_M // 16)  # global 16-row block
    tile_col = pid_k * (GROUPS // 8) + tl.arange(0, GROUPS // 8)
    i = tl.arange(0, 8)
    word_index = (
        ((block // 4 * META_COL_TILES)[:, None, None] + tile_col[None, None, :]) * 32
        + ((block % 4) * 8)[:, None, None]
        + i[None, :, None]
    )
    return words, word_index, (tile_col < META_COL_TILES)[None, None, :]


@triton.jit
def chunk_sums_of_squares(x, v_first, v_last, NORM_CHUNK: tl.constexpr):
    """Float32 sums of squares of a (BLOCK_M, BLOCK_K) tile and of its pruned version, per row and
    NORM_CHUNK columns: (BLOCK_M, BLOCK_K // NORM_CHUNK) each. Summed per group of 4 first, in the
    groups' layout that ``select_2to4`` left in registers."""
    BLOCK_M: tl.constexpr = x.shape[0]
    GROUPS: tl.constexpr = x.shape[1] // 4
    even, odd = tl.split(tl.reshape(x, (BLOCK_M, GROUPS, 2, 2)))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    x0, x1, x2, x3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
    v0, v1 = v_first.to(tl.float32), v_last.to(tl.float32)
    full = (x0 * x0 + x1 * x1) + (x2 * x2 + x3 * x3)
    kept = v0 * v0 + v1 * v1
    shape: tl.constexpr = (BLOCK_M, x.shape[1] // NORM_CHUNK, NORM_CHUNK // 4)
    return tl.sum(tl.reshape(full, shape), axis=2), tl.sum(tl.reshape(kept, shape), axis=2)


@triton.jit
def ones_at(x, rows, cols, M, column):
    """The tile ``x`` of rows ``rows`` and columns ``cols`` with ones at ``column`` in the rows below M:
    ``with_ones_column``'s column, never in memory."""
    return tl.where((rows < M)[:, None] & (cols == column)[None, :], 1.0, x).to(x.dtype)


@triton.jit
def with_spread_u(x, u_ptr, rows, cols, M, K_X, R):
    """The tile ``x`` of ``[x | 0]`` at ``cols`` with u's columns in place: tail column K_X + c holds u's
    column (c // 4) * 2 + c % 4 where c % 4 < 2 (``spread_2to4``). A gather, so kept out of x's tiles."""
    c = tl.maximum(cols - K_X, 0)
    slot = (c // 4) * 2 + c % 4
    is_u = (cols >= K_X) & (c % 4 < 2) & (slot < R)
    u = tl.load(u_ptr + rows[:, None] * R + slot[None, :], mask=(rows < M)[:, None] & is_u[None, :], other=0.0)
    return tl.where(is_u[None, :], u, x)


@triton.jit
def compress_tile(x, values_ptr, meta_ptr, rows, pid_m, pid_k, M_PAD, K, META_COL_TILES, ABS_MASK, MAG_MAX):
    """Prune the (BLOCK_M, BLOCK_K) tile ``x`` at row tile ``pid_m`` and column tile ``pid_k`` of a K-column
    operand and store its kept values and metadata words; returns the kept values (v_first, v_last)."""
    BLOCK_M: tl.constexpr = x.shape[0]
    BLOCK_K: tl.constexpr = x.shape[1]
    first, last, v_first, v_last = select_2to4(x, ABS_MASK, MAG_MAX)
    # Values: row-major (M_PAD, K/2), the two of a group side by side.
    vals = tl.reshape(tl.join(v_first, v_last), (BLOCK_M, BLOCK_K // 2))
    vcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    tl.store(
        values_ptr + rows[:, None] * (K // 2) + vcols[None, :],
        vals,
        mask=(rows < M_PAD)[:, None] & (vcols < K // 2)[None, :],
    )
    words, word_index, in_k = metadata_words(first, last, pid_m, pid_k, META_COL_TILES)
    tl.store(meta_ptr + word_index, words, mask=in_k)
    return v_first, v_last


@triton.jit
def zero_tail(bytes_ptr, pid_m, TAIL_START, TAIL_BYTES, TAIL_BLOCK: tl.constexpr):
    """Zero the bytes cuSPARSELt allocates but never writes (< 6 bytes per metadata row, so a
    TAIL_BLOCK-byte slice per 64 rows covers them): one slice per row tile ``pid_m``."""
    offs = pid_m * TAIL_BLOCK + tl.arange(0, TAIL_BLOCK)
    tl.store(bytes_ptr + TAIL_START + offs, tl.zeros((TAIL_BLOCK,), tl.uint8), mask=offs < TAIL_BYTES)


@triton.jit
def in_order(x, order_ptr, cols, start, K_X):
    """The tile's columns permuted: ``x[:, order[cols] - start]``. The tile is loaded with 16-byte loads and
    permuted in the SM (``tl.gather``): loaded from memory at permuted offsets (one 2-byte load per element,
    likely) the order cost FLUX 1.0-1.3 ms per forward (docs/design.md, "Channel order"). It needs ``order`` to
    permute within the tile's own columns: ``checked_order`` holds it to blocks of ``ORDER_BLOCK`` columns, and
    every tile is whole blocks."""
    local = tl.where(cols < K_X, tl.load(order_ptr + cols, mask=cols < K_X, other=0) - start, cols - start)
    return tl.gather(x, tl.broadcast_to(local[None, :], x.shape), axis=1)


# Sizes that only bound masks or index the tail are not specialised (divisibility by 16, == 1): the
# self-check's odd-sized probe and every model shape then share one compiled kernel per tile.
@triton.jit(do_not_specialize=["M", "M_PAD", "META_COL_TILES", "TAIL_START", "TAIL_BYTES", "M_BUCKET"])
def prune_compress_kernel(
    x_ptr,
    u_ptr,
    values_ptr,
    meta_ptr,
    bytes_ptr,
    norms_ptr,
    order_ptr,
    M,
    M_PAD,
    K_X,
    R,
    K,
    stride_xm,
    META_COL_TILES,
    TAIL_START,
    TAIL_BYTES,
    M_BUCKET,  # autotuning key only
    ABS_MASK: tl.constexpr,
    MAG_MAX: tl.constexpr,
    ONES_COLUMN: tl.constexpr,
    LOW_RANK: tl.constexpr,
    NORMS: tl.constexpr,
    ORDERED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TAIL_BLOCK: tl.constexpr,
    NORM_CHUNK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    # The grid covers the metadata's rows (M_PAD rounded up to 64; BLOCK_M divides 64).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    # Rows past M (up to the metadata tile) read as zeros: that is the row padding, never stored in x.
    # K_X columns come from x; with LOW_RANK, 2R more from spread_2to4(u); with ONES_COLUMN, then a column
    # of ones (``with_ones_column``) and zeros up to K.
    x = tl.load(
        x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=(rows < M)[:, None] & (cols < K_X)[None, :], other=0.0
    )
    if ORDERED:  # column j of the tile becomes x's column order[j] (option permute_channels)
        x = in_order(x, order_ptr, cols, pid_k * BLOCK_K, K_X)
    if LOW_RANK:  # noqa: SIM102 (a constexpr: the other variants compile no gather)
        if (pid_k + 1) * BLOCK_K > K_X:  # only the few tiles that reach u's columns gather
            x = with_spread_u(x, u_ptr, rows, cols, M, K_X, R)
    if ONES_COLUMN:
        x = ones_at(x, rows, cols, M, K_X + 2 * R)
    v_first, v_last = compress_tile(
        x, values_ptr, meta_ptr, rows, pid_m, pid_k, M_PAD, K, META_COL_TILES, ABS_MASK, MAG_MAX
    )

    if NORMS:  # compensation's sums of squares, (2, M, chunks): all of x, then what pruning kept
        full, kept = chunk_sums_of_squares(x, v_first, v_last, NORM_CHUNK)
        n_chunks = tl.cdiv(K_X, NORM_CHUNK)
        chunk = pid_k * (BLOCK_K // NORM_CHUNK) + tl.arange(0, BLOCK_K // NORM_CHUNK)
        norm_offs = rows[:, None] * n_chunks + chunk[None, :]
        norm_mask = (rows < M)[:, None] & (chunk < n_chunks)[None, :]
        tl.store(norms_ptr + norm_offs, full, mask=norm_mask)
        tl.store(norms_ptr + M * n_chunks + norm_offs, kept, mask=norm_mask)

    if pid_k == 0:
        zero_tail(bytes_ptr, pid_m, TAIL_START, TAIL_BYTES, TAIL_BLOCK)


def tile_configs() -> list[triton.Config]:
    """Tiles of 16 rows (a divisor of the 64-row metadata tile) by 128-512 columns.

    The three of twelve tiles (16-64 rows, 64-512 columns) that on an H100 were within 2.1% of the
    best on every DiT activation from 512 x 1152 to 16384 x 15360, and within 0.1% on average. Each
    config costs a model's first compile a Triton compile (in the self-check) and a benchmark per
    new shape: with twelve, the self-check took 6 s and the autotuning 1.3 s per shape
    (docs/design.md, "Algorithm search and timing").
    """
    return [triton.Config({"BLOCK_M": 16, "BLOCK_K": bk}, num_warps=w) for bk, w in [(128, 2), (256, 4), (512, 4)]]


# 25 ms of timing per config and shape instead of Triton's 125 ms: enough for a kernel of 4-300 us
prune_compress_autotuned = triton.autotune(
    configs=tile_configs(),
    key=["K", "M_BUCKET", "NORMS", "LOW_RANK", "ORDERED"],
    do_bench=functools.partial(triton.testing.do_bench, warmup=5, rep=20),
)(prune_compress_kernel)
_FIXED = tile_configs()[1]  # small inputs (within 3.5% of the best tile at 512-1024 rows) and the interpreter
_SMALL = 1 << 21  # elements: below this the kernel takes a few microseconds whatever its tiles


def prune_compress(
    x: torch.Tensor, rows: int | None = None, ones_column: bool = False, order: torch.Tensor | None = None
) -> torch.Tensor:
    """``torch._cslt_compress(prune_2to4(x padded with zero rows to `rows`))`` in one pass.

    x: 2-D (M, K) bf16/fp16 with unit column stride, K a multiple of 16, any M >= 1. ``rows``: rows
    of the compressed operand, a multiple of 16 and >= M (default: M rounded up to a multiple of 16,
    cuSPARSELt's minimum); the GEMM on it returns that many rows, of which the first M are
    meaningful. The padding is never materialised: the kernel reads it as zeros. ``ones_column``:
    compress ``with_ones_column(x)`` (K + BIAS_COLUMNS columns) instead, so that a weight with the
    bias appended adds it inside the GEMM. ``order``: compress ``x[:, order]`` (int32 or int64, a permutation of
    K, option ``permute_channels``), read in place.
    """
    m_pad = _padded(x, rows)
    return launch(x, m_pad, _config(m_pad, x.shape[1]), ones_column, order=checked_order(x, order))


def prune_compress_with_norms(
    x: torch.Tensor, rows: int | None = None, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prune_compress(x, rows, order=order)`` and, from the same pass, ``norm_partials(x[:, order])``: the sums
    of squares that norm compensation needs (``semantics.scale_from_partials``), without reading x again."""
    m_pad = _padded(x, rows)
    norms = norms_buffer(x)
    return launch(x, m_pad, _config(m_pad, x.shape[1]), norms=norms, order=checked_order(x, order)), norms


def checked_order(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor | None:
    """``order``, checked (``semantics.check_order``) the first time the kernel sees it and after each in-place
    change: the check reads it back from the device, so a model's order buffers pay it once, before any CUDA
    graph is captured, not per call."""
    if order is None:
        return None
    if order.device != x.device:
        raise ValueError(f"order must be on {x.device}, got {order.device}")
    if getattr(order, "_lynx_checked", None) != order._version:
        check_order(order, x.shape[1])
        order._lynx_checked = order._version
    return order


def norms_buffer(x: torch.Tensor) -> torch.Tensor:
    """Where the kernel writes ``norm_partials(x)``: float32 (2, M, norm_chunks(K))."""
    return torch.empty((2, x.shape[0], norm_chunks(x.shape[1])), dtype=torch.float32, device=x.device)


def _padded(x: torch.Tensor, rows: int | None) -> int:
    """Rows of the compressed operand for ``x``, after checking what the kernel takes."""
    return checked_rows(x, rows, CSLT_MULTIPLE, "prune_compress")


def checked_rows(x: torch.Tensor, rows: int | None, multiple: int, kernel: str, index_rows: int = 1) -> int:
    """Rows of a compressed operand for ``x`` (``rows``, or M rounded up to ``multiple``), after checking
    what the prune kernels take: a 16-bit, 2-D, row-contiguous x with K a multiple of ``multiple``, and
    offsets (rows rounded up to ``index_rows``, times K) that fit the kernels' 32-bit indexing."""
    if x.dtype not in SPARSE_DTYPES:
        raise ValueError(f"{kernel} supports {SPARSE_DTYPES}, got {x.dtype}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < multiple or x.shape[1] % multiple:
        raise ValueError(f"{kernel} needs a 2-D (M >= 1, K % {multiple} == 0) tensor, got shape {tuple(x.shape)}")
    if x.stride(1) != 1:
        raise ValueError(f"{kernel} needs rows contiguous in memory (stride(1) == 1)")
    m, k = x.shape
    m_pad = round_up(m, multiple) if rows is None else rows
    if m_pad < m or m_pad % multiple:
        raise ValueError(f"rows={rows} must be a multiple of {multiple} and at least M={m}")
    if round_up(m_pad, index_rows) * k >= 2**31:
        raise ValueError(f"{kernel} indexes with 32-bit integers: {m_pad} x {k} is too large")
    return m_pad


def fixed_tile(m_pad: int, k: int) -> bool:
    """Whether a prune kernel runs a fixed tile rather than autotuning: small inputs (launch-bound, nothing
    to tune) and the interpreter."""
    return INTERPRET or m_pad * k <= _SMALL


def _config(m_pad: int, k: int) -> triton.Config | None:
    """This kernel's fixed tile where ``fixed_tile`` says so; else None: autotuned."""
    return _FIXED if fixed_tile(m_pad, k) else None


def launch(
    x: torch.Tensor,
    m_pad: int,
    config: triton.Config | None,
    ones_column: bool = False,
    warmup: bool = False,
    norms: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel with ``config`` (one of ``tile_configs``), or autotuned when None; no input checks
    (``prune_compress`` makes them). A config is launched with the same options as the autotuner
    launches it (``all_kwargs``), so both find the same compiled kernel. ``warmup``: only compile
    ``config``'s kernel (Triton's ``JITFunction.warmup``). ``norms``: a float32 (2, M, norm_chunks(K))
    buffer for ``norm_partials(x)`` (not with ``ones_column`` or ``u``). ``u``: (M, R), x's dtype:
    compress ``[x | spread_2to4(u)]`` (``prune_compress_low_rank``). ``order``: x's columns in that order."""
    assert norms is None or (not ones_column and u is None), "compensation's norms are of x alone"
    k_x = x.shape[1]
    rank = 0 if u is None else u.shape[1]
    k = k_x + 2 * rank + (BIAS_COLUMNS if ones_column else 0)
    out, raw, meta, args = compressed_buffers(x, m_pad, k)
    args.update(
        K_X=k_x,
        R=rank,
        ONES_COLUMN=ones_column,
        LOW_RANK=u is not None,
        NORMS=norms is not None,
        ORDERED=order is not None,
        NORM_CHUNK=NORM_CHUNK,
    )
    # pointers the kernel never dereferences without NORMS, LOW_RANK or ORDERED
    operands = (
        x,
        meta if u is None else u,
        out,
        meta,
        raw,
        meta if norms is None else norms,
        meta if order is None else order,
    )
    meta_rows = round_up(m_pad, TILE_ROWS)

    def grid(cfg: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(meta_rows, cfg["BLOCK_M"]), triton.cdiv(k, cfg["BLOCK_K"])

    if config is None:
        prune_compress_autotuned[grid](*operands, **args)
    elif warmup:
        prune_compress_kernel.warmup(*operands, **args, **config.all_kwargs(), grid=grid(config.kwargs))
    else:
        prune_compress_kernel[grid(config.kwargs)](*operands, **args, **config.all_kwargs())
    return out


def compressed_buffers(
    x: torch.Tensor, m_pad: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, object]]:
    """The compressed operand of an (m_pad, k) activation read from ``x``: the tensor torch._cslt_compress
    would return, its bytes, its metadata words, and the kernel arguments that describe them (the ones
    every prune+compress kernel of this layout takes)."""
    out = torch.empty(compressed_shape(m_pad, k, x.dtype), dtype=x.dtype, device=x.device)
    raw = out.view(-1).view(torch.uint8)
    values_bytes = m_pad * k  # m_pad x k/2 elements of 2 bytes
    meta = raw[values_bytes : values_bytes + metadata_nbytes(m_pad, k, x.dtype)].view(torch.int64)
    tail_start = significant_numel(m_pad, k, x.dtype) * x.element_size()
    tail_bytes = raw.numel() - tail_start
    assert tail_bytes <= round_up(m_pad, TILE_ROWS) // TILE_ROWS * TAIL_BLOCK, "tail larger than the layout allows"
    abs_mask, mag_max = MAGNITUDE_BITS[x.dtype]
    args: dict[str, object] = dict(
        M=x.shape[0],
        M_PAD=m_pad,
        K=k,
        stride_xm=x.stride(0),
        META_COL_TILES=-(-k // 32),
        TAIL_START=tail_start,
        TAIL_BYTES=tail_bytes,
        M_BUCKET=min(triton.next_power_of_2(m_pad), 16384),
        ABS_MASK=abs_mask,
        MAG_MAX=mag_max,
        TAIL_BLOCK=TAIL_BLOCK,
    )
    return out, raw, meta, args


def compile_tiles(
    x: torch.Tensor,
    m_pad: int,
    ones_column: bool = False,
    norms: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> None:
    """Compile the kernel (the variant that ``ones_column``, ``norms`` and ``order`` select, as in ``launch``)
    for every tile the autotuner may pick, side by side on threads (Triton's ``AsyncCompileMode``;
    its compiles release the GIL), instead of one after another at the first launches: 0.4-0.9 s
    each. Where that Triton has no async mode, or one is active, the first launches compile them."""
    if importlib.util.find_spec("triton.runtime._async_compile") is None:
        return
    async_compile = importlib.import_module("triton.runtime._async_compile")
    if async_compile.active_mode.get() is not None:
        return
    with ThreadPoolExecutor(len(tile_configs())) as pool, async_compile.AsyncCompileMode(pool):
        for config in tile_configs():
            launch(x, m_pad, config, ones_column, warmup=True, norms=norms, order=order)
