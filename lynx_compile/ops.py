"""torch.library custom ops that the lynx pass puts into the graph.

``lynx::sparse_linear(x, weight, path, alg_id, compensate)`` computes ``prune_2to4(x) @ weight.T``
(rows rescaled by the compensation scale when ``compensate``) with any leading dims on ``x``. Its
fake implementation lets Dynamo, AOTAutograd, Inductor and CUDA graphs treat it as one opaque,
shape-known call; the bias is added outside it, in the graph, where Inductor fuses it with the
consumer (cuSPARSELt's bias epilogue is per row of the output when the activation is the sparse
operand, so it cannot carry nn.Linear's per-column bias).

Paths (chosen per layer at compile time, shown in the report):
- ``reference``: prune with torch ops, dense GEMM. CPU, old GPUs, float32, ``path="reference"``.
- ``cusparselt``: fused Triton prune+compress, cuSPARSELt sparse GEMM with a searched algorithm.
- ``cusparselt-compat``: ``torch._cslt_compress`` of the reference pruning, for when the Triton
  kernel's layout self-check failed against the installed cuSPARSELt (slow, never wrong).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codegen.reference import compensation_scale, prune_2to4

PATHS = ("reference", "cusparselt", "cusparselt-compat")


@torch.library.custom_op("lynx::sparse_linear", mutates_args=())
def sparse_linear(x: torch.Tensor, weight: torch.Tensor, path: str, alg_id: int, compensate: bool) -> torch.Tensor:
    """``prune_2to4(x) @ weight.T`` (times the compensation scale per row when ``compensate``)."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    pruned = None
    if path == "reference":
        pruned = prune_2to4(rows)
        out = F.linear(pruned, weight)
    elif path in ("cusparselt", "cusparselt-compat"):
        out = _cusparselt_linear(rows, weight, alg_id, fused=path == "cusparselt")
    else:
        raise ValueError(f"unknown lynx path {path!r}; valid: {PATHS}")
    if compensate:
        scale = compensation_scale(rows, prune_2to4(rows) if pruned is None else pruned)
        out = (out.float() * scale.unsqueeze(-1)).to(out.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@sparse_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, path: str, alg_id: int, compensate: bool) -> torch.Tensor:
    torch._check(x.shape[-1] == weight.shape[1], lambda: "lynx::sparse_linear: K mismatch")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _cusparselt_linear(rows: torch.Tensor, weight: torch.Tensor, alg_id: int, *, fused: bool) -> torch.Tensor:
    from .codegen import cusparselt
    from .codegen.prune_compress import padded_rows, prune_compress

    m = rows.shape[0]
    if fused:
        compressed = prune_compress(rows)
    else:
        padded = F.pad(rows, (0, 0, 0, padded_rows(m) - m))
        compressed = torch._cslt_compress(prune_2to4(padded))
    return cusparselt.sparse_mm(compressed, weight, alg_id)[:m]
