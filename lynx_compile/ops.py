"""What the lynx pass puts into the graph: torch.library custom ops for the GPU fast path, and
plain-torch functions that AOTAutograd traces (so Inductor fuses them with their neighbours).

Fast path, per activation ``x`` (any leading dims, K last), shared by every GEMM that reads it
(``to_q``/``to_k``/``to_v`` compress their common input once):

    c = lynx::compress_2to4(x.reshape(-1, K), padded, method)  # cuSPARSELt's bytes, flat int64
    y = lynx::sparse_mm(c, W, padded, rows, alg_id)            # (rows, N) = prune_2to4(x) @ W.T
    y = y.view(*x.shape[:-1], N) [* scale] [+ bias]             # in the graph: Inductor fuses these

``compress_2to4`` has an Inductor lowering on CUDA (``codegen/inductor_lowering.py``): a Triton
template that takes a pointwise producer of ``x`` as its prologue; its eager kernel is the Triton one.

The bias stays in the graph because cuSPARSELt's bias epilogue is per row of the output when the
activation is the sparse operand: it cannot carry nn.Linear's per-column bias. With option
``fold_bias`` it goes into the GEMM instead, where an add in the graph would cost a kernel
(``passes/fold_bias.py``): ``c = compress_2to4(x, ..., ones_column=True)`` is the compression of
``[x | 1 | 0...]`` and ``sparse_mm(c, [W | b | 0...], ...)`` returns ``prune_2to4(x) @ W.T + b``.

Paths (chosen per layer at compile time, shown in the report):
- ``reference``: ``prune_2to4`` in torch ops, then the original dense GEMM. CPU, old GPUs,
  float32, ``path="reference"``. Same numbers as the fast path, no speed-up.
- ``cusparselt``: prune+compress with the producer fused in (method ``inductor``) or the standalone
  Triton kernel (method ``triton``), then cuSPARSELt with the algorithm id timed fastest for
  the shape.
- ``cusparselt-compat``: ``torch._cslt_compress`` of the reference pruning, when the Triton
  kernel's layout self-check failed against the installed cuSPARSELt (slow, never wrong).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codegen.cusparselt_layout import compressed_int64_numel, compressed_shape
from .codegen.reference import BIAS_COLUMNS, compensation_scale, prune_2to4

PATHS = ("reference", "cusparselt", "cusparselt-compat")
METHODS = ("inductor", "triton", "cusparselt")  # how compress_2to4 computes its result
ROW_ALIGN = 64  # rows of the compressed operand: whole 64-row metadata tiles (cuSPARSELt needs 16)


def padded_rows(m: int) -> int:
    """Rows the pass compresses and multiplies (``prune_compress.padded_rows`` is cuSPARSELt's minimum)."""
    return -(-m // ROW_ALIGN) * ROW_ALIGN


@torch.library.custom_op("lynx::compress_2to4", mutates_args=())
def compress_2to4(x: torch.Tensor, rows: int, method: str, ones_column: bool = False) -> torch.Tensor:
    """``torch._cslt_compress(prune_2to4(x zero-padded to rows))`` as a flat int64 buffer.

    ``method``: ``inductor`` (Inductor lowers it into the producer's kernel; called eagerly it runs
    the Triton kernel), ``triton`` (the standalone Triton kernel), ``cusparselt`` (cuSPARSELt's own
    compression of the reference pruning: slow, for when the Triton layout self-check fails).
    ``ones_column``: compress ``with_ones_column(x)`` (K + BIAS_COLUMNS), for a GEMM whose weight
    carries the bias (``passes/fold_bias.py``).
    """
    if method in ("inductor", "triton"):
        from .codegen.prune_compress import prune_compress

        compressed = prune_compress(x, rows=rows, ones_column=ones_column)
    elif method == "cusparselt":
        from .codegen.cusparselt import compress_compat

        compressed = compress_compat(x, rows, ones_column)
    else:
        raise ValueError(f"unknown compress method {method!r}; valid: {METHODS}")
    return compressed.reshape(-1).view(torch.int64)


@compress_2to4.register_fake
def _(x: torch.Tensor, rows: int, method: str, ones_column: bool = False) -> torch.Tensor:
    k = x.shape[1] + (BIAS_COLUMNS if ones_column else 0)
    return x.new_empty((compressed_int64_numel(rows, k, x.dtype),), dtype=torch.int64)


@torch.library.custom_op("lynx::sparse_mm", mutates_args=())
def sparse_mm(compressed: torch.Tensor, weight: torch.Tensor, padded: int, rows: int, alg_id: int) -> torch.Tensor:
    """``(prune_2to4(x) @ weight.T)[:rows]``, ``compressed = compress_2to4(x, padded, ...)``; weight (N, K)."""
    from .codegen import cusparselt

    operand = compressed.view(weight.dtype).view(compressed_shape(padded, weight.shape[1], weight.dtype))
    return cusparselt.sparse_mm(operand, weight, alg_id)[:rows]  # padding rows dropped: a view, no copy


@sparse_mm.register_fake
def _(compressed: torch.Tensor, weight: torch.Tensor, padded: int, rows: int, alg_id: int) -> torch.Tensor:
    return weight.new_empty((rows, weight.shape[0]))


def compress_activation(x: torch.Tensor, method: str, ones_column: bool = False) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    return torch.ops.lynx.compress_2to4(x.reshape(-1, x.shape[-1]), padded_rows(rows), method, ones_column)


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


def row_scale(x: torch.Tensor, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """Norm compensation factor per row (see ``compensation_scale``)."""
    return compensation_scale(x, prune_2to4(x) if pruned is None else pruned)


def _scaled(out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (out.float() * scale.unsqueeze(-1)).to(out.dtype)
