"""Rewrite the selected GEMMs; each activation is pruned (or compressed) once for all its GEMMs.

    linear(x, W, b)    ->   c = compress_activation(x, method)         # once per x and method
                            sparse_linear(c, x, W, alg_id[, scale]) + b
    x @ W              ->   ... sparse_linear(c, x, W.t(), ...)       # W stored (K, N): a view
    bias folded        ->   c = compress_activation(x, method, ones_column=True)
                            sparse_linear(c, x, Wb, alg_id)           # Wb = [W | b | 0...], a buffer
    reference path     ->   p = prune_2to4(x); reference_linear(p, W[, scale]) + b
    permute_channels   ->   c = compress_activation(x, method, ..., order)   # the kernel gathers x[:, order]
                            ... Wo = W[:, order] (a buffer, with b and B^T columns as above; fp8: quantised)
                            fused low rank, fp8 compensated, reference path: xo = x[..., order] in the graph
    refit              ->   ... sparse_linear(c, x, Wg, alg_id)       # Wg = W G^T (a buffer; before the order)
    low_rank           ->   u = x @ A                                 # once per x and A (q, k, v share A)
                            ... + u @ B                               # A and B buffers
    ... fused          ->   c = compress_activation_low_rank(x, A[, ones_column=True])   # A: the group's, a buffer
                            sparse_linear(c, x, Wl, alg_id)           # Wl = [W | spread(B^T) [| b | 0...]]

With ``compensate``, ``compress_activation_compensated`` also returns the per-row scale, from sums
of squares the prune+compress kernel writes on its pass over x.

    precision="fp8"    ->   c, sx = compress_activation_fp8(x, method)      # once per x
                            sparse_linear_fp8(c, sx, x, Wq, sw, alg_id[, scale]) + b   # Wq, sw: buffers
    ... reference path ->   q, sx = quantise_fp8_rows(prune_2to4(x))         # once per x
                            reference_linear_fp8(q, sx, x, Wq, sw[, scale]) + b

(the fp8 kernel sums no norms: with ``compensate`` the scale is ``compensation_scale`` in the graph).

``compress_activation``, ``sparse_linear``, ``prune_2to4`` and ``compensation_scale`` are plain Python over
torch ops and ``torch.ops.lynx.*``: AOTAutograd traces through them, so Inductor sees (and fuses)
the pruning of the reference path, the reshapes, the compensation scale and the bias add.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from .. import ops
from ..report import GemmPath, PruneSite
from ..semantics import compensation_scale, prune_2to4, quantise_fp8_rows
from .decision import Decision
from .fold_bias import FoldedWeights, register_constant
from .gemms import GemmSite
from .low_rank import Factors, fused_factors


def sparsify(
    gm: fx.GraphModule,
    plan: list[tuple[GemmSite, Decision]],
    *,
    compensate: bool,
    folds: FoldedWeights | None = None,
    example_inputs: Sequence[Any] = (),
    branches: Factors | None = None,
    orders: Mapping[str, torch.Tensor] | None = None,
    refits: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Rewrite in place; returns the number of GEMMs rewritten. Decisions with ``fold_bias`` or ``fp8``
    need ``folds`` (where the weight copies go) and the graph's real ``example_inputs`` (to make them).
    ``branches``: the low-rank factors (A, B) of GEMMs that add ``(x A) B`` (option ``low_rank``): in the
    sparse GEMM where the decision says so (``low_rank_columns``, which needs ``folds`` too), else in the graph.
    ``orders``: the channel orders of option ``permute_channels`` by GEMM name (needs ``folds``: the weights'
    copies with their columns in order); GEMMs that read one activation share its order. ``refits``: the maps G
    of option ``refit`` by GEMM name (needs ``folds``: the refitted weights ``W G^T`` are copies)."""
    graph = gm.graph
    fused = fused_factors([s for s, _ in plan], [d for _, d in plan], branches or {})
    replaced: dict[fx.Node, fx.Node] = {}  # a GEMM output that an earlier rewrite replaced
    # (x, prune site, bias folded, fp8) -> (operand, fp8 row scales, scale): one compression per activation, kind
    shared: dict[tuple[fx.Node, PruneSite, bool, bool], tuple[fx.Node, fx.Node | None, fx.Node | None]] = {}
    projected: dict[tuple[fx.Node, int], fx.Node] = {}  # (x, id of A) -> x A, for unfused branches
    order_nodes: dict[fx.Node, fx.Node] = {}  # x -> its order, a buffer
    in_order: dict[fx.Node, fx.Node] = {}  # x -> x[..., order], a gather in the graph
    orders, refits = orders or {}, refits or {}
    rewritten = 0
    for site, decision in plan:
        if not decision.sparse:
            continue
        node = site.node
        x = replaced.get(site.x, site.x)
        bias = replaced.get(site.bias, site.bias)
        order, g = orders.get(site.name), refits.get(site.name)
        with graph.inserting_before(node):  # sites come in graph order: the first user of x
            xo, gather = x, None  # the activation in the GEMM's channel order, or x and the order the kernel gathers
            if order is not None:
                if x not in order_nodes:
                    name = register_constant(gm, f"_lynx_channel_order_{rewritten}", order)
                    order_nodes[x] = graph.get_attr(name)
                if decision.order_in_kernel:
                    gather = order_nodes[x]
                else:
                    if x not in in_order:
                        in_order[x] = graph.call_function(torch.index_select, (x, -1, order_nodes[x]))
                    xo = in_order[x]
            key = (x, decision.prune, decision.fold_bias, decision.fp8)
            if key not in shared:
                a = None
                if decision.low_rank_columns:  # the group's A (its rows in order): one x A for all its GEMMs
                    fused_a = fused[site.name][0]
                    fused_a = fused_a if order is None else fused_a.index_select(0, order)
                    a = graph.get_attr(register_constant(gm, f"_lynx_low_rank_{rewritten}_a", fused_a))
                shared[key] = _prepare(graph, xo, decision, compensate, a, gather)
            operand, x_scale, scale = shared[key]
            extra = () if scale is None else (scale,)
            if decision.fp8:
                assert folds is not None, "fp8 decisions need a FoldedWeights"
                wq, w_scale = (graph.get_attr(name) for name in folds.add_fp8(site, example_inputs, order, g))
                if decision.path == GemmPath.REFERENCE:
                    out = graph.call_function(ops.reference_linear_fp8, (operand, x_scale, xo, wq, w_scale, *extra))
                else:
                    out = graph.call_function(
                        ops.sparse_linear_fp8, (operand, x_scale, xo, wq, w_scale, decision.alg_id, *extra)
                    )
            else:
                if decision.fold_bias or decision.low_rank_columns or order is not None or g is not None:
                    assert folds is not None, (
                        "fold_bias, fused low-rank, ordered and refitted decisions need a FoldedWeights"
                    )
                    branch = fused[site.name][1] if decision.low_rank_columns else None
                    weight = graph.get_attr(folds.add(site, example_inputs, decision.fold_bias, branch, order, g))
                    bias = None if decision.fold_bias else bias
                elif site.weight_is_nk:
                    weight = site.weight
                else:
                    weight = graph.call_function(torch.t, (site.weight,))
                if decision.path == GemmPath.REFERENCE:
                    out = graph.call_function(ops.reference_linear, (operand, weight, *extra))
                else:
                    out = graph.call_function(ops.sparse_linear, (operand, xo, weight, decision.alg_id, *extra))
            if bias is not None:
                out = graph.call_function(torch.add, (out, bias))
            if branches and site.name in branches and not decision.low_rank_columns:
                a, b = branches[site.name]
                if (x, id(a)) not in projected:  # one x A per activation and A: GEMMs that read x share A
                    a_node = graph.get_attr(register_constant(gm, f"_lynx_low_rank_{rewritten}_a", a))
                    projected[(x, id(a))] = graph.call_function(torch.matmul, (x, a_node))
                b_node = graph.get_attr(register_constant(gm, f"_lynx_low_rank_{rewritten}_b", b))
                u_b = graph.call_function(torch.matmul, (projected[(x, id(a))], b_node))
                out = graph.call_function(torch.add, (out, u_b))
        out.meta.update(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        replaced[node] = out
        rewritten += 1
    graph.eliminate_dead_code()  # transposes that only fed a rewritten GEMM
    graph.lint()
    gm.recompile()
    return rewritten


def _prepare(
    graph: fx.Graph,
    x: fx.Node,
    decision: Decision,
    compensate: bool,
    a: fx.Node | None = None,
    order: fx.Node | None = None,
) -> tuple[fx.Node, fx.Node | None, fx.Node | None]:
    """The pruned (reference) or compressed (cuSPARSELt) activation, or its fp8 quantisation with its
    row scales, and the compensation scale. ``a``: fused low-rank branches' A, whose columns the
    compression appends (never with fp8 or compensation). ``order``: the channel order the kernel gathers x
    in (``Decision.order_in_kernel``)."""
    if decision.path == GemmPath.REFERENCE:
        pruned = graph.call_function(prune_2to4, (x,))
        scale = graph.call_function(compensation_scale, (x, pruned)) if compensate else None
        if decision.fp8:  # quantised once for every GEMM reading x, as on the GPU (design.md, "FP8")
            pair = graph.call_function(quantise_fp8_rows, (pruned,))
            return (
                graph.call_function(operator.getitem, (pair, 0)),
                graph.call_function(operator.getitem, (pair, 1)),
                scale,
            )
        return pruned, None, scale
    if decision.fp8:
        pair = graph.call_function(ops.compress_activation_fp8, (x, decision.prune.value, order))
        scale = None
        if compensate:  # the fp8 kernel sums no norms: Inductor computes them in a kernel of its own
            scale = graph.call_function(compensation_scale, (x, graph.call_function(prune_2to4, (x,))))
            scale = graph.call_function(torch.ops.lynx.per_row.default, (scale,))  # the OpOverload: FX names it
        return (
            graph.call_function(operator.getitem, (pair, 0)),
            graph.call_function(operator.getitem, (pair, 1)),
            scale,
        )
    if compensate:  # the kernel sums the norms on its pass over x (a folded bias is never compensated)
        pair = graph.call_function(ops.compress_activation_compensated, (x, decision.prune.value, order))
        return (
            graph.call_function(operator.getitem, (pair, 0)),
            None,
            graph.call_function(operator.getitem, (pair, 1)),
        )
    if a is not None:
        return graph.call_function(ops.compress_activation_low_rank, (x, a, decision.fold_bias)), None, None
    compressed = graph.call_function(ops.compress_activation, (x, decision.prune.value, decision.fold_bias, order))
    return compressed, None, None
