"""Fused 2:4 prune + per-row fp8 quantisation + cuSPARSELt compression, in one Triton pass over x.

``prune_quantise_compress(x) == (torch._cslt_compress(q), scale)`` with ``q, scale =
quantise_fp8_rows(prune_2to4(x padded with zero rows))`` bit for bit (``semantics``; the e4m3 layout
is in ``cusparselt_layout``). The row scale needs the row's amax before anything is quantised, and
pruning keeps it (a group's largest magnitude always survives; a NaN or inf is pruned only beside two
others), so the amax is x's own: ``row_amax(x)``, computed in the graph (``ops.compress_activation_fp8``),
where Inductor can fuse the reduction into the kernel that produces x (a norm, an activation, an fp8
GEMM's scale epilogue; after an extern kernel such as attention it is a reduction kernel of its own).
``quantise_compress_kernel`` then reads x once per (BLOCK_M, BLOCK_K) tile: the row's scale from its
amax, then prune, quantise and write the e4m3 values and the metadata. This replaces a separate amax
kernel that read x a second time; on the H100 a lone layer's amax reduction plus this kernel take about
what the two kernels took (docs/design.md, "FP8"): the saving needs the amax fused into x's producer.

On the GPU the rounding is the hardware conversion (``quantised_bits``, ``HW_CAST``); under Triton's
interpreter, whose fp8 casts do not round to nearest even, it is integer arithmetic on float32 bits
(``e4m3_bits``), so the CPU tests check the emulation and the GPU's self-check checks the conversion
against cuSPARSELt.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
import triton.testing

from ..semantics import FP8, FP8_SCALE_EXP_MIN, round_up
from .cusparselt_layout import FP8_MULTIPLE, FP8_TILE_COLS, TILE_ROWS, compressed_shape, metadata_nbytes
from .prune_compress import INTERPRET, MAGNITUDE_BITS, checked_order, checked_rows, fixed_tile, in_order, select_2to4


@triton.jit
def _float32_bits(v, IS_BF16: tl.constexpr):
    """The float32 bit pattern (int32) of a bf16/fp16 tensor, exactly."""
    if IS_BF16:
        return (v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) << 16
    return v.to(tl.float32).to(tl.int32, bitcast=True)


@triton.jit
def e4m3_bits(bits, s):
    """float32 bits (int32) and the row's scale exponent s -> bits of e4m3(clamp(x * 2^-s, +-448))
    (int32, 0..255), round to nearest even; float32 subnormals -> zeros of their sign, NaN -> 0x7F."""
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    biased = a >> 23
    sig = (a & 0x7FFFFF) | 0x800000  # 24-bit significand: the value is sig x 2^(e - 23)
    e = biased - 127 - s
    # normal e4m3 (e >= -6): 4 significant bits, nearest even; a carry to 16 moves up a binade
    r = (sig + 0x7FFFF + ((sig >> 20) & 1)) >> 20
    e_n = tl.where(r == 16, e + 1, e)
    r = tl.where(r == 16, 8, r)
    normal = (e_n + 7) * 8 + (r - 8)
    normal = tl.where((e_n > 8) | ((e_n == 8) & (r > 14)), 0x7E, normal)  # saturate at 448
    # subnormal e4m3 (e < -6): multiples of 2^-9, i.e. sig >> (14 - e), nearest even (8 is the smallest normal)
    shift = tl.minimum(14 - e, 31)
    sub = (sig + (1 << (shift - 1)) - 1 + ((sig >> shift) & 1)) >> shift
    mag = tl.where(e >= -6, normal, sub)
    mag = tl.where(biased == 0, 0, mag)
    mag = tl.where(a == 0x7F800000, 0x7E, mag)  # +-inf saturates (its row's scale is NaN)
    return tl.where(a > 0x7F800000, 0x7F, sign | mag)  # semantics.FP8_NAN_BITS (a literal: Triton refuses globals)


@triton.jit
def quantised_bits(v, s, IS_BF16: tl.constexpr, HW_CAST: tl.constexpr):
    """e4m3 bits (int32, 0..255) of v with row exponents s, as ``semantics.quantise_fp8_rows`` rounds them.
    HW_CAST (GPU): the hardware conversion, in the reference's own steps (flush below 2^-126, times 2^-s,
    clamp to +-448, round to nearest even, NaN -> 0x7F); a few instructions where ``e4m3_bits`` takes
    about forty integer ones per element. Else (the interpreter, whose fp8 casts do not round to nearest
    even) ``e4m3_bits``. The self-check compares both with cuSPARSELt's bytes on the GPU."""
    bits = _float32_bits(v, IS_BF16)
    if HW_CAST:
        f = tl.where((bits & 0x7F800000) == 0, (bits & -0x80000000).to(tl.float32, bitcast=True), v.to(tl.float32))
        f = f * ((127 - s) << 23).to(tl.float32, bitcast=True)
        f = tl.minimum(tl.maximum(f, -448.0), 448.0)
        q = f.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True).to(tl.int32)
        return tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7F, q)
    return e4m3_bits(bits, s)


