"""The semantics every path must reproduce bit for bit: 2:4 activation pruning, the ones column of a
folded bias, norm compensation, and the float8 quantisation of option ``precision="fp8"``.

Along the last (reduction) dimension, in consecutive groups of 4, keep the 2 values of largest
magnitude and zero the other 2. NaN and +-inf count as the largest magnitude (NaN ties with inf);
among equal magnitudes the lower index wins. Written with pointwise ops and a reshape only, so
Inductor can fuse it with whatever produces the activation. The lowest layer of the package: it
imports torch only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

GROUP = 4
KEEP = 2
# Activation dtypes with a 2:4 kernel (the Triton prune+compress and cuSPARSELt's 16-bit layout);
# other dtypes take the reference path.
SPARSE_DTYPES = (torch.bfloat16, torch.float16)
# Columns appended to an activation whose GEMM carries its bias in the weight (``with_ones_column``).
# cuSPARSELt takes K in multiples of 16, but its Hopper kernels step K by 64: K + 16 for FLUX's
# q/k/v made the whole model slower than K + 64 (docs/design.md, "Bias folding").
BIAS_COLUMNS = 64
# float8_e4m3fn: its largest finite magnitude, and the bits a NaN element quantises to (torch's own NaN)
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_NAN_BITS = 0x7F
# Exponents of the power-of-two fp8 scales: the smallest normal float32 (rows of zeros or of values
# below it get 2^-126) up to what the largest bfloat16 needs (2^120)
FP8_SCALE_EXP_MIN = -126
# Columns per partial sum of squares for compensation (``norm_partials``): divides every tile width
# of the prune+compress kernel, and leaves 2 x 4 bytes of sums per 128 x 2 bytes of activation.
NORM_CHUNK = 128
# A channel order (option permute_channels) permutes within blocks of this many columns: the prune kernel's
# tiles (128-512 columns) then permute what they loaded, in the SM (prune_compress.in_order)
ORDER_BLOCK = 64


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def norm_chunks(k: int) -> int:
    """Partial sums of squares per row of K columns (``norm_partials``): one per NORM_CHUNK columns."""
    return round_up(k, NORM_CHUNK) // NORM_CHUNK


def _check_last_dim(x: torch.Tensor) -> None:
    if x.dim() == 0 or x.shape[-1] % GROUP != 0:
        raise ValueError(
            f"2:4 pruning needs the last dimension to be a multiple of {GROUP}, got shape {tuple(x.shape)}"
        )


def keep_mask_2to4(x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the kept entries, same shape as ``x``."""
    _check_last_dim(x)
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // GROUP, GROUP)
    mag = groups.abs()
    mag = torch.where(torch.isnan(groups), torch.full_like(mag, float("inf")), mag)
    # rank_i = #{j : mag_j > mag_i, or mag_j == mag_i and j < i}; keep the two of rank 0 and 1.
    ranks = []
    for i in range(GROUP):
        beaten = [
            (mag[..., j] >= mag[..., i]) if j < i else (mag[..., j] > mag[..., i]) for j in range(GROUP) if j != i
        ]
        ranks.append(sum(b.to(torch.int8) for b in beaten))
    rank = torch.stack(ranks, dim=-1)
    return (rank < KEEP).reshape(x.shape)


