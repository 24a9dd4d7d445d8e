"""Rewrite each selected GEMM into ``lynx::sparse_linear`` (+ the bias, added in the graph).

    linear(x, W, b)   ->   add(sparse_linear(x, W, path, alg_id, compensate), b)
    x @ W             ->   sparse_linear(x, W.t(), ...)          # W stored (K, N): a view, no copy
    addmm(b, x, W.t()) ->  add(sparse_linear(x, W, ...), b)

The bias stays a plain ``add`` so Inductor fuses it into whatever consumes the GEMM's output.
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops  # noqa: F401  (registers torch.ops.lynx)
from .gemms import GemmSite
from .policy import Decision


def sparsify(gm: fx.GraphModule, plan: list[tuple[GemmSite, Decision]], *, compensate: bool) -> int:
    """Rewrite in place; returns the number of GEMMs rewritten."""
    graph = gm.graph
    replaced: dict[fx.Node, fx.Node] = {}  # a GEMM output that an earlier rewrite replaced
    rewritten = 0
    for site, decision in plan:
        if not decision.sparse:
            continue
        node = site.node
        x = replaced.get(site.x, site.x)
        bias = replaced.get(site.bias, site.bias)
        with graph.inserting_before(node):
            weight = site.weight if site.weight_is_nk else graph.call_function(torch.t, (site.weight,))
            out = graph.call_function(
                torch.ops.lynx.sparse_linear.default, (x, weight, decision.path, decision.alg_id, compensate)
            )
            if bias is not None:
                out = graph.call_function(torch.add, (out, bias))
        out.meta.update(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        replaced[node] = out
        rewritten += 1
    graph.eliminate_dead_code()  # transposes that only fed a rewritten GEMM
    graph.lint()
    gm.recompile()
    return rewritten
