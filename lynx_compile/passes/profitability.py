"""Is the sparse GEMM faster? cuSPARSELt's fastest algorithm per shape, and the cost model.

Both time on the GPU at compile time (``codegen.tuning``, cached on disk). The cost model looks at
all the GEMMs that read one activation together: they share its prune+compress (q, k and v;
FLUX's single-stream q, k, v and MLP projections), so it is charged once to the group, not once
per GEMM (docs/design.md, "Cost model").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ..codegen import tuning
from ..codegen.cusparselt_layout import padded_rows
from .decision import Decision, activation_groups
from .gemms import GemmSite


def with_alg(site: GemmSite, decision: Decision) -> Decision:
    """The fastest cuSPARSELt algorithm for the GEMM (timed once per shape, cached)."""
    if not decision.path.on_cusparselt:
        return decision
    alg = tuning.best_alg(padded_rows(site.m), decision.gemm_k(site.k), site.n, site.dtype, site.device, decision.fp8)
    return dataclasses.replace(decision, alg_id=alg)


def apply_cost_model(
    sites: Sequence[GemmSite], decisions: list[Decision], min_speedup: float, compensate: bool = False
) -> list[Decision]:
    """Keep dense what would not gain ``min_speedup`` from going sparse, by measured times
    (with ``compensate``, of the prune+compress that also sums the norms).

    GEMMs reading the same activation by the same compression share one prune+compress. In each
    such group the GEMMs whose sparse product alone gains ``min_speedup`` go sparse together if the
    group, prune+compress included, still gains it; the others stay dense. (Adding a GEMM whose own
    ratio clears the bar can only raise the group's ratio toward it, and always saves time.)
    """
    out = list(decisions)
    for members in activation_groups(sites, decisions).values():
        costs = {i: _costs(sites[i], decisions[i], compensate) for i in members}
        gaining = [i for i in members if costs[i].dense_ms / costs[i].sparse_gemm_ms >= min_speedup]
        prune_ms = costs[members[0]].prune_ms  # same activation: same (M, K)
        dense_ms = sum(costs[i].dense_ms for i in gaining)
        sparse_ms = prune_ms + sum(costs[i].sparse_gemm_ms for i in gaining)
        group_ok = bool(gaining) and dense_ms / sparse_ms >= min_speedup
        several = len(gaining) > 1
        shared = f", prune+compress shared by {len(gaining)} GEMMs: {dense_ms / sparse_ms:.2f}x" if several else ""
        for i in members:
            c, d = costs[i], decisions[i]
            gemm = c.dense_ms / c.sparse_gemm_ms
            if i not in gaining:
                reason = (
                    f"cost model: sparse GEMM {c.sparse_gemm_ms:.3f} ms vs dense {c.dense_ms:.3f} ms = "
                    f"{gemm:.2f}x < min_speedup={min_speedup:g}"
                )
            elif not group_ok:
                reason = (
                    f"cost model: prune+compress {prune_ms:.3f} ms + sparse GEMM{'s' if several else ''} "
                    f"{sparse_ms - prune_ms:.3f} ms vs dense {dense_ms:.3f} ms = {dense_ms / sparse_ms:.2f}x "
                    f"< min_speedup={min_speedup:g}"
                )
            else:
                alone = c.dense_ms / (prune_ms + c.sparse_gemm_ms)
                out[i] = dataclasses.replace(
                    d, reason=f"{d.reason}; cost model: {alone:.2f}x (GEMM {gemm:.2f}x{shared})"
                )
                continue
            out[i] = Decision.dense(reason)
    return out


def charge_branches(
    sites: Sequence[GemmSite],
    decisions: Sequence[Decision],
    ranks: Mapping[str, int],
    min_speedup: float,
    compensate: bool = False,
) -> list[Decision]:
    """The cost model once more for the activations whose sparse GEMMs add a low-rank branch (option
    ``low_rank``; ``ranks``: each such GEMM's R, A's columns), charged with the branch as it will run:
    fused (``Decision.low_rank_columns``), the compression that also computes ``x A`` and GEMMs 2R columns
    longer; unfused, ``x A`` once (the group's GEMMs share A) and ``u B`` per GEMM on cuBLAS. A group that
    no longer gains ``min_speedup`` stays dense, its branches with it: on the H100 the fused branch costs
    1.06-1.28x the plain sparse layer (docs/performance.md), more than 2:4 saves on many shapes."""
    out = list(decisions)
    for members in activation_groups(sites, decisions).values():
        branched = [i for i in members if sites[i].name in ranks]
        if not branched:
            continue
        fused, rank = decisions[members[0]].low_rank_columns, ranks[sites[branched[0]].name]
        if fused:
            costs = [_costs(sites[i], decisions[i], compensate, fused // 2) for i in members]
            branch_ms, prune_ms = 0.0, costs[0].prune_ms
        else:
            costs = [_costs(sites[i], decisions[i], compensate) for i in members]
            readers = [sites[i] for i in branched]
            branch = [tuning.measure_branch(s.m, s.k, s.n, rank, s.dtype, s.device) for s in readers]
            prune_ms = costs[0].prune_ms + branch[0].prune_ms
            branch_ms = sum(b.sparse_gemm_ms for b in branch)
        dense_ms = sum(c.dense_ms for c in costs)
        sparse_ms = prune_ms + branch_ms + sum(c.sparse_gemm_ms for c in costs)
        ratio = dense_ms / sparse_ms
        form = "fused" if fused else "unfused"
        measured = (
            f"cost model with the rank-{rank} branch ({form}): {sparse_ms:.3f} ms vs dense {dense_ms:.3f} ms = "
            f"{ratio:.2f}x"
        )
        for i in members:
            if ratio >= min_speedup:
                out[i] = dataclasses.replace(out[i], reason=f"{out[i].reason}; {measured}")
            else:
                out[i] = Decision.dense(f"{measured} < min_speedup={min_speedup:g}")
    return out


def time_saved(
    sites: Sequence[GemmSite], decisions: Sequence[Decision], measured: bool, compensate: bool = False
) -> tuple[dict[int, float], str]:
    """What each sparse decision saves, and the unit: where every sparse GEMM is on cuSPARSELt and ``measured``
    (timing allowed), the cost model's measured dense minus sparse time, the shared prune+compress split
    evenly over its group ("ms"); otherwise (the reference path, no timing) a proxy, the half of the GEMM's
    FLOPs that 2:4 skips ("GFLOP")."""
    sparse = [i for i, d in enumerate(decisions) if d.sparse]
    if not measured or not all(decisions[i].path.on_cusparselt for i in sparse):
        return {i: sites[i].flops / 2e9 for i in sparse}, "GFLOP"
    saved: dict[int, float] = {}
    for members in activation_groups(sites, decisions).values():
        for i in members:
            c = _costs(sites[i], decisions[i], compensate)
            saved[i] = c.dense_ms - c.sparse_gemm_ms - c.prune_ms / len(members)
    return saved, "ms"


def _costs(site: GemmSite, decision: Decision, compensate: bool, low_rank: int = 0) -> tuning.Costs:
    """The measured dense, prune+compress and sparse GEMM times of this GEMM as ``decision`` would run it
    (``low_rank``: with a fused branch of that many columns of A)."""
    return tuning.measure_costs(
        padded_rows(site.m),
        site.k,
        site.n,
        site.dtype,
        decision.alg_id,
        site.device,
        decision.fold_bias,
        compensate,
        decision.fp8,
        low_rank,
    )