def prune_2to4(x: torch.Tensor) -> torch.Tensor:
    """Prune ``x`` to 2:4 along its last dimension (same shape and dtype out)."""
    return torch.where(keep_mask_2to4(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def prune_2to4_in_order(x: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``prune_2to4`` with the groups of 4 formed in the channel order ``order`` (a permutation of the last
    dimension, option ``permute_channels``): group g is channels ``order[4g:4g + 4]``. Same shape and channel
    positions as ``x``; ``prune_2to4(x[..., order]) @ W[:, order].T`` is ``prune_2to4_in_order(x, order) @ W.T``
    (the fast path computes the first). ``order=None``: ``prune_2to4``."""
    if order is None:
        return prune_2to4(x)
    return prune_2to4(x.index_select(-1, order)).index_select(-1, torch.argsort(order))


def check_order(order: torch.Tensor, k: int) -> torch.Tensor:
    """``order`` if it is a channel order the fast path takes: a permutation of range(k) that keeps every
    channel within its block of ``ORDER_BLOCK`` (the prune kernel permutes each tile of x in the SM, and its
    tiles are whole blocks); else a ValueError."""
    if order.shape != (k,) or order.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"a channel order must be a ({k},) int32/int64 tensor, got {tuple(order.shape)} {order.dtype}")
    channels = torch.arange(k, device=order.device)
    if not torch.equal(order.sort().values, channels):
        raise ValueError("a channel order must be a permutation of the K channels")
    if not torch.equal(order // ORDER_BLOCK, channels // ORDER_BLOCK):
        raise ValueError(f"a channel order must keep each channel within its block of {ORDER_BLOCK}")
    return order


def with_ones_column(x: torch.Tensor) -> torch.Tensor:
    """``[x | 1 | 0 ... 0]``: BIAS_COLUMNS more columns, the first of them ones.

    Times a weight with its bias as column K (``[W | b | 0 ... 0]``) this gives ``x @ W.T + b``, so
    the bias is added inside the sparse GEMM. The new groups, ``[1, 0, 0, 0]`` and zeros, are already
    2:4: pruning leaves them as they are.
    """
    out = torch.nn.functional.pad(x, (0, BIAS_COLUMNS))
    out[..., x.shape[-1]] = 1
    return out


def with_bias_column(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[W | b | 0 ... 0]``: the (N, K) weight with its bias as column K, the partner of
    ``with_ones_column`` (BIAS_COLUMNS more columns)."""
    out = torch.nn.functional.pad(w, (0, BIAS_COLUMNS))
    out[:, w.shape[1]] = b
    return out


def spread_2to4(u: torch.Tensor) -> torch.Tensor:
    """``[u0, u1, 0, 0, u2, u3, 0, 0, ...]``: the R columns of ``u`` (R even) as the two leading members of
    each group of 4 of 2R columns, so that 2:4 pruning leaves them as they are (option ``low_rank``, fused)."""
    pairs = u.unflatten(-1, (u.shape[-1] // 2, 2))
    return torch.cat([pairs, torch.zeros_like(pairs)], dim=-1).flatten(-2)


def low_rank_u(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``round(x A)``: the branch's first product, float32 accumulation rounded once to x's dtype."""
    return (x.float() @ a.float()).to(x.dtype)


def with_low_rank_columns(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``[x | spread_2to4(u)]``: the activation whose pruning is ``[prune_2to4(x) | spread_2to4(u)]``."""
    return torch.cat([x, spread_2to4(u)], dim=-1)


def with_branch_columns(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[W | spread_2to4(B^T)]``, (N, K + 2R): the partner of ``with_low_rank_columns``, so that the GEMM of
    the two adds ``u B`` to ``x W^T`` (``b``: the branch's (R, N) factor)."""
    return torch.cat([w, spread_2to4(b.t())], dim=-1)


def compensation_scale(x: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """RT-Lynx norm compensation: per row, ``s = ||x||_2 / ||prune(x)||_2`` in float32.

    ``s = 1`` where ``||prune(x)||`` is 0 (an all-zero row) or either norm is not finite (NaN/inf
    rows keep the dense model's NaN/inf instead of turning into inf/inf = NaN everywhere).
    Shape: ``x.shape[:-1]``.
    """
    return scale_from_sums(x.float().square().sum(-1), pruned.float().square().sum(-1))


def scale_from_sums(full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``compensation_scale`` from the float32 sums of squares of the row (``full``) and of its
    pruned version (``kept``)."""
    ok = (kept > 0) & torch.isfinite(full) & torch.isfinite(kept)
    return torch.where(ok, torch.sqrt(full / torch.where(ok, kept, 1.0)), 1.0)


def norm_partials(x: torch.Tensor) -> torch.Tensor:
    """Sums of squares of ``x`` (M, K) and of ``prune_2to4(x)`` per row and chunk of NORM_CHUNK
    columns, float32, shape (2, M, ceil(K / NORM_CHUNK)): what the prune+compress kernel writes
    for compensation, so the scale needs no second pass over the activation. Summed over chunks
    they are ``compensation_scale``'s two sums, up to float32 summation order."""
    m, k = x.shape
    chunks = norm_chunks(k)
    both = torch.nn.functional.pad(torch.stack([x, prune_2to4(x)]).float(), (0, chunks * NORM_CHUNK - k))
    return both.square().reshape(2, m, chunks, NORM_CHUNK).sum(-1)


def scale_from_partials(partials: torch.Tensor) -> torch.Tensor:
    """``compensation_scale`` per row from ``norm_partials`` (or the kernel's equal output). Two sums, not
    one over both: Inductor then computes them and the guards in one kernel (``ops.per_row``)."""
    return scale_from_sums(partials[0].sum(-1), partials[1].sum(-1))


def prune_2to4_compensated(x: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """The pruned row (``prune_2to4_in_order``) rescaled to the unpruned row's L2 norm (computed in float32,
    cast back)."""
    return compensated(x, prune_2to4_in_order(x, order))


def compensated(x: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``pruned`` (x's pruning) rescaled to x's row norms: ``prune_2to4_compensated`` where the pruning is at
    hand already."""
    return (pruned.float() * compensation_scale(x, pruned).unsqueeze(-1)).to(x.dtype)


def refit_weight(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Option ``refit``: the (N, K) weight ``W G^T`` that the GEMM runs with on P(x) (``lynx_compile.refit``), a
    float32 product rounded once to W's dtype. Every path uses this one copy, made at compile time."""
    return (w.float() @ g.to(w.device, torch.float32).mT).to(w.dtype)


def pruning(compensate: bool, order: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference pruning of one GEMM's activation under options ``compensate`` and ``permute_channels``
    (``order``): what the measurements (errors, sensitivities, calibration statistics) apply."""
    return functools.partial(prune_2to4_compensated if compensate else prune_2to4_in_order, order=order)


def fp8_scale_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest integer s with ``amax * 2^-s <= FP8_MAX``, at least FP8_SCALE_EXP_MIN
    (int32): amax = 1.f x 2^e needs s = e - 8, or e - 7 when 1.f > 1.75. Non-finite amax gives 0
    (its row's scale is NaN: ``quantise_fp8_rows``). ``frexp``, not float bits: Inductor (torch 2.13,
    CPU) miscompiled a bit cast of a reduction's result fused with the pruning."""
    mantissa, e = torch.frexp(amax.float())  # amax = mantissa x 2^e, mantissa in [0.5, 1)
    s = (e - 9 + (mantissa > 0.875).to(torch.int32)).clamp(min=FP8_SCALE_EXP_MIN)
    s = torch.where(amax == 0, FP8_SCALE_EXP_MIN, s)
    return torch.where(torch.isfinite(amax), s, 0).to(torch.int32)


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as float32, exactly, for integer e in [-126, 127]."""
    return torch.pow(2.0, e.float())


def quantise_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row float8_e4m3fn quantisation with power-of-two scales: ``(q, scale)`` with
    ``q.float() * scale[..., None] ~= x``; ``scale``: float32, shape ``x.shape[:-1]``.

    ``scale = 2^s`` with s from ``fp8_scale_exponent(amax)`` (amax of |x| per row, float32): the
    scaling is exact, and ``q = e4m3(clamp(x * 2^-s, +-448))`` rounds to nearest, ties to even,
    saturating. Magnitudes below 2^-126 (16-bit subnormals) count as zeros of their sign; NaN
    elements quantise to 0x7F. A row with a NaN or an infinity gets ``scale = NaN``: whatever its q,
    its GEMM output row is NaN, as the dense model's would be (up to which NaN/inf).
    """
    xf = x.reshape(-1, x.shape[-1]).float()
    amax = xf.abs().amax(-1)  # flushing values below 2^-126 would not change s
    s = fp8_scale_exponent(amax)
    xf = torch.where(xf.abs() < 2.0**FP8_SCALE_EXP_MIN, xf * 0.0, xf)  # x * 0.0 keeps the sign of a zero
    q = (xf * pow2(-s).unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)
    q = torch.where(torch.isnan(xf), torch.full_like(q, FP8_NAN_BITS), q).view(FP8)
    scale = torch.where(torch.isfinite(amax), pow2(s), float("nan"))
    return q.view(x.shape), scale.view(x.shape[:-1])


def fp8_epilogue(
    acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The output of an fp8 GEMM from its accumulator: ``acc * row_scale[:, None] * col_scale[None, :]``
    in float32, then ``dtype``. With power-of-two scales the products are exact, so an accumulator
    already rounded to bf16 gives the same bits as a float32 one rounded at the end."""
    return (acc.float() * row_scale.unsqueeze(-1) * col_scale).to(dtype)


def fp8_linear(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, row_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference fp8 GEMM of a pruned activation: quantise its rows, multiply the e4m3 values in
    float32 by the quantised weight ``wq`` (N, K) with its per-channel ``w_scale`` (N,), scale back
    (``fp8_epilogue``, with ``row_scale`` too, e.g. compensation's), in x's dtype."""
    xq, x_scale = quantise_fp8_rows(x)
    return fp8_gemm(xq, x_scale, wq, w_scale, x.dtype, row_scale)


def fp8_gemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    dtype: torch.dtype,
    row_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fp8_linear`` after its quantisation: the e4m3 values multiplied in float32, scaled back to
    ``dtype``. Apart so that GEMMs sharing an activation share its quantisation, as on the GPU."""
    scale = x_scale if row_scale is None else x_scale * row_scale
    return fp8_epilogue(xq.float() @ wq.float().t(), scale, w_scale, dtype)
