"""The semantics every path must reproduce bit for bit: 2:4 activation pruning, the ones column of a
folded bias, and norm compensation.

Along the last (reduction) dimension, in consecutive groups of 4, keep the 2 values of largest
magnitude and zero the other 2. NaN and +-inf count as the largest magnitude (NaN ties with inf);
among equal magnitudes the lower index wins. Written with pointwise ops and a reshape only, so
Inductor can fuse it with whatever produces the activation. The lowest layer of the package: it
imports torch only.
"""

from __future__ import annotations

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
# Columns per partial sum of squares for compensation (``norm_partials``): divides every tile width
# of the prune+compress kernel, and leaves 2 x 4 bytes of sums per 128 x 2 bytes of activation.
NORM_CHUNK = 128


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
        beaten = [(mag[..., j] >= mag[..., i]) if j < i else (mag[..., j] > mag[..., i])
                  for j in range(GROUP) if j != i]
        ranks.append(sum(b.to(torch.int8) for b in beaten))
    rank = torch.stack(ranks, dim=-1)
    return (rank < KEEP).reshape(x.shape)


def prune_2to4(x: torch.Tensor) -> torch.Tensor:
    """Prune ``x`` to 2:4 along its last dimension (same shape and dtype out)."""
    return torch.where(keep_mask_2to4(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


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
    """``compensation_scale`` per row from ``norm_partials`` (or the kernel's equal output)."""
    full, kept = partials.sum(-1)
    return scale_from_sums(full, kept)


def prune_2to4_compensated(x: torch.Tensor) -> torch.Tensor:
    """The pruned row rescaled to the unpruned row's L2 norm (computed in float32, cast back)."""
    pruned = prune_2to4(x)
    return (pruned.float() * compensation_scale(x, pruned).unsqueeze(-1)).to(x.dtype)
