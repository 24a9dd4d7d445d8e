"""The GEMM side of the fast path: whether cuSPARSELt can run here, its sparse x dense product, and
its own (slow, exact) compression.

``sparse_mm`` multiplies the compressed activation (the sparse LEFT operand) by ``weight.T``. Bias
and per-row scales stay outside: with the activation as the sparse operand cuSPARSELt's bias
epilogue adds one value per ROW of the output, i.e. per token (checked on an H100 by
``test_bias_epilogue_is_per_row`` and the fixtures), not nn.Linear's per-column bias, and its
alpha-vector scaling is refused for bf16. The bias add stays in the graph, where Inductor can fuse
it with the consumer.

Everything imports on a CPU-only machine; the functions that need a GPU say so when called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..semantics import prune_2to4, quantise_fp8_rows, round_up, with_ones_column
from .cusparselt_layout import CSLT_MULTIPLE, FP8_MULTIPLE


def sparse_tensor_cores_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether cuSPARSELt can run on ``device``, and why not (or what it is)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False, f"{device} is not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return False, f"sm{major}{minor} has no sparse tensor cores (sm80+ needed)"
    if not torch.backends.cusparselt.is_available():
        return False, "this torch build has no cuSPARSELt"
    name, version = torch.cuda.get_device_name(device), torch.backends.cusparselt.version()
    return True, f"{name} (sm{major}{minor}), cuSPARSELt {version}"


def sparse_mm(
    compressed: torch.Tensor, weight: torch.Tensor, alg_id: int, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``X_pruned @ weight.T`` from ``compressed = compress(X_pruned)``: (padded rows, N); slice rows.
    ``out_dtype``: for e4m3 operands, bf16/fp16 (cuSPARSELt's e4m3 output is wrong on torch 2.11)."""
    return torch._cslt_sparse_mm(compressed, weight.t(), alg_id=alg_id, out_dtype=out_dtype)


def fp8_supported(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether cuSPARSELt runs float8_e4m3fn 2:4 GEMMs on ``device`` (sm90+), and why not."""
    ok, why = sparse_tensor_cores_available(device)
    if not ok:
        return ok, why
    major, minor = torch.cuda.get_device_capability(torch.device("cuda" if device is None else device))
    if (major, minor) < (9, 0):
        return False, f"sm{major}{minor} has no fp8 sparse tensor cores (sm90+ needed)"
    return True, why


def compress_compat(x: torch.Tensor, rows: int | None = None, ones_column: bool = False) -> torch.Tensor:
    """The slow exact path: reference pruning of x (``with_ones_column(x)``) zero-padded to ``rows``
    (default: cuSPARSELt's minimum, a multiple of 16), then cuSPARSELt's own compressor."""
    rows = round_up(x.shape[0], CSLT_MULTIPLE) if rows is None else rows
    x = with_ones_column(x) if ones_column else x
    return torch._cslt_compress(prune_2to4(F.pad(x, (0, 0, 0, rows - x.shape[0]))))


def compress_compat_fp8(x: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The slow exact fp8 path: ``torch._cslt_compress`` of ``quantise_fp8_rows(prune_2to4(x))``
    zero-padded to ``rows`` (default: a multiple of 32), and the row scales of x's rows."""
    rows = round_up(x.shape[0], FP8_MULTIPLE) if rows is None else rows
    q, scale = quantise_fp8_rows(prune_2to4(F.pad(x, (0, 0, 0, rows - x.shape[0]))))
    return torch._cslt_compress(q), scale[: x.shape[0]]
