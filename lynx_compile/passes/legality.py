"""Can this GEMM run on 2:4 activations, and on which path? The checks that do not time anything.

Checks run in order and the first that keeps a GEMM dense gives the reason shown in the report:
name rules, dtype, K % 4, ``min_rows``; then, on CUDA, what the device can do (sparse tensor cores,
a 16-bit dtype, K % 16 and N % 8, the Triton kernel's self-check), which picks the path and where
the pruning runs. Whether it is also faster is ``profitability``'s question (docs/design.md,
"Legality and profitability").
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from ..codegen import cusparselt, self_check
from ..codegen.cusparselt_layout import CSLT_MULTIPLE, FP8_MULTIPLE, padded_rows
from ..codegen.inductor_lowering import eligible, eligible_fp8
from ..config import LynxConfig, dtype_name
from ..report import GemmPath, PruneSite
from ..semantics import GROUP, NORM_CHUNK, SPARSE_DTYPES
from .decision import Decision
from .gemms import GemmSite
from .producers import fusable_producer

log = logging.getLogger("lynx_compile")


def can_sparsify(site: GemmSite, config: LynxConfig) -> Decision:
    """The path the GEMM may take (dense, with the reason, when it may not be sparse), and with
    option ``precision="fp8"`` whether it runs on e4m3 operands."""
    decision = _sparse_path(site, config)
    if config.precision != "fp8" or not decision.sparse:
        return decision
    return _fp8(site, config, decision)


def _fp8(site: GemmSite, config: LynxConfig, decision: Decision) -> Decision:
    """Option precision="fp8" for a sparse GEMM: e4m3 where the activation is 16-bit and the device
    (or the reference path) can; else 2:4 in the activation's own dtype, with the reason (logged once)."""
    if site.dtype not in SPARSE_DTYPES:
        return _not_fp8(decision, f"precision='fp8' needs a 16-bit activation: 2:4 in {dtype_name(site.dtype)}")
    if decision.path == GemmPath.REFERENCE:
        return dataclasses.replace(decision, fp8=True, reason=f"{decision.reason}; fp8 (emulated)")
    ok, why = cusparselt.fp8_supported(site.device)
    if not ok:
        why = f"precision='fp8': {why}; 2:4 in {dtype_name(site.dtype)}"
    elif site.k % FP8_MULTIPLE or site.n % 16:
        why = (
            f"precision='fp8': K={site.k}, N={site.n}: e4m3 needs K % 32 == 0 and N % 16 == 0; "
            f"2:4 in {dtype_name(site.dtype)}"
        )
    if not ok or site.k % FP8_MULTIPLE or site.n % 16:
        return _not_fp8(decision, why)
    if not self_check.fast_compress_ok(site.device, site.dtype, fp8=True):
        fallback = "Triton prune+quantise+compress self-check failed"
        return Decision(
            True,
            GemmPath.CUSPARSELT_COMPAT,
            f"{_why_selected(decision)}; fp8, compression by torch._cslt_compress ({fallback})",
            prune=PruneSite.CSLT,
            fallback=fallback,
            fp8=True,
        )
    prune, how = _prune_site(site, config, fp8=True)
    return Decision(True, GemmPath.CUSPARSELT, f"{_why_selected(decision)}; fp8, {how}", prune=prune, fp8=True)


def _not_fp8(decision: Decision, why: str) -> Decision:
    _warn_once(why)
    return dataclasses.replace(decision, reason=f"{decision.reason}; {why}")


@functools.cache
def _warn_once(why: str) -> None:
    log.warning("lynx: %s", why)


def _why_selected(decision: Decision) -> str:
    return decision.reason.split("; ")[0]


def _sparse_path(site: GemmSite, config: LynxConfig) -> Decision:
    """The 16-bit path the GEMM may take (dense, with the reason, when it may not be sparse)."""
    selected, why = config.select_by_name(site.name)
    if not selected:
        return Decision.dense(why)
    if not config.allows_dtype(site.dtype):
        return Decision.dense(f"dtype {dtype_name(site.dtype)} not in option dtypes={list(config.dtypes)}")
    if site.k % GROUP:
        return Decision.dense(f"K={site.k} is not a multiple of 4")
    if site.m < config.min_rows:
        dyn = " (hint of a dynamic size)" if site.dynamic_m else ""
        return Decision.dense(f"M={site.m}{dyn} < min_rows={config.min_rows}")
    if site.device.type != "cuda":
        return _reference(why, f"{site.device.type} has no sparse tensor cores")
    if config.path == "reference":
        return _reference(why, "option path='reference'")
    ok, reason = cusparselt.sparse_tensor_cores_available(site.device)
    if not ok:
        return _reference(why, reason)
    if site.dtype not in SPARSE_DTYPES:
        return _reference(why, f"no 2:4 kernel for {dtype_name(site.dtype)}")
    if site.k % CSLT_MULTIPLE or site.n % 8:
        return Decision.dense(f"K={site.k}, N={site.n}: cuSPARSELt needs K % 16 == 0 and N % 8 == 0")
    if not self_check.fast_compress_ok(site.device, site.dtype, norms=config.compensate):  # checked once, warns once
        kernel = "Triton kernel with norm sums" if config.compensate else "Triton layout"
        fallback = f"{kernel} self-check failed"
        return Decision(
            True,
            GemmPath.CUSPARSELT_COMPAT,
            f"{why}; compression by torch._cslt_compress ({fallback})",
            prune=PruneSite.CSLT,
            fallback=fallback,
        )
    prune, how = _prune_site(site, config)
    return Decision(True, GemmPath.CUSPARSELT, f"{why}; {how}", prune=prune)


def _reference(why: str, fallback: str) -> Decision:
    return Decision(
        True, GemmPath.REFERENCE, f"{why}; reference path: {fallback}", prune=PruneSite.TORCH, fallback=fallback
    )


def _prune_site(site: GemmSite, config: LynxConfig, fp8: bool = False) -> tuple[PruneSite, str]:
    """(fused | triton, why): in Inductor's template with the producer as its prologue where it can. ``fp8``:
    the e4m3 template, which sums no norms: with ``compensate`` the graph's norm sums read x too, so the
    producer is written anyway."""
    kernel = "prune+quantise+compress" if fp8 else "prune+compress"
    standalone = f"standalone Triton {kernel}"
    if not config.fuse_producers:
        return PruneSite.TRITON, f"{standalone} (fuse_producers=False)"
    if config.permute_channels:
        return PruneSite.TRITON, f"{standalone} (permute_channels=True: the kernel permutes the channel order)"
    if config.compensate and fp8:
        return PruneSite.TRITON, f"{standalone} (compensate=True: the norm sums read x in a kernel of their own)"
    if config.compensate and site.k % NORM_CHUNK:  # the template sums whole chunks in a tile
        return PruneSite.TRITON, (
            f"{standalone} (compensate=True: K={site.k} % {NORM_CHUNK} != 0, the template "
            f"sums the row norms per {NORM_CHUNK} columns)"
        )
    if not (eligible_fp8 if fp8 else eligible)(padded_rows(site.m), site.k, site.dtype):
        return PruneSite.TRITON, f"{standalone} (K={site.k} % 32 != 0: not lowered)"
    fusable, producer = fusable_producer(site.x)
    if not fusable:
        return PruneSite.TRITON, f"{standalone} (activation is a {producer}: nothing to fuse)"
    return PruneSite.FUSED, f"{kernel} in Inductor's template, the producer ({producer}) fused in as its prologue"
