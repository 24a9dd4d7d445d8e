"""``lynx_compile.inspect``: what the lynx backend would do to a model, and what pruning costs per layer.

The model is captured by Dynamo exactly as ``backend="lynx"`` would capture it (same graphs, same
GEMM names, same decisions), then each graph runs through an ``fx.Interpreter`` that, at every GEMM,
computes the dense output and the output on the pruned input from the *same dense input* and
carries on with the dense output. Errors are measured in float32 so they show pruning, not rounding.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .backend import layer_report
from .codegen.reference import prune_2to4, prune_2to4_compensated
from .config import LynxConfig
from .passes.gemms import GemmSite, find_gemms
from .passes.policy import plan
from .report import LayerReport, Report


@dataclasses.dataclass
class _Sums:
    err_sq: float = 0.0
    out_sq: float = 0.0
    pruned_sq: float = 0.0
    in_sq: float = 0.0


@dataclasses.dataclass
class _Session:
    config: LynxConfig
    layers: dict[str, LayerReport] = dataclasses.field(default_factory=dict)
    sums: dict[str, _Sums] = dataclasses.field(default_factory=dict)


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("lynx_inspect", default=None)


def inspect(model: Callable[..., Any], *args: Any, options: LynxConfig | dict[str, Any] | None = None, **kwargs: Any) -> Report:
    """Run ``model(*args, **kwargs)`` once and report every GEMM the lynx backend would see."""
    config = LynxConfig.from_options(options)
    session = _Session(config)
    token = _SESSION.set(session)
    try:
        with torch.no_grad():
            torch.compile(model, backend=_inspect_backend)(*args, **kwargs)
    finally:
        _SESSION.reset(token)
    for name, layer in session.layers.items():
        sums = session.sums[name]
        layer.rel_err = (sums.err_sq / sums.out_sq) ** 0.5 if sums.out_sq > 0 else float(sums.err_sq > 0)
        layer.energy_pruned = sums.pruned_sq / sums.in_sq if sums.in_sq > 0 else 0.0
    devices = sorted({d for d in (_device_of(v) for v in (*args, *kwargs.values())) if d})
    return Report(
        list(session.layers.values()),
        device=",".join(devices) or "cpu",
        options=dict(vars(config)),
        notes=["rel_err and pruned_E are measured for every GEMM, dense ones included (what pruning would cost)"],
    )


def _device_of(value: Any) -> str | None:
    return str(value.device) if isinstance(value, torch.Tensor) else None


def _inspect_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], **_: Any) -> Callable[..., Any]:
    """One backend object for all sessions, so repeated inspections reuse Dynamo's cache.

    GEMMs are found now (Dynamo drops the node metadata after compiling); the decisions, which
    depend on each session's options, are made when the graph runs.
    """
    sites = find_gemms(gm)

    def run(*inputs: Any) -> Any:
        session = _SESSION.get()
        if session is None:  # called outside inspect(): behave as the plain graph
            return gm(*inputs)
        return _MeasuringInterpreter(gm, sites, session).run(*inputs)

    return run


class _MeasuringInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, sites: list[GemmSite], session: _Session) -> None:
        super().__init__(gm, garbage_collect_values=False)  # weights are read after their last use
        self.session = session
        self.sites = {site.node: site for site in sites}
        new = [site for site in sites if site.name not in session.layers]
        for site, decision in zip(new, plan(new, session.config)):
            session.layers[site.name] = layer_report(site, decision)
        for site in sites:
            session.sums.setdefault(site.name, _Sums())

    def run_node(self, node: fx.Node) -> Any:
        out = super().run_node(node)
        site = self.sites.get(node)
        if site is not None and site.k % 4 == 0:
            self._measure(site)
        return out

    def _measure(self, site: GemmSite) -> None:
        x = self.env[site.x].float()
        weight = self.env[site.weight].float()
        weight = weight if site.weight_is_nk else weight.t()
        bias = None if site.bias is None else self.env[site.bias].float()
        pruned = prune_2to4(x)
        fed = prune_2to4_compensated(x) if self.session.config.compensate else pruned
        dense = F.linear(x, weight, bias)
        sparse = F.linear(fed, weight, bias)
        sums = self.session.sums[site.name]
        sums.err_sq += (sparse - dense).square().sum().item()
        sums.out_sq += dense.square().sum().item()
        sums.pruned_sq += (x - pruned).square().sum().item()
        sums.in_sq += x.square().sum().item()
