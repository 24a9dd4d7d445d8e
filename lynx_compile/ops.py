"""What the lynx pass puts into the graph: torch.library custom ops for the GPU fast path, and
plain-torch functions that AOTAutograd traces (so Inductor fuses them with their neighbours).

Fast path, per activation ``x`` (any leading dims, K last), shared by every GEMM that reads it
(``to_q``/``to_k``/``to_v`` compress their common input once):

    c = lynx::compress_2to4(x.reshape(-1, K), padded, method)  # cuSPARSELt's bytes, flat int64; method: a PruneSite
    y = lynx::sparse_mm(c, W, padded, rows, alg_id)            # (rows, N) = prune_2to4(x) @ W.T
    y = y.view(*x.shape[:-1], N) [* scale] [+ bias]             # in the graph: Inductor fuses these

With ``compensate``, ``lynx::compress_2to4_norms`` replaces ``compress_2to4``: the same bytes, plus
per-row sums of squares of x and of its pruned version from the same pass (``norm_partials``),
which give ``scale`` (``compensation_scale``) without reading x again.

``compress_2to4`` has an Inductor lowering on CUDA (``codegen/inductor_lowering.py``): a Triton
template that takes a pointwise producer of ``x`` as its prologue; its eager kernel is the Triton one.

The bias stays in the graph because cuSPARSELt's bias epilogue is per row of the output when the
activation is the sparse operand: it cannot carry nn.Linear's per-column bias. With option
``fold_bias`` it goes into the GEMM instead, where an add in the graph would cost a kernel
(``passes/fold_bias.py``): ``c = compress_2to4(x, ..., ones_column=True)`` is the compression of
``[x | 1 | 0...]`` and ``sparse_mm(c, [W | b | 0...], ...)`` returns ``prune_2to4(x) @ W.T + b``.
Option ``low_rank`` puts its branch ``(x A) B`` into the GEMM the same way: ``c =
compress_2to4_low_rank(x, A, ...)`` is the compression of ``[x | spread_2to4(round(x A))]`` and
``sparse_mm(c, [W | spread_2to4(B^T)], ...)`` adds ``round(x A) B``.

Paths (``GemmPath``, chosen per layer at compile time, shown in the report):
- ``reference``: ``prune_2to4`` in torch ops, then the original dense GEMM. CPU, old GPUs,
  float32, ``path="reference"``. Same numbers as the fast path, no speed-up.
- ``cusparselt``: prune+compress with the producer fused in (method ``fused``) or the standalone
  Triton kernel (method ``triton``), then cuSPARSELt with the algorithm id timed fastest for
  the shape.
- ``cusparselt-compat``: ``torch._cslt_compress`` of the reference pruning (method ``cslt``), when
  the Triton kernel's layout self-check failed against the installed cuSPARSELt (slow, never wrong).

Option ``precision="fp8"`` (docs/design.md, "FP8"): the weight is quantised once at compile time
(``wq``, ``w_scale``: ``quantise_fp8_rows`` per output channel, buffers of the graph module), and

    amax = row_amax(x.reshape(-1, K))  # |x|'s row maxima, in the graph: Inductor can fuse it into x's producer
    c, x_scale = lynx::compress_fp8(x.reshape(-1, K), amax, padded, method)  # e4m3 bytes + float32 row scales
    # (method "fused": Inductor's template with x's producer as its prologue; it takes the amax from its
    # own load of x, so the graph computes none: amax is None)
    acc = lynx::sparse_mm_fp8(c, wq, padded, rows, alg_id, x.dtype)  # e4m3 x e4m3 -> bf16/fp16
    y = fp8_epilogue(acc, x_scale [* compensation], w_scale) [+ bias]  # in the graph: Inductor fuses it

The reference path computes ``semantics.fp8_linear`` of the pruned activation, its quantisation shared
by the GEMMs that read it: the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codegen import cusparselt, prune_compress
from .codegen.cusparselt_layout import compressed_int64_numel, compressed_shape, padded_rows
from .codegen.prune_compress_low_rank import prune_compress_low_rank
from .codegen.prune_quantise_compress import prune_quantise_compress, row_amax
from .report import PruneSite
from .semantics import (
    BIAS_COLUMNS,
    FP8,
    fp8_epilogue,
    fp8_gemm,
    norm_chunks,
    norm_partials,
    scale_from_partials,
)

_METHODS = (PruneSite.FUSED, PruneSite.TRITON, PruneSite.CSLT)  # where compress_2to4 can prune


@torch.library.custom_op("lynx::compress_2to4", mutates_args=())
def compress_2to4(
    x: torch.Tensor, rows: int, method: str, ones_column: bool = False, order: torch.Tensor | None = None
) -> torch.Tensor:
    """``torch._cslt_compress(prune_2to4(x zero-padded to rows))`` as a flat int64 buffer.

    ``method``, a ``PruneSite`` value: ``fused`` (Inductor lowers it into the producer's kernel;
    called eagerly it runs the Triton kernel), ``triton`` (the standalone Triton kernel), ``cslt``
    (cuSPARSELt's own compression of the reference pruning: slow, for when the Triton layout
    self-check fails).
    ``ones_column``: compress ``with_ones_column(x)`` (K + BIAS_COLUMNS), for a GEMM whose weight
    carries the bias (``passes/fold_bias.py``).
    ``order``: compress ``x[:, order]`` (option ``permute_channels``): the Triton kernel permutes each tile it loads.
    """
    return _compress(x, rows, method, ones_column, order=order)[0]


@torch.library.custom_op("lynx::compress_2to4_norms", mutates_args=())
def compress_2to4_norms(
    x: torch.Tensor, rows: int, method: str, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``compress_2to4(x, rows, method, order=order)`` and ``norm_partials`` of the same columns, the sums of
    squares that norm compensation needs, from the same pass over x (the Triton kernel writes both)."""
    compressed, norms = _compress(x, rows, method, with_norms=True, order=order)
    assert norms is not None
    return compressed, norms


