"""Option ``error_budget``: which GEMMs go sparse so that the graph's output stays within a relative error
budget for the most time saved.

1. Sensitivity: each candidate GEMM pruned *alone*, the graph run on real inputs, the relative L2 error of
   its output against the dense run. A GEMM's own ``rel_err`` does not say how much of its error reaches
   the output (a gated residual shrinks it, a norm or attention softmax may amplify it): this measures it.
2. A 0/1 knapsack: maximise the time saved subject to the summed sensitivities <= the budget (errors of
   independent layers add roughly in quadrature, so the sum is a conservative estimate).
3. Verification: the chosen GEMMs pruned together; while the measured output error is over the budget,
   the chosen GEMM with the worst sensitivity per time saved goes back to dense.

Fragile layers are found from these measurements, never from their names. The inputs are any calls of the
graph: the compiling call's (the backend), or a calibration set's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from ..semantics import pruning, refit_weight
from .decision import Decision
from .errors import GemmInterpreter
from .gemms import GemmSite

log = logging.getLogger("lynx_compile")

KNAPSACK_NODES = 1_000_000  # branch-and-bound nodes before the best packing found so far is taken (logged)


class _PruningInterpreter(GemmInterpreter):
    """Runs ``gm`` with the GEMMs named in ``pruned`` on pruned activations (the reference semantics; ``orders``:
    the channel orders of option ``permute_channels``; ``refits``: the maps G of option ``refit``)."""

    def __init__(
        self,
        gm: fx.GraphModule,
        sites: Iterable[GemmSite],
        pruned: Collection[str],
        compensate: bool,
        orders: Mapping[str, torch.Tensor],
        refits: Mapping[str, torch.Tensor],
    ) -> None:
        super().__init__(gm, [site for site in sites if site.name in pruned])
        self.compensate, self.orders, self.refits = compensate, orders, refits

    def run_node(self, node: fx.Node) -> Any:
        site = self.sites.get(node)
        if site is None:
            return super().run_node(node)
        x, weight, bias = self.operands(site)
        g = self.refits.get(site.name)
        weight = weight if g is None else refit_weight(weight, g)
        return F.linear(pruning(self.compensate, self.orders.get(site.name))(x), weight, bias)


class OutputError:
    """The relative L2 error of a graph's floating outputs, over a set of input calls, when a given set of its
    GEMMs runs on pruned activations: ``||Y_pruned - Y_dense|| / ||Y_dense||`` over all calls and outputs."""

    def __init__(
        self,
        gm: fx.GraphModule,
        sites: Sequence[GemmSite],
        inputs: Iterable[Sequence[Any]],
        compensate: bool,
        orders: Mapping[str, torch.Tensor] | None = None,
        refits: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.gm, self.sites, self.compensate = gm, list(sites), compensate
        self.orders, self.refits = orders or {}, refits or {}
        self.inputs = [tuple(call) for call in inputs]
        if not self.inputs:
            raise ValueError("error_budget: no inputs to measure the output error on")
        self.dense = [self._outputs(call, ()) for call in self.inputs]
        self.runs = 0  # graph runs with pruning, for the report
        self.verified: tuple[float, int] | None = None  # the output error with every chosen GEMM pruned, and how many

    def _outputs(self, call: tuple[Any, ...], pruned: Collection[str]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = _PruningInterpreter(self.gm, self.sites, pruned, self.compensate, self.orders, self.refits).run(*call)
        flat = torch.utils._pytree.tree_leaves(out)
        return [t.detach().float() for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]

    def __call__(self, pruned: Collection[str]) -> float:
        if not pruned:
            return 0.0
        self.runs += 1
        err_sq = out_sq = 0.0
        for call, dense in zip(self.inputs, self.dense, strict=True):
            for p, d in zip(self._outputs(call, pruned), dense, strict=True):
                err_sq += (p - d).square().sum().item()
                out_sq += d.square().sum().item()
        return (err_sq / out_sq) ** 0.5 if out_sq > 0 else float(err_sq > 0)


def knapsack(
    weights: Sequence[float], values: Sequence[float], capacity: float, max_nodes: int = KNAPSACK_NODES
) -> tuple[set[int], bool]:
    """The items (indices) of largest total value whose weights sum to at most ``capacity``, and whether the
    answer is proven optimal. Exact branch and bound (items by value per weight, the fractional
    relaxation as the bound); weights and values are non-negative reals. After ``max_nodes`` nodes it
    returns the best packing found (``False``)."""
    n = len(weights)
    if len(values) != n:
        raise ValueError(f"knapsack: {n} weights for {len(values)} values")
    free = [i for i in range(n) if weights[i] <= 0 and values[i] > 0]
    items = sorted(
        (i for i in range(n) if weights[i] > 0 and values[i] > 0 and weights[i] <= capacity),
        key=lambda i: values[i] / weights[i],
        reverse=True,
    )
    best_value, best = -1.0, []
    nodes = 0

    def bound(j: int, room: float, value: float) -> float:
        for i in items[j:]:
            if weights[i] <= room:
                room -= weights[i]
                value += values[i]
            else:
                return value + values[i] * room / weights[i]
        return value

    stack: list[tuple[int, float, float, list[int]]] = [(0, capacity, 0.0, [])]
    while stack:
        nodes += 1
        if nodes > max_nodes:
            break
        j, room, value, taken = stack.pop()
        if value > best_value:
            best_value, best = value, taken
        if j == len(items) or bound(j, room, value) <= best_value:
            continue
        i = items[j]
        stack.append((j + 1, room, value, taken))  # without item i (explored after with it)
        if weights[i] <= room:
            stack.append((j + 1, room - weights[i], value + values[i], [*taken, i]))
    return set(free) | set(best), nodes <= max_nodes


@dataclasses.dataclass(frozen=True)
class _Candidate:
    index: int
    name: str
    sensitivity: float
    saved: float

    @property
    def ratio(self) -> float:  # error per time saved: the worst goes back to dense first
        return self.sensitivity / self.saved if self.saved > 0 else float("inf")


def within_output_budget(
    sites: Sequence[GemmSite],
    decisions: list[Decision],
    budget: float,
    output_error: OutputError | None,
    saved: Mapping[int, float],
    unit: str,
) -> list[Decision]:
    """Option ``error_budget``: the sparse decisions the knapsack and the verification keep, the others dense
    with their sensitivity and the budget as the reason. ``saved``: each sparse decision's time saved
    (``unit``: what it is measured in, for the reasons)."""
    out = list(decisions)
    sparse = [i for i, d in enumerate(decisions) if d.sparse]
    if output_error is None:
        for i in sparse:
            out[i] = Decision.dense(f"error_budget={budget:g}: output error not measured")
        return out
    candidates = [_Candidate(i, sites[i].name, output_error({sites[i].name}), saved[i]) for i in sparse]
    picked, optimal = knapsack([c.sensitivity for c in candidates], [c.saved for c in candidates], budget)
    if not optimal:
        log.warning(
            "lynx: error_budget: the knapsack over %d GEMMs stopped after %d nodes; its best packing so far is used",
            len(candidates),
            KNAPSACK_NODES,
        )
    chosen = [c for j, c in enumerate(candidates) if j in picked]
    total = sum(c.sensitivity for c in chosen)
    dropped: dict[int, float] = {}  # index -> the output error measured while it was still in
    error = output_error({c.name for c in chosen})
    while error > budget and chosen:
        worst = max(chosen, key=lambda c: c.ratio)
        chosen.remove(worst)
        dropped[worst.index] = error
        error = output_error({c.name for c in chosen})
    output_error.verified = (error, len(chosen))
    kept = {c.index for c in chosen}
    for c in candidates:
        d = decisions[c.index]
        tag = f"output sensitivity {c.sensitivity:.4g}, saves {c.saved:.4g} {unit}"
        if c.index in kept:
            out[c.index] = dataclasses.replace(
                d,
                reason=f"{d.reason}; {tag}; output error of all "
                f"{len(chosen)} chosen {error:.4g} <= error_budget={budget:g}",
            )
        elif c.index in dropped:
            out[c.index] = Decision.dense(
                f"error_budget={budget:g}: {tag}; dropped after verification: output "
                f"error {dropped[c.index]:.4g} with it > budget"
            )
        else:
            out[c.index] = Decision.dense(
                f"error_budget={budget:g}: {tag}; not picked by the knapsack (picked sensitivities sum to {total:.4g})"
            )
    return out
