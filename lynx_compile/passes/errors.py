"""What pruning costs each GEMM, measured on real inputs: for ``inspect`` and option ``max_layer_error``.

An ``fx.Interpreter`` runs the graph as it is (dense) and, at every GEMM, also computes the output
on the pruned input from the *same dense input*, then carries on with the dense output: each GEMM's
error is its own, not the accumulation of the layers before it. Errors are computed in float32 so
they show pruning, not rounding. With low-rank factors for a GEMM (option ``low_rank``) it also measures
the error with the branch ``(x A) B`` added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .. import lowrank
from ..semantics import compensated, prune_2to4_in_order, refit_weight
from .gemms import GemmSite


@dataclasses.dataclass
class PruningError:
    """Sums of squares over every call measured for one GEMM."""

    err_sq: float = 0.0  # ||Y_pruned - Y_dense||^2
    out_sq: float = 0.0  # ||Y_dense||^2
    pruned_sq: float = 0.0  # ||x - prune(x)||^2
    in_sq: float = 0.0  # ||x||^2
    branch_err_sq: float | None = None  # ||Y_pruned + (x A) B - Y_dense||^2, when measured with a branch

    @property
    def rel_err(self) -> float:
        """``||Y_pruned - Y_dense|| / ||Y_dense||`` (1 where the dense output is all zeros but the pruned
        one is not)."""
        return (self.err_sq / self.out_sq) ** 0.5 if self.out_sq > 0 else float(self.err_sq > 0)

    @property
    def rel_err_low_rank(self) -> float | None:
        """``rel_err`` with the low-rank branch added (None: not measured with one)."""
        if self.branch_err_sq is None:
            return None
        return (self.branch_err_sq / self.out_sq) ** 0.5 if self.out_sq > 0 else float(self.branch_err_sq > 0)

    @property
    def energy_pruned(self) -> float:
        """Share of the input's energy that pruning removes."""
        return self.pruned_sq / self.in_sq if self.in_sq > 0 else 0.0

    def add(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        compensate: bool,
        branch: tuple[torch.Tensor, torch.Tensor] | None = None,
        order: torch.Tensor | None = None,
        refit: torch.Tensor | None = None,
    ) -> None:
        """``order``: the channel order of option ``permute_channels`` (None: the model's own); ``refit``: G of
        option ``refit``, the pruned input then meets the refitted weight."""
        pruned_weight = weight if refit is None else refit_weight(weight, refit)
        x, weight, pruned_weight = x.float(), weight.float(), pruned_weight.float()
        bias = None if bias is None else bias.float()
        pruned = prune_2to4_in_order(x, order)
        dense = F.linear(x, weight, bias)
        sparse = F.linear(compensated(x, pruned) if compensate else pruned, pruned_weight, bias)
        self.err_sq += (sparse - dense).square().sum().item()
        if branch is not None:
            with_branch = sparse + lowrank.branch(x, branch[0].float(), branch[1].float())
            self.branch_err_sq = (self.branch_err_sq or 0.0) + (with_branch - dense).square().sum().item()
        self.out_sq += dense.square().sum().item()
        self.pruned_sq += (x - pruned).square().sum().item()
        self.in_sq += x.square().sum().item()


class GemmInterpreter(fx.Interpreter):
    """Runs ``gm`` and calls ``visit`` at every GEMM with K % 4 == 0, with its dense input, its weight as
    (N, K) and its bias, as the graph computed them."""

    def __init__(self, gm: fx.GraphModule, sites: Iterable[GemmSite]) -> None:
        super().__init__(gm)
        self.sites = {site.node: site for site in sites if site.k % 4 == 0}
        self._keep_operands_until_their_gemm()

    def operands(self, site: GemmSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The GEMM's activation, its weight as (N, K) and its bias, as computed in this run."""
        weight = self.env[site.weight] if site.weight_is_nk else self.env[site.weight].t()
        return self.env[site.x], weight, None if site.bias is None else self.env[site.bias]

    def visit(self, site: GemmSite, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Called right after each GEMM ran; the base class does nothing."""

    def run_node(self, node: fx.Node) -> Any:
        out = super().run_node(node)
        site = self.sites.get(node)
        if site is not None:
            self.visit(site, *self.operands(site))
        return out

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
    """Runs ``gm`` and adds every GEMM's pruning error to ``errors[site.name]`` (created as needed);
    ``branches``: low-rank factors (A, B) by GEMM name, measured with and without; ``orders``: channel orders
    by GEMM name (option ``permute_channels``); ``refits``: the maps G of option ``refit`` by GEMM name."""

    def __init__(
        self,
        gm: fx.GraphModule,
        sites: Iterable[GemmSite],
        errors: dict[str, PruningError],
        compensate: bool,
        branches: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        orders: Mapping[str, torch.Tensor] | None = None,
        refits: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(gm, sites)
        self.errors, self.compensate, self.branches = errors, compensate, branches or {}
        self.orders, self.refits = orders or {}, refits or {}

    def visit(self, site: GemmSite, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.errors.setdefault(site.name, PruningError()).add(
            x,
            weight,
            bias,
            self.compensate,
            self.branches.get(site.name),
            self.orders.get(site.name),
            self.refits.get(site.name),
        )


def measure(
    gm: fx.GraphModule,
    sites: Iterable[GemmSite],
    inputs: Iterable[Any],
    compensate: bool,
    orders: Mapping[str, torch.Tensor] | None = None,
    refits: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, PruningError]:
    """Every GEMM's pruning error on one run of ``gm`` with ``inputs``."""
    errors: dict[str, PruningError] = {}
    with torch.no_grad():
        MeasuringInterpreter(gm, sites, errors, compensate, orders=orders, refits=refits).run(*inputs)
    return errors
