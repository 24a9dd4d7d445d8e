"""Decide, per GEMM, whether it runs on 2:4 activations and on which path, and say why.

Checks run in order and the first that keeps a GEMM dense gives the reason shown in the report:
name rules, dtype, K % 4, ``min_rows``; then, on CUDA, what the device can do (sparse tensor cores,
K % 16, the Triton kernel's self-check); the error budget (option ``max_layer_error``, on measured
pruning errors); and last the cost model, which looks at all the GEMMs that
read one activation together: they share its prune+compress (q, k and v; FLUX's single-stream
q, k, v and MLP projections), so it is charged once to the group, not once per GEMM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from ..accuracy import PruningError
from ..codegen.reference import BIAS_COLUMNS
from ..config import LynxConfig, dtype_name
from .fold_bias import costly_bias_add
from .gemms import GemmSite
from .producers import fusable_producer

FAST_DTYPES = (torch.bfloat16, torch.float16)
_STORED = ("placeholder", "get_attr")  # a parameter or buffer: what a folded weight copy can be made from
SPARSE_K_ALIGN = 16  # cuSPARSELt refuses structured matrices whose columns are not a multiple of 16


@dataclasses.dataclass(frozen=True)
class Decision:
    sparse: bool
    path: str  # "dense" or one of lynx_compile.ops.PATHS
    reason: str
    alg_id: int = 0
    compress: str = ""  # cuSPARSELt paths: one of lynx_compile.ops.METHODS
    fold_bias: bool = False  # the bias is added inside the sparse GEMM (``passes/fold_bias.py``)

    def gemm_k(self, k: int) -> int:
        """K of the sparse GEMM: a folded bias adds BIAS_COLUMNS."""
        return k + BIAS_COLUMNS if self.fold_bias else k


def plan(sites: Sequence[GemmSite], config: LynxConfig, *, measure: bool = True,
         errors: Mapping[str, PruningError] | None = None) -> list[Decision]:
    """One decision per site. ``measure=False`` skips the timing on the GPU (algorithm search, cost
    model): inspection of the semantics only. ``errors``: each GEMM's measured pruning error, which
    option ``max_layer_error`` needs."""
    decisions = [decide(site, config) for site in sites]
    if config.max_layer_error is not None:
        decisions = [within_error_budget(site, d, config.max_layer_error, errors or {}) for site, d in zip(sites, decisions)]
    if config.fold_bias:  # never with compensate (LynxConfig refuses it): a per-row scale must not scale the bias
        decisions = fold_biases(sites, decisions)
    if not measure:
        return decisions
    decisions = [_with_alg(site, d) for site, d in zip(sites, decisions)]
    return apply_cost_model(sites, decisions, config.min_speedup, config.compensate) if config.cost_model else decisions


def within_error_budget(site: GemmSite, decision: Decision, budget: float,
                        errors: Mapping[str, PruningError]) -> Decision:
    """Option ``max_layer_error``: a GEMM whose own output pruning changes by more than ``budget``
    (relative L2, on the inputs of the call that compiled it) stays dense, as does one that was not measured."""
    if not decision.sparse:
        return decision
    error = errors.get(site.name)
    if error is None:
        return Decision(False, "dense", f"max_layer_error={budget:g}: pruning error not measured")
    if error.rel_err > budget:
        return Decision(False, "dense", f"pruning error {error.rel_err:.4f} > max_layer_error={budget:g}")
    return dataclasses.replace(decision, reason=f"{decision.reason}; pruning error {error.rel_err:.4f} <= {budget:g}")


def decide(site: GemmSite, config: LynxConfig) -> Decision:
    """Every check but the cost model (which needs the whole graph's GEMMs: ``plan``)."""
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
    return _decide_cuda(site, config, why)


def _decide_cuda(site: GemmSite, config: LynxConfig, why: str) -> Decision:
    from ..codegen import cusparselt

    ok, reason = cusparselt.sparse_tensor_cores_available(site.device)
    if not ok:
        return Decision(True, "reference", f"{why}; reference path: {reason}")
    if site.dtype not in FAST_DTYPES:
        return Decision(True, "reference", f"{why}; reference path: no 2:4 kernel for {dtype_name(site.dtype)}")
    if site.k % SPARSE_K_ALIGN or site.n % 8:
        return Decision(False, "dense", f"K={site.k}, N={site.n}: cuSPARSELt needs K % 16 == 0 and N % 8 == 0")
    if not cusparselt.fast_compress_ok(site.device, site.dtype, norms=config.compensate):  # checked once, warns once
        path, compress = "cusparselt-compat", "cusparselt"
        kernel = "Triton kernel with norm sums" if config.compensate else "Triton layout"
        why = f"{why}; compression by torch._cslt_compress ({kernel} self-check failed)"
    else:
        path, (compress, how) = "cusparselt", _compress_method(site, config)
        why = f"{why}; {how}"
    return Decision(True, path, why, compress=compress)


def fold_biases(sites: Sequence[GemmSite], decisions: list[Decision]) -> list[Decision]:
    """Option ``fold_bias``: a GEMM takes its bias into the sparse GEMM when its output goes to a norm
    or attention (``fold_bias.costly_bias_add``) and the bias is a parameter (not computed in the
    graph). GEMMs sharing an activation fold one by one: the folded ones share its compression with
    the ones column, the others keep theirs without it (FLUX's single-stream ``proj_mlp`` feeds a
    GELU: a second prune of its input costs less than its GEMM at K + 64, up to 18% slower).
    Activations pruned in Inductor's template keep their bias adds: the template writes no ones
    column; nor do they fold where the Triton kernel's ones-column variant failed its self-check."""
    from ..codegen import cusparselt

    out = list(decisions)
    for (_, compress, _), members in _activation_groups(sites, decisions).items():
        if compress == "inductor":
            continue
        costly = {i: costly_bias_add(sites[i]) for i in members}
        folds = [i for i in members if costly[i] and sites[i].bias is not None and sites[i].bias.op in _STORED]
        site = sites[members[0]]
        if folds and compress == "triton" and not cusparselt.fast_compress_ok(site.device, site.dtype, ones_column=True):
            for i in folds:
                out[i] = dataclasses.replace(out[i], reason=f"{out[i].reason}; bias not folded: the Triton "
                                                            "kernel with a ones column failed its self-check")
            continue
        for i in members:
            if i in folds:
                note = f"bias folded into the sparse GEMM (an add would feed {costly[i]})"
            elif folds:
                note = f"bias not folded: its input compressed apart from the {len(folds)} folded GEMMs reading it"
            else:
                continue
            out[i] = dataclasses.replace(out[i], fold_bias=i in folds, reason=f"{out[i].reason}; {note}")
    return out


def _activation_groups(sites: Sequence[GemmSite], decisions: Sequence[Decision]) -> dict[tuple[object, ...], list[int]]:
    """The cuSPARSELt GEMMs by the activation (and compression) they share."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, (site, decision) in enumerate(zip(sites, decisions)):
        if decision.sparse and decision.path.startswith("cusparselt"):
            groups.setdefault((site.x, decision.compress, decision.fold_bias), []).append(i)
    return groups


def _with_alg(site: GemmSite, decision: Decision) -> Decision:
    """The fastest cuSPARSELt algorithm for the GEMM (timed once per shape, cached)."""
    from ..codegen import cusparselt
    from ..ops import padded_rows

    if not decision.path.startswith("cusparselt"):
        return decision
    k = decision.gemm_k(site.k)
    return dataclasses.replace(decision, alg_id=cusparselt.best_alg(padded_rows(site.m), k, site.n, site.dtype, site.device))


def apply_cost_model(sites: Sequence[GemmSite], decisions: list[Decision], min_speedup: float,
                     compensate: bool = False) -> list[Decision]:
    """Keep dense what would not gain ``min_speedup`` from going sparse, by measured times
    (with ``compensate``, of the prune+compress that also sums the norms).

    GEMMs reading the same activation by the same compression share one prune+compress. In each
    such group the GEMMs whose sparse product alone gains ``min_speedup`` go sparse together if the
    group, prune+compress included, still gains it; the others stay dense. (Adding a GEMM whose own
    ratio clears the bar can only raise the group's ratio toward it, and always saves time.)
    """
    from ..codegen import cusparselt
    from ..ops import padded_rows

    out = list(decisions)
    for members in _activation_groups(sites, decisions).values():
        costs = {i: cusparselt.measure_costs(padded_rows(sites[i].m), sites[i].k, sites[i].n, sites[i].dtype,
                                             decisions[i].alg_id, sites[i].device, decisions[i].fold_bias, compensate)
                 for i in members}
        gaining = [i for i in members if costs[i].dense_ms / costs[i].sparse_gemm_ms >= min_speedup]
        prune_ms = costs[members[0]].prune_ms  # same activation: same (M, K)
        dense_ms = sum(costs[i].dense_ms for i in gaining)
        sparse_ms = prune_ms + sum(costs[i].sparse_gemm_ms for i in gaining)
        group_ok = bool(gaining) and dense_ms / sparse_ms >= min_speedup
        shared = f", prune+compress shared by {len(gaining)} GEMMs: {dense_ms / sparse_ms:.2f}x" if len(gaining) > 1 else ""
        for i in members:
            c, d = costs[i], decisions[i]
            gemm = c.dense_ms / c.sparse_gemm_ms
            if i not in gaining:
                reason = (f"cost model: sparse GEMM {c.sparse_gemm_ms:.3f} ms vs dense {c.dense_ms:.3f} ms = "
                          f"{gemm:.2f}x < min_speedup={min_speedup:g}")
            elif not group_ok:
                reason = (f"cost model: prune+compress {prune_ms:.3f} ms + sparse GEMM{'s' if len(gaining) > 1 else ''} "
                          f"{sparse_ms - prune_ms:.3f} ms vs dense {dense_ms:.3f} ms = {dense_ms / sparse_ms:.2f}x "
                          f"< min_speedup={min_speedup:g}")
            else:
                alone = c.dense_ms / (prune_ms + c.sparse_gemm_ms)
                out[i] = dataclasses.replace(d, reason=f"{d.reason}; cost model: {alone:.2f}x (GEMM {gemm:.2f}x{shared})")
                continue
            out[i] = Decision(False, "dense", reason)
    return out


def _compress_method(site: GemmSite, config: LynxConfig) -> tuple[str, str]:
    """("inductor" | "triton", why): in Inductor's template with the producer as its prologue where it can."""
    from ..codegen.inductor_lowering import eligible
    from ..ops import padded_rows

    if not config.fuse_producers:
        return "triton", "standalone Triton prune+compress (fuse_producers=False)"
    if config.compensate:
        return "triton", "standalone Triton prune+compress (compensate=True: it also sums the row norms, the template does not)"
    if not eligible(padded_rows(site.m), site.k, site.dtype):
        return "triton", f"standalone Triton prune+compress (K={site.k} % 32 != 0: not lowered)"
    fusable, producer = fusable_producer(site.x)
    if not fusable:
        return "triton", f"standalone Triton prune+compress (activation is a {producer}: nothing to fuse)"
    return "inductor", f"prune+compress in Inductor's template, the producer ({producer}) fused in as its prologue"