def _compress(
    x: torch.Tensor,
    rows: int,
    method: str,
    ones_column: bool = False,
    with_norms: bool = False,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two ops' eager work: the compressed bytes as flat int64, and ``norm_partials`` if asked, of x's
    columns in ``order``."""
    if method in (PruneSite.FUSED, PruneSite.TRITON):
        if with_norms:
            compressed, norms = prune_compress.prune_compress_with_norms(x, rows=rows, order=order)
        else:
            compressed = prune_compress.prune_compress(x, rows=rows, ones_column=ones_column, order=order)
            norms = None
    elif method == PruneSite.CSLT:
        x = x if order is None else x.index_select(1, order)
        compressed, norms = cusparselt.compress_compat(x, rows, ones_column), norm_partials(x) if with_norms else None
    else:
        raise ValueError(f"unknown compress method {method!r}; valid: {[m.value for m in _METHODS]}")
    return compressed.reshape(-1).view(torch.int64), norms


@compress_2to4.register_fake
def _(
    x: torch.Tensor, rows: int, method: str, ones_column: bool = False, order: torch.Tensor | None = None
) -> torch.Tensor:
    k = x.shape[1] + (BIAS_COLUMNS if ones_column else 0)
    return x.new_empty((compressed_int64_numel(rows, k, x.dtype),), dtype=torch.int64)


@torch.library.custom_op("lynx::sparse_mm", mutates_args=())
def sparse_mm(compressed: torch.Tensor, weight: torch.Tensor, padded: int, rows: int, alg_id: int) -> torch.Tensor:
    """``(prune_2to4(x) @ weight.T)[:rows]``, ``compressed = compress_2to4(x, padded, ...)``; weight (N, K)."""
    operand = compressed.view(weight.dtype).view(compressed_shape(padded, weight.shape[1], weight.dtype))
    return cusparselt.sparse_mm(operand, weight, alg_id)[:rows]  # padding rows dropped: a view, no copy


@sparse_mm.register_fake
def _(compressed: torch.Tensor, weight: torch.Tensor, padded: int, rows: int, alg_id: int) -> torch.Tensor:
    return weight.new_empty((rows, weight.shape[0]))


@compress_2to4_norms.register_fake
def _(x: torch.Tensor, rows: int, method: str, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        x.new_empty((compressed_int64_numel(rows, x.shape[1], x.dtype),), dtype=torch.int64),
        x.new_empty((2, x.shape[0], norm_chunks(x.shape[1])), dtype=torch.float32),
    )


@torch.library.custom_op("lynx::per_row", mutates_args=())
def per_row(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` itself, computed by Inductor into a buffer of its own (``codegen/inductor_lowering.py``)
    rather than inlined into each consumer. A per-row scale from sums (compensation's: two sums over the
    chunks, a division, a square root, three tests) would otherwise run once per output element, and an
    output that reads a reduction is one Inductor's ``cat`` will not fuse into the concatenation: FLUX's
    ``compensate`` then wrote each scaled GEMM output once more, 0.9 ms of 12.5 (H100, 2026-12-07)."""
    return scale.clone()


@per_row.register_fake
def _(scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(scale)


def compress_activation(
    x: torch.Tensor, method: str, ones_column: bool = False, order: torch.Tensor | None = None
) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    return torch.ops.lynx.compress_2to4(x.reshape(-1, x.shape[-1]), padded_rows(rows), method, ones_column, order)


def compress_activation_compensated(
    x: torch.Tensor, method: str, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``compress_activation(x, method, order=order)`` and the compensation scale per row of x
    (``compensation_scale``), from the sums of squares the prune+compress pass writes beside the compressed
    bytes."""
    rows = x.numel() // x.shape[-1]
    compressed, norms = torch.ops.lynx.compress_2to4_norms(x.reshape(-1, x.shape[-1]), padded_rows(rows), method, order)
    return compressed, per_row(scale_from_partials(norms)).view(x.shape[:-1])


@torch.library.custom_op("lynx::compress_2to4_low_rank", mutates_args=())
def compress_2to4_low_rank(x: torch.Tensor, a: torch.Tensor, rows: int, ones_column: bool = False) -> torch.Tensor:
    """``compress_2to4`` of ``[x | spread_2to4(x @ A)]`` (then ``| 1 | 0 ...`` with ``ones_column``): ``x @ A``,
    then one prune pass with u's columns appended: the activation side of low-rank branches fused into their
    sparse GEMMs, whose weights carry ``spread_2to4(B^T)`` (``passes/low_rank.py``). The Triton kernel only: no
    Inductor lowering."""
    compressed, _ = prune_compress_low_rank(x, a, rows, ones_column)
    return compressed.reshape(-1).view(torch.int64)


@compress_2to4_low_rank.register_fake
def _(x: torch.Tensor, a: torch.Tensor, rows: int, ones_column: bool = False) -> torch.Tensor:
    k = x.shape[1] + 2 * a.shape[1] + (BIAS_COLUMNS if ones_column else 0)
    return x.new_empty((compressed_int64_numel(rows, k, x.dtype),), dtype=torch.int64)


def compress_activation_low_rank(x: torch.Tensor, a: torch.Tensor, ones_column: bool = False) -> torch.Tensor:
    """``compress_activation`` of x with the branch's columns ``spread_2to4(round(x A))`` appended."""
    rows = x.numel() // x.shape[-1]
    return torch.ops.lynx.compress_2to4_low_rank(x.reshape(-1, x.shape[-1]), a, padded_rows(rows), ones_column)


def sparse_linear(
    compressed: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, alg_id: int, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The GEMM of one layer on an already compressed activation; ``x`` only gives the shape."""
    rows = x.numel() // x.shape[-1]
    out = torch.ops.lynx.sparse_mm(compressed, weight, padded_rows(rows), rows, alg_id)
    out = out.view(*x.shape[:-1], weight.shape[0])
    return out if scale is None else _scaled(out, scale)


def reference_linear(pruned: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    out = F.linear(pruned, weight)
    return out if scale is None else _scaled(out, scale)


def _scaled(out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (out.float() * scale.unsqueeze(-1)).to(out.dtype)


@torch.library.custom_op("lynx::compress_fp8", mutates_args=())
def compress_fp8(
    x: torch.Tensor, amax: torch.Tensor | None, rows: int, method: str, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch._cslt_compress(q)`` as flat int64 and the float32 row scales (M,), ``q, scale =
    quantise_fp8_rows(prune_2to4(x zero-padded to rows))``. ``amax``: ``row_amax(x)``, an input so that
    the graph computes it with x's producer and the kernel reads x once; None where nothing needs it.
    ``method``: ``fused`` (Inductor's template, which takes the amax from its own load of x; eager, or
    where the template does not apply, the kernel), ``triton`` (the kernel) or ``cslt`` (its slow exact
    twin, when the kernel failed its self-check). ``order``: of ``x[:, order]`` (option ``permute_channels``):
    the kernel permutes each tile it loads (the template gathers no order: the kernel runs)."""
    if method in (PruneSite.FUSED, PruneSite.TRITON):
        compressed, scale = prune_quantise_compress(x, rows, amax=amax, order=order)
    elif method == PruneSite.CSLT:
        compressed, scale = cusparselt.compress_compat_fp8(x if order is None else x.index_select(1, order), rows)
    else:
        raise ValueError(f"unknown fp8 compress method {method!r}; valid: ['fused', 'triton', 'cslt']")
    return compressed.reshape(-1).view(torch.int64), scale


@compress_fp8.register_fake
def _(
    x: torch.Tensor, amax: torch.Tensor | None, rows: int, method: str, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        x.new_empty((compressed_int64_numel(rows, x.shape[1], FP8),), dtype=torch.int64),
        x.new_empty((x.shape[0],), dtype=torch.float32),
    )


@torch.library.custom_op("lynx::sparse_mm_fp8", mutates_args=())
def sparse_mm_fp8(
    compressed: torch.Tensor, wq: torch.Tensor, padded: int, rows: int, alg_id: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """The unscaled product ``(q @ wq.T)[:rows]`` of e4m3 operands, in ``out_dtype`` (bf16/fp16)."""
    operand = compressed.view(FP8).view(compressed_shape(padded, wq.shape[1], FP8))
    return cusparselt.sparse_mm(operand, wq, alg_id, out_dtype=out_dtype)[:rows]


@sparse_mm_fp8.register_fake
def _(
    compressed: torch.Tensor, wq: torch.Tensor, padded: int, rows: int, alg_id: int, out_dtype: torch.dtype
) -> torch.Tensor:
    return wq.new_empty((rows, wq.shape[0]), dtype=out_dtype)


def compress_activation_fp8(
    x: torch.Tensor, method: str, order: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compressed e4m3 activation and its row scales, shaped ``x.shape[:-1]``. For the standalone
    kernel the row amax is plain torch ops, traced into the graph, where Inductor can fuse it into the
    kernel that produces x; the template (``fused``) takes it from its own load of x, and ``cslt`` needs none.
    ``order``: of ``x[..., order]``, which the kernel (never the template) permutes in its tiles."""
    rows = x.numel() // x.shape[-1]
    x2d = x.reshape(-1, x.shape[-1])
    kernel = method == PruneSite.TRITON or (method == PruneSite.FUSED and order is not None)
    amax = row_amax(x2d) if kernel else None
    compressed, scale = torch.ops.lynx.compress_fp8(x2d, amax, padded_rows(rows), method, order)
    return compressed, scale.view(x.shape[:-1])


def sparse_linear_fp8(
    compressed: torch.Tensor,
    x_scale: torch.Tensor,
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    alg_id: int,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fp8 GEMM of one layer on an already compressed activation, with its scale epilogue (plain
    torch ops: Inductor fuses them into one pointwise kernel with the bias add). ``x`` gives the shape
    and dtype; ``scale``: a further row scale (compensation)."""
    rows = x.numel() // x.shape[-1]
    acc = torch.ops.lynx.sparse_mm_fp8(compressed, wq, padded_rows(rows), rows, alg_id, x.dtype)
    acc = acc.view(*x.shape[:-1], wq.shape[0])
    return fp8_epilogue(acc, x_scale if scale is None else x_scale * scale, w_scale, x.dtype)


def reference_linear_fp8(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference path of an fp8 layer: ``semantics.fp8_gemm`` of the quantised activation, in x's
    dtype; ``scale``: a further row scale (compensation)."""
    return fp8_gemm(xq, x_scale, wq, w_scale, x.dtype, scale)