@triton.jit
def select_quantised(x, s, ABS_MASK: tl.constexpr, MAG_MAX: tl.constexpr, IS_BF16: tl.constexpr, HW_CAST: tl.constexpr):
    """Prune each group of 4 (on the 16-bit magnitudes), quantise the two values cuSPARSELt would store for
    the 16-bit group (row exponents s, (BLOCK_M, 1)), and pick the two indices it stores for the *quantised*
    group: a kept value that rounds to zero is a zero to it, which changes its choice
    (``cusparselt_layout.kept_indices``). Only the stored two are quantised: the quantised group's nonzeros
    are among them, and its other members are +0 (a kept +-0 is never at an index 2 or 3 outside them: the
    zeros of lower index win the tie). Returns (first, last, q_first, q_last): indices and e4m3 bits (int32),
    (BLOCK_M, BLOCK_K // 4)."""
    first, last, v_first, v_last = select_2to4(x, ABS_MASK, MAG_MAX)
    q_f = quantised_bits(v_first, s, IS_BF16, HW_CAST)
    q_l = quantised_bits(v_last, s, IS_BF16, HW_CAST)
    nz_f, nz_l = (q_f & 0x7F) != 0, (q_l & 0x7F) != 0
    # both nonzero: as chosen; one nonzero at i: (min(i, 2), 3); none: (2, 3)
    one = tl.minimum(tl.where(nz_f, first, last), 2)
    new_first = tl.where(nz_f & nz_l, first, tl.where(nz_f | nz_l, one, 2))
    new_last = tl.where(nz_f & nz_l, last, 3)
    zero = tl.zeros_like(q_f)
    q_first = tl.where(new_first == first, q_f, tl.where(new_first == last, q_l, zero))
    q_last = tl.where(new_last == last, q_l, tl.where(new_last == first, q_f, zero))
    return new_first, new_last, q_first, q_last


