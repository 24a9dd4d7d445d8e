"""What pruning costs each GEMM, measured on real inputs: for ``inspect`` and option ``max_layer_error``.

An ``fx.Interpreter`` runs the graph as it is (dense) and, at every GEMM, also computes the output
on the pruned input from the *same dense input*, then carries on with the dense output: each GEMM's
error is its own, not the accumulation of the layers before it. Errors are computed in float32 so
they show pruning, not rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from ..semantics import prune_2to4, prune_2to4_compensated
from .gemms import GemmSite


@dataclasses.dataclass
class PruningError:
    """Sums of squares over every call measured for one GEMM."""

    err_sq: float = 0.0  # ||Y_pruned - Y_dense||^2
    out_sq: float = 0.0  # ||Y_dense||^2
    pruned_sq: float = 0.0  # ||x - prune(x)||^2
    in_sq: float = 0.0  # ||x||^2

    @property
    def rel_err(self) -> float:
        """``||Y_pruned - Y_dense|| / ||Y_dense||`` (1 where the dense output is all zeros but the pruned
        one is not)."""
        return (self.err_sq / self.out_sq) ** 0.5 if self.out_sq > 0 else float(self.err_sq > 0)

    @property
    def energy_pruned(self) -> float:
        """Share of the input's energy that pruning removes."""
        return self.pruned_sq / self.in_sq if self.in_sq > 0 else 0.0

    def add(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, compensate: bool) -> None:
        x, weight = x.float(), weight.float()
        bias = None if bias is None else bias.float()
        pruned = prune_2to4(x)
        dense = F.linear(x, weight, bias)
        sparse = F.linear(prune_2to4_compensated(x) if compensate else pruned, weight, bias)
        self.err_sq += (sparse - dense).square().sum().item()
        self.out_sq += dense.square().sum().item()
        self.pruned_sq += (x - pruned).square().sum().item()
        self.in_sq += x.square().sum().item()


class GemmInterpreter(fx.Interpreter):
    """Runs ``gm`` node by node, keeping every GEMM's operands (as ``GemmSite`` names them) alive until
    that GEMM ran, so that a subclass can read them at the GEMM."""

    def __init__(self, gm: fx.GraphModule, sites: Iterable[GemmSite]) -> None:
        super().__init__(gm)
        self.sites = {site.node: site for site in sites if site.k % 4 == 0}
        self._keep_operands_until_their_gemm()

    def operands(self, site: GemmSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The GEMM's activation, its weight as (N, K) and its bias, as computed in this run."""
        weight = self.env[site.weight] if site.weight_is_nk else self.env[site.weight].t()
        return self.env[site.x], weight, None if site.bias is None else self.env[site.bias]

    def _keep_operands_until_their_gemm(self) -> None:
        """A GEMM's operands as ``GemmSite`` names them (a weight before its transpose, an
        activation before a view) may have their last use before the GEMM: the interpreter would
        free them there. Free them after the last GEMM that reads them instead."""
        order = {node: i for i, node in enumerate(self.module.graph.nodes)}
        last = {freed: user for user, nodes in self.user_to_last_uses.items() for freed in nodes}
        for site in self.sites.values():
            for operand in (site.x, site.weight, site.bias):
                if operand is not None and order[site.node] > order[last.get(operand, operand)]:
                    last[operand] = site.node
        self.user_to_last_uses = {}
        for freed, user in last.items():
            self.user_to_last_uses.setdefault(user, []).append(freed)


class MeasuringInterpreter(GemmInterpreter):
    """Runs ``gm`` and adds every GEMM's pruning error to ``errors[site.name]`` (created as needed)."""

    def __init__(self, gm: fx.GraphModule, sites: Iterable[GemmSite], errors: dict[str, PruningError],
                 compensate: bool) -> None:
        super().__init__(gm, sites)
        self.errors, self.compensate = errors, compensate

    def run_node(self, node: fx.Node) -> Any:
        out = super().run_node(node)
        site = self.sites.get(node)
        if site is not None:
            self.errors.setdefault(site.name, PruningError()).add(*self.operands(site), self.compensate)
        return out


def measure(gm: fx.GraphModule, sites: Iterable[GemmSite], inputs: Iterable[Any],
            compensate: bool) -> dict[str, PruningError]:
    """Every GEMM's pruning error on one run of ``gm`` with ``inputs``."""
    errors: dict[str, PruningError] = {}
    with torch.no_grad():
        MeasuringInterpreter(gm, sites, errors, compensate).run(*inputs)
    return errors
