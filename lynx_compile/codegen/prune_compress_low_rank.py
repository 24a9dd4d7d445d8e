"""Prune + compress with the low-rank branch's product ``U = x A`` as extra 2:4 columns, in one Triton pass.

``prune_compress_low_rank(x, a) == (torch._cslt_compress(prune_2to4(pad_rows([x | spread_2to4(u)]))), u)``
bit for bit, ``u`` the returned ``round(x A)`` (float32 accumulation, rounded once to x's dtype). Times the
weight ``[W | spread_2to4(B^T)]`` one sparse GEMM gives ``P(x) W^T + u B`` (docs/design.md, "Low-rank
compensation"): the branch costs 2R more columns of K and one skinny dot here, not two GEMMs and an add.

U needs whole rows of x, so each program owns BLOCK_M rows and sweeps K (as ``prune_quantise_compress``
does): every tile of x is pruned and compressed as ``prune_compress_kernel`` does it (``compress_tile``)
and multiplied into a (BLOCK_M, R) float32 accumulator. The tiles that hold the tail, from the last whole
tile of x on, are compressed after the sweep: the program stores its rows of u, and reads them back spread
into ``[x | spread(u) | 1 0 ...]`` (a gather by column, which registers cannot do), then the same selection
runs over them, so a u that is exactly 0 gets cuSPARSELt's index choice like any zero.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
import triton.testing

from ..semantics import BIAS_COLUMNS, round_up
from .cusparselt_layout import CSLT_MULTIPLE, TILE_ROWS
from .prune_compress import checked_rows, compress_tile, compressed_buffers, fixed_tile, ones_at, zero_tail

RANK_MULTIPLE = 16  # R must be a multiple of 16: tl.dot's smallest tile, and keeps K + 2R a multiple of 32
MAX_RANK = 256  # A's (BLOCK_K, R) tile in shared memory: 128 KiB at 256 x 256, within every tile's budget


@triton.jit
def _tail_tile(x_ptr, u_ptr, rows, cols, M, K_X, R, stride_xm, ONES_COLUMN: tl.constexpr):
    """The tile of ``[x | spread_2to4(u) | 1 0 ...]`` at ``cols``: x below K_X, then u's columns as the
    first two members of each group of 4 (u read back from memory), the ones column with ONES_COLUMN."""
    in_x = (rows < M)[:, None]
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=in_x & (cols < K_X)[None, :], other=0.0)
    c = tl.maximum(cols - K_X, 0)
    slot = (c // 4) * 2 + c % 4  # u's column at tail column c, where c % 4 < 2
    is_u = (cols >= K_X) & (c % 4 < 2) & (slot < R)
    # .cg: from L2, where this program's stores of u went (not a stale L1 line)
    u = tl.load(u_ptr + rows[:, None] * R + slot[None, :], mask=in_x & is_u[None, :], other=0.0, cache_modifier=".cg")
    tile = tl.where(is_u[None, :], u, x)
    if ONES_COLUMN:
        tile = ones_at(tile, rows, cols, M, K_X + 2 * R)
    return tile


@triton.jit(do_not_specialize=["M", "M_PAD", "META_COL_TILES", "TAIL_START", "TAIL_BYTES", "M_BUCKET"])
def prune_compress_low_rank_kernel(
    x_ptr,
    a_ptr,
    u_ptr,
    values_ptr,
    meta_ptr,
    bytes_ptr,
    M,
    M_PAD,
    K_X,
    K,
    R,
    stride_xm,
    META_COL_TILES,
    TAIL_START,
    TAIL_BYTES,
    M_BUCKET,  # autotuning key only
    ABS_MASK: tl.constexpr,
    MAG_MAX: tl.constexpr,
    ONES_COLUMN: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TAIL_BLOCK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # the grid covers the metadata's rows (64-row tiles)
    in_x = rows < M  # rows past M read as zeros: the padding, never stored in x
    r = tl.arange(0, R_PAD)
    acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K_X, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=in_x[:, None] & (cols < K_X)[None, :], other=0.0
        )
        a = tl.load(a_ptr + cols[:, None] * R + r[None, :], mask=(cols < K_X)[:, None] & (r < R)[None, :], other=0.0)
        # float32 operands, tensor cores at tf32: exact for 16-bit inputs (tf32 holds their significands and
        # exponents), and what Triton's interpreter multiplies right (its bf16 dot multiplies raw bits)
        acc = tl.dot(x.to(tl.float32), a.to(tl.float32), acc, input_precision="tf32")
        if k0 + BLOCK_K <= K_X:  # a tile of x alone; the last partial one goes with the tail
            compress_tile(
                x, values_ptr, meta_ptr, rows, pid_m, k0 // BLOCK_K, M_PAD, K, META_COL_TILES, ABS_MASK, MAG_MAX
            )
    u = acc.to(x_ptr.dtype.element_ty)
    tl.store(u_ptr + rows[:, None] * R + r[None, :], u, mask=in_x[:, None] & (r < R)[None, :])
    tl.debug_barrier()  # every thread's u stored before any reads it back spread
    for k0 in range(K_X // BLOCK_K * BLOCK_K, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        tile = _tail_tile(x_ptr, u_ptr, rows, cols, M, K_X, R, stride_xm, ONES_COLUMN)
        compress_tile(
            tile, values_ptr, meta_ptr, rows, pid_m, k0 // BLOCK_K, M_PAD, K, META_COL_TILES, ABS_MASK, MAG_MAX
        )
    zero_tail(bytes_ptr, pid_m, TAIL_START, TAIL_BYTES, TAIL_BLOCK)


def tile_configs() -> list[triton.Config]:
    """Rows per program (a divisor of the 64-row metadata tile), columns per step and warps. On the H100
    16 x 128 was fastest at three DiT shapes, 16 x 256 up to 1.2x slower
    (``benchmarks/studies/fp8_low_rank_kernels_h100``)."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w)
        for bm, bk, w in [(16, 128, 4), (16, 256, 4), (32, 128, 4)]
    ]


