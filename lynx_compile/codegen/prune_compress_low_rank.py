"""Prune + compress with the low-rank branch's product ``U = x A`` as extra 2:4 columns.

``prune_compress_low_rank(x, a) == (torch._cslt_compress(prune_2to4(pad_rows([x | spread_2to4(u)]))), u)``
bit for bit, ``u = x @ a``. Times the weight ``[W | spread_2to4(B^T)]`` one sparse GEMM gives
``P(x) W^T + u B`` (docs/design.md, "Low-rank compensation"): the branch costs a skinny GEMM and 2R more
columns of K, not a second GEMM over N and an add.

u comes from the same ``x @ a`` the reference path runs (cuBLAS on the GPU), then ``prune_compress_kernel``
runs over its usual 2-D grid with the 2R columns appended: tiles of x alone load as they always do, and
only the tiles that reach u's columns gather them. The first form computed u inside the prune kernel,
each program sweeping whole rows; on the H100 that kernel took 1.5-1.6x cuBLAS ``x @ A`` plus the plain
prune pass (``benchmarks/studies/fp8_low_rank_kernels_h100``).
"""

from __future__ import annotations

import torch
import triton

from .cusparselt_layout import CSLT_MULTIPLE
from .prune_compress import _config, checked_rows, launch

RANK_MULTIPLE = 16  # K + 2R stays a multiple of 32, as cuSPARSELt's 16-bit operands need


def check_rank(rank: int) -> None:
    """The fused branch's rank (A's columns) must be a positive multiple of RANK_MULTIPLE."""
    if rank < 1 or rank % RANK_MULTIPLE:
        raise ValueError(
            f"the fused low-rank branch needs a rank that is a multiple of {RANK_MULTIPLE} "
            f"(keeps cuSPARSELt's K a multiple of 32), got {rank}"
        )


def prune_compress_low_rank(
    x: torch.Tensor,
    a: torch.Tensor,
    rows: int | None = None,
    ones_column: bool = False,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch._cslt_compress(prune_2to4([x | spread_2to4(u)] zero-padded to rows)), u)``, ``u = x @ a``.

    x: (M, K) as ``prune_compress`` takes it; a: (K, R), x's dtype, R a multiple of 16. ``rows`` as in
    ``prune_compress``. ``ones_column``: compress ``[x | spread_2to4(u) | 1 | 0 ...]`` (K + 2R + BIAS_COLUMNS),
    for a weight that carries the bias too. ``config``: one of ``prune_compress.tile_configs`` (default: as
    ``prune_compress`` picks). Returns the compressed operand and u, (M, R) in x's dtype.
    """
    m_pad = checked_rows(x, rows, CSLT_MULTIPLE, "prune_compress_low_rank")
    if a.dim() != 2 or a.shape[0] != x.shape[1] or a.dtype != x.dtype or a.device != x.device:
        raise ValueError(
            f"a must be ({x.shape[1]}, R) {x.dtype} on {x.device}, got {tuple(a.shape)} {a.dtype} on {a.device}"
        )
    check_rank(a.shape[1])
    u = x @ a
    return launch(x, m_pad, config or _config(m_pad, x.shape[1]), ones_column, u=u), u