@triton.jit
def fp8_metadata_bytes(first, last, rows, pid_k, BLOCK_K: tl.constexpr, META_COL_TILES):
    """cuSPARSELt's fp8 metadata of a (BLOCK_M, BLOCK_K) tile: bytes (two groups of a row each) and
    where they go. Row 64 tr + 16 b + 8 h + i, groups 2p and 2p + 1 of 64-column tile tc (p = 4q + j)
    -> byte (tr * META_COL_TILES + tc) * 512 + 128 b + 16 i + h + 2 q + 4 j."""
    BM: tl.constexpr = first.shape[0]
    PAIRS: tl.constexpr = BLOCK_K // 8
    nibble = first | (last << 2)
    lo, hi = tl.split(tl.reshape(nibble, (BM, PAIRS, 2)))
    byte = lo | (hi << 4)
    pair = pid_k * PAIRS + tl.arange(0, PAIRS)  # global pair of groups
    tile_col, p = pair // 8, pair % 8
    row_part = (rows // 64) * META_COL_TILES * 512 + ((rows % 64) // 16) * 128 + (rows % 8) * 16 + (rows // 8) % 2
    col_part = tile_col * 512 + 2 * (p // 4) + 4 * (p % 4)
    return byte, row_part[:, None] + col_part[None, :], (tile_col < META_COL_TILES)[None, :]


HW_CAST = not INTERPRET  # quantise with the GPU's conversion instruction (``quantised_bits``)


@triton.jit
def row_exponents(amax_bits, MAG_MAX: tl.constexpr, IS_BF16: tl.constexpr, EXP_MIN: tl.constexpr):
    """(s, scale) per row from its amax as 16-bit magnitude bits: ``semantics.fp8_scale_exponent`` and
    ``2^s`` (NaN for a row with a NaN or inf, whose s is 0)."""
    finite = amax_bits < MAG_MAX
    # the amax as float32 bits (a positive 16-bit float's bits order like its value)
    if IS_BF16:
        amax = amax_bits << 16
    else:
        amax = amax_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32).to(tl.int32, bitcast=True)
    biased = amax >> 23
    s = tl.maximum(biased - 135 + ((amax & 0x7FFFFF) > 0x600000).to(tl.int32), EXP_MIN)
    s = tl.where(finite, s, 0)
    return s, tl.where(finite, ((s + 127) << 23).to(tl.float32, bitcast=True), float("nan"))


@triton.jit(do_not_specialize=["M", "M_PAD", "META_COL_TILES", "M_BUCKET"])
def quantise_compress_kernel(
    x_ptr,
    amax_ptr,
    values_ptr,
    meta_ptr,
    scale_ptr,
    order_ptr,
    M,
    M_PAD,
    K,
    stride_xm,
    META_COL_TILES,
    M_BUCKET,  # autotuning key only
    ABS_MASK: tl.constexpr,
    MAG_MAX: tl.constexpr,
    IS_BF16: tl.constexpr,
    EXP_MIN: tl.constexpr,
    HW_CAST: tl.constexpr,
    ORDERED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # the grid covers the metadata's rows (64-row tiles)
    in_x = rows < M  # rows past M read as zeros: the padding, never stored in x
    amax = tl.load(amax_ptr + rows, mask=in_x, other=0.0)
    # as 16-bit magnitude bits: a NaN's order above inf's, as row_exponents expects
    s, scale = row_exponents(amax.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, MAG_MAX, IS_BF16, EXP_MIN)
    if pid_k == 0:
        tl.store(scale_ptr + rows, scale, mask=in_x)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=in_x[:, None] & (cols < K)[None, :], other=0.0)
    if ORDERED:  # option permute_channels: the row's amax, so its scale, does not depend on the order
        x = in_order(x, order_ptr, cols, pid_k * BLOCK_K, K)
    first, last, q_first, q_last = select_quantised(x, s[:, None], ABS_MASK, MAG_MAX, IS_BF16, HW_CAST)
    vals = tl.reshape(tl.join(q_first, q_last), (BLOCK_M, BLOCK_K // 2)).to(tl.uint8)
    vcols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    tl.store(
        values_ptr + rows[:, None] * (K // 2) + vcols[None, :],
        vals,
        mask=(rows < M_PAD)[:, None] & (vcols < K // 2)[None, :],
    )
    byte, where, in_k = fp8_metadata_bytes(first, last, rows, pid_k, BLOCK_K, META_COL_TILES)
    tl.store(meta_ptr + where, byte.to(tl.uint8), mask=in_k)


def row_amax(x: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of each row of x (..., K), in x's dtype: NaN for a row with a NaN (max
    reductions propagate it), else inf for a row with an inf. Eager, one reduction with no |x| temporary;
    traced, ``amax(abs(x))``, which Inductor can fuse into the kernel that produces x."""
    return torch.linalg.vector_norm(x, float("inf"), dim=-1)


def tile_configs(ordered: bool = False) -> list[triton.Config]:
    """Tiles of quantise_compress_kernel: 16-64 rows (divisors of the 64-row metadata tile) by 64-512
    columns (whole 64-column metadata tiles). Each is compiled and checked by the self-check. ``ordered``
    (permuting a channel order in the tile, ``in_order``): the 16-row tiles only. With all five, the H100
    (Triton 3.6) failed the permuting kernel's GPU test and self-check for the autotuned FLUX shapes, and
    passed a small input on the fixed 16-row tile; the 16-bit kernel permutes its 16-row tiles exactly there.
    Which tiles failed was not isolated: the self-check decides on the GPU."""
    tiles = [(16, 128, 2), (16, 256, 4), (32, 256, 4), (16, 512, 4), (64, 256, 8)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w) for bm, bk, w in tiles if bm == 16 or not ordered
    ]


# 25 ms of timing per config and shape instead of Triton's 125 ms, as for prune_compress
quantise_compress_autotuned, quantise_compress_ordered_autotuned = (
    triton.autotune(
        configs=tile_configs(ordered),
        key=["K", "M_BUCKET"],
        do_bench=functools.partial(triton.testing.do_bench, warmup=5, rep=20),
    )(quantise_compress_kernel)
    for ordered in (False, True)
)
_FIXED = tile_configs()[1]  # small inputs and the interpreter (``fixed_tile``)


def prune_quantise_compress(
    x: torch.Tensor,
    rows: int | None = None,
    config: triton.Config | None = None,
    amax: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch._cslt_compress(q), scale)``, ``q, scale = quantise_fp8_rows(prune_2to4(x zero-padded to rows))``.

    x: 2-D (M, K) bf16/fp16, unit column stride, K a multiple of 32, any M >= 1. ``rows``: rows of the
    compressed operand, a multiple of 32 and >= M (default: M rounded up to 32). ``amax``: x's per-row
    max magnitude, (M,) in x's dtype, NaN for a row with a NaN (``row_amax``; the default): in a graph
    it is computed beside x's producer, so that this pass reads x once. Returns the compressed e4m3
    operand (``compressed_shape(rows, K, FP8)``) and the float32 row scales, shape (M,): NaN for a row
    with a NaN or inf (``semantics.quantise_fp8_rows``). ``config``: one of ``tile_configs(ordered)`` (the
    self-check runs each); default: fixed for small inputs and the interpreter, else autotuned. ``order``:
    quantise and compress ``x[:, order]`` (option ``permute_channels``), permuted in each tile as
    ``prune_compress`` does; the scales are the same, as the amax is.
    """
    m_pad = checked_rows(x, rows, FP8_MULTIPLE, "prune_quantise_compress", index_rows=TILE_ROWS)
    m, k = x.shape
    order = checked_order(x, order)
    if amax is None:
        amax = row_amax(x)
    elif amax.shape != (m,) or amax.dtype != x.dtype or amax.device != x.device:
        raise ValueError(
            f"prune_quantise_compress needs amax of shape ({m},), dtype {x.dtype} on {x.device} (x's rows, "
            f"dtype and device), got shape {tuple(amax.shape)}, dtype {amax.dtype} on {amax.device}"
        )
    out = torch.empty(compressed_shape(m_pad, k, FP8), dtype=FP8, device=x.device)
    raw = out.view(-1).view(torch.uint8)
    meta = raw[m_pad * k // 2 : m_pad * k // 2 + metadata_nbytes(m_pad, k, FP8)]
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    abs_mask, mag_max = MAGNITUDE_BITS[x.dtype]
    meta_rows = round_up(m_pad, TILE_ROWS)
    args = dict(
        M=m,
        M_PAD=m_pad,
        K=k,
        stride_xm=x.stride(0),
        META_COL_TILES=-(-k // FP8_TILE_COLS),
        M_BUCKET=min(triton.next_power_of_2(m_pad), 16384),
        ABS_MASK=abs_mask,
        MAG_MAX=mag_max,
        IS_BF16=x.dtype == torch.bfloat16,
        EXP_MIN=FP8_SCALE_EXP_MIN,
        HW_CAST=HW_CAST,
        ORDERED=order is not None,
    )

    def grid(cfg: dict[str, int]) -> tuple[int, int]:
        return meta_rows // cfg["BLOCK_M"], triton.cdiv(k, cfg["BLOCK_K"])

    amax = amax.contiguous()  # the kernel indexes it by row
    operands = (x, amax, raw, meta, scale, scale if order is None else order)  # order: read only if ORDERED
    if config is None and not fixed_tile(m_pad, k):
        tuned = quantise_compress_autotuned if order is None else quantise_compress_ordered_autotuned
        tuned[grid](*operands, **args)
    else:
        config = config or _FIXED
        quantise_compress_kernel[grid(config.kwargs)](*operands, **args, **config.all_kwargs())
    return out, scale