prune_compress_low_rank_autotuned = triton.autotune(
    configs=tile_configs(),
    key=["K", "R", "M_BUCKET", "ONES_COLUMN"],
    do_bench=functools.partial(triton.testing.do_bench, warmup=5, rep=20),
)(prune_compress_low_rank_kernel)
_FIXED = tile_configs()[0]  # small inputs and the interpreter (``fixed_tile``)


def check_rank(rank: int) -> None:
    """The fused branch's rank (A's columns) must be a multiple of RANK_MULTIPLE up to MAX_RANK."""
    if rank < 1 or rank % RANK_MULTIPLE or rank > MAX_RANK:
        raise ValueError(
            f"the fused low-rank branch needs a rank that is a multiple of {RANK_MULTIPLE} (tl.dot's smallest "
            f"tile; keeps cuSPARSELt's K a multiple of 32) and at most {MAX_RANK} (A's tile in shared memory), "
            f"got {rank}"
        )


def prune_compress_low_rank(
    x: torch.Tensor,
    a: torch.Tensor,
    rows: int | None = None,
    ones_column: bool = False,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch._cslt_compress(prune_2to4([x | spread_2to4(u)] zero-padded to rows)), u)``, ``u = round(x A)``.

    x: (M, K) as ``prune_compress`` takes it; a: (K, R), x's dtype, R a multiple of 16. ``rows`` as in
    ``prune_compress``. ``ones_column``: compress ``[x | spread_2to4(u) | 1 | 0 ...]`` (K + 2R + BIAS_COLUMNS),
    for a weight that carries the bias too. ``config``: one of ``tile_configs`` (default: autotuned; the
    first for small inputs and under Triton's interpreter, ``fixed_tile``). Returns the compressed operand
    and u, (M, R) in x's dtype.
    """
    m_pad = checked_rows(x, rows, CSLT_MULTIPLE, "prune_compress_low_rank")
    m, k_x = x.shape
    if a.dim() != 2 or a.shape[0] != k_x or a.dtype != x.dtype or a.device != x.device:
        raise ValueError(f"a must be ({k_x}, R) {x.dtype} on {x.device}, got {tuple(a.shape)} {a.dtype} on {a.device}")
    rank = a.shape[1]
    check_rank(rank)
    k = k_x + 2 * rank + (BIAS_COLUMNS if ones_column else 0)
    out, raw, meta, args = compressed_buffers(x, m_pad, k)
    u = torch.empty((m, rank), dtype=x.dtype, device=x.device)
    args.update(K_X=k_x, R=rank, ONES_COLUMN=ones_column, R_PAD=triton.next_power_of_2(rank))
    config = _FIXED if config is None and fixed_tile(m_pad, k_x) else config
    meta_rows = round_up(m_pad, TILE_ROWS)

    def grid(cfg: dict[str, int]) -> tuple[int]:
        return (meta_rows // cfg["BLOCK_M"],)

    operands = (x, a.contiguous(), u, out, meta, raw)
    if config is None:
        prune_compress_low_rank_autotuned[grid](*operands, **args)
    else:
        prune_compress_low_rank_kernel[grid(config.kwargs)](*operands, **args, **config.all_kwargs())
    return out, u
