"""Decide, per GEMM, whether it runs on 2:4 activations and on which path, and say why.

The steps, each of which may keep a GEMM dense with its reason for the report: ``legality`` (names,
dtype, shape, what the device and the kernels can do: the path and where the pruning runs); the
error budget (option ``max_layer_error``, on measured pruning errors); option ``fold_bias``;
``profitability`` (on the GPU: cuSPARSELt's fastest algorithm, then the cost model); and the output error
budget (option ``error_budget``: ``sensitivity``, a knapsack over measured output errors against the time
saved that ``profitability`` gives). Inductor's
``pad_mm`` keeps its ``can_pad`` and ``should_pad`` apart the same way (docs/design.md, "Legality
and profitability").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ..config import LynxConfig
from . import legality, profitability, sensitivity
from .decision import Decision
from .errors import PruningError
from .fold_bias import fold_biases
from .gemms import GemmSite


def plan(
    sites: Sequence[GemmSite],
    config: LynxConfig,
    *,
    measure: bool = True,
    errors: Mapping[str, PruningError] | None = None,
    output_error: sensitivity.OutputError | None = None,
) -> list[Decision]:
    """One decision per site. ``measure=False`` skips the timing on the GPU (algorithm search, cost
    model): inspection of the semantics only. ``errors``: each GEMM's measured pruning error, which
    option ``max_layer_error`` needs; ``output_error``: the graph's output error for a set of pruned GEMMs,
    which option ``error_budget`` needs."""
    decisions = [legality.can_sparsify(site, config) for site in sites]
    if config.max_layer_error is not None:
        decisions = [
            within_error_budget(site, d, config.max_layer_error, errors or {})
            for site, d in zip(sites, decisions, strict=True)
        ]
    if config.fold_bias:  # never with compensate (LynxConfig refuses it): a per-row scale must not scale the bias
        decisions = fold_biases(sites, decisions)
    if measure:
        decisions = [profitability.with_alg(site, d) for site, d in zip(sites, decisions, strict=True)]
        if config.cost_model:
            decisions = profitability.apply_cost_model(sites, decisions, config.min_speedup, config.compensate)
    if config.error_budget is not None:
        # without the cost model nothing is timed: its FLOP proxy, as on the reference path (on a small model
        # measured time would call every GEMM a loss and keep all of them dense, whatever the budget)
        saved, unit = profitability.time_saved(sites, decisions, measure and config.cost_model, config.compensate)
        decisions = sensitivity.within_output_budget(sites, decisions, config.error_budget, output_error, saved, unit)
    return decisions


def within_error_budget(
    site: GemmSite, decision: Decision, budget: float, errors: Mapping[str, PruningError]
) -> Decision:
    """Option ``max_layer_error``: a GEMM whose own output pruning changes by more than ``budget``
    (relative L2, on the inputs of the call that compiled it) stays dense, as does one that was not measured."""
    if not decision.sparse:
        return decision
    error = errors.get(site.name)
    if error is None:
        return Decision.dense(f"max_layer_error={budget:g}: pruning error not measured")
    if error.rel_err > budget:
        return Decision.dense(f"pruning error {error.rel_err:.4f} > max_layer_error={budget:g}")
    return dataclasses.replace(decision, reason=f"{decision.reason}; pruning error {error.rel_err:.4f} <= {budget:g}")
