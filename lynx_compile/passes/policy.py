"""Decide, per GEMM, whether it runs on 2:4 activations and on which path, and say why.

Checks run in order and the first that keeps a GEMM dense gives the reason shown in the report:
name rules, dtype, K % 4, ``min_rows``; then, on CUDA, what the device can do (sparse tensor cores,
K % 16, the Triton kernel's self-check) and the cost model (a measured sparse vs dense time).
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import LynxConfig, dtype_name
from .gemms import GemmSite
from .producers import fusable_producer

FAST_DTYPES = (torch.bfloat16, torch.float16)
SPARSE_K_ALIGN = 16  # cuSPARSELt refuses structured matrices whose columns are not a multiple of 16


@dataclasses.dataclass(frozen=True)
class Decision:
    sparse: bool
    path: str  # "dense" or one of lynx_compile.ops.PATHS
    reason: str
    alg_id: int = 0
    compress: str = ""  # cuSPARSELt paths: one of lynx_compile.ops.METHODS


def decide(site: GemmSite, config: LynxConfig, *, measure: bool = True) -> Decision:
    """``measure=False`` skips everything that runs on the GPU (inspection of the semantics only)."""
    selected, why = config.select_by_name(site.name)
    if not selected:
        return Decision(False, "dense", why)
    if not config.allows_dtype(site.dtype):
        return Decision(False, "dense", f"dtype {dtype_name(site.dtype)} not in option dtypes={list(config.dtypes)}")
    if site.k % 4:
        return Decision(False, "dense", f"K={site.k} is not a multiple of 4")
    if site.m < config.min_rows:
        dyn = " (hint of a dynamic size)" if site.dynamic_m else ""
        return Decision(False, "dense", f"M={site.m}{dyn} < min_rows={config.min_rows}")
    if site.device.type != "cuda":
        return Decision(True, "reference", f"{why}; reference path: {site.device.type} has no sparse tensor cores")
    if config.path == "reference":
        return Decision(True, "reference", f"{why}; reference path: option path='reference'")
    return _decide_cuda(site, config, why, measure)


def _decide_cuda(site: GemmSite, config: LynxConfig, why: str, measure: bool) -> Decision:
    from ..codegen import cusparselt
    from ..ops import padded_rows

    ok, reason = cusparselt.sparse_tensor_cores_available(site.device)
    if not ok:
        return Decision(True, "reference", f"{why}; reference path: {reason}")
    if site.dtype not in FAST_DTYPES:
        return Decision(True, "reference", f"{why}; reference path: no 2:4 kernel for {dtype_name(site.dtype)}")
    if site.k % SPARSE_K_ALIGN or site.n % 8:
        return Decision(False, "dense", f"K={site.k}, N={site.n}: cuSPARSELt needs K % 16 == 0 and N % 8 == 0")
    if not cusparselt.fast_compress_ok(site.device, site.dtype):  # checked once, warns once
        path, compress = "cusparselt-compat", "cusparselt"
        why = f"{why}; compression by torch._cslt_compress (Triton layout self-check failed)"
    else:
        path, (compress, how) = "cusparselt", _compress_method(site, config)
        why = f"{why}; {how}"
    if not measure:
        return Decision(True, path, why, compress=compress)
    rows = padded_rows(site.m)  # what the compiled graph runs: search and measure that shape
    alg_id = cusparselt.best_alg(rows, site.k, site.n, site.dtype, site.device)
    if config.cost_model:
        dense_ms, sparse_ms = cusparselt.measure_speedup(rows, site.k, site.n, site.dtype, alg_id)
        speedup = dense_ms / sparse_ms
        if speedup < config.min_speedup:
            return Decision(
                False, "dense", f"cost model: sparse {sparse_ms:.3f} ms vs dense {dense_ms:.3f} ms = {speedup:.2f}x "
                f"< min_speedup={config.min_speedup:g}",
            )
        why = f"{why}; cost model: {speedup:.2f}x"
    return Decision(True, path, why, alg_id, compress)


def _compress_method(site: GemmSite, config: LynxConfig) -> tuple[str, str]:
    """("inductor" | "triton", why): fused into the producer's kernel where Inductor can do it."""
    from ..codegen.inductor_lowering import eligible
    from ..ops import padded_rows

    if not config.fuse_producers:
        return "triton", "standalone Triton prune+compress (fuse_producers=False)"
    if not eligible(padded_rows(site.m), site.k, site.dtype):
        return "triton", f"standalone Triton prune+compress (K={site.k} % 32 != 0: not lowered)"
    fusable, producer = fusable_producer(site.x)
    if not fusable:
        return "triton", f"standalone Triton prune+compress (activation is a {producer}: nothing to fuse)"
    return "inductor", f"prune+compress fused into the producer ({producer})"
