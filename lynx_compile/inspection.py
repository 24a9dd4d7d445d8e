"""``lynx_compile.inspect``: what the lynx backend would do to a model, and what pruning costs per layer.

The model is captured by Dynamo exactly as ``backend="lynx"`` would capture it (same graphs, same
GEMM names, same decisions), then each graph runs through ``passes.errors.MeasuringInterpreter``: every
GEMM's own pruning error, in float32, from the same dense input; with option ``low_rank``, also with the
fitted branch added (for every GEMM the calibration covers, dense ones included); with option ``refit``, the
pruned input against the refitted weight.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from .backend import layer_report
from .calibration import resolve
from .config import LynxConfig
from .passes import channel_order, low_rank, refit
from .passes.errors import MeasuringInterpreter, PruningError
from .passes.gemms import GemmSite, find_gemms
from .passes.policy import plan
from .passes.sensitivity import OutputError
from .report import LayerReport, Report


@dataclasses.dataclass
class _Session:
    config: LynxConfig
    layers: dict[str, LayerReport] = dataclasses.field(default_factory=dict)
    errors: dict[str, PruningError] = dataclasses.field(default_factory=dict)


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("lynx_inspect", default=None)


def inspect(
    model: Callable[..., Any], *args: Any, options: LynxConfig | dict[str, Any] | None = None, **kwargs: Any
) -> Report:
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
        error = session.errors.get(name)
        if error is not None:
            layer.rel_err, layer.energy_pruned = error.rel_err, error.energy_pruned
            layer.rel_err_low_rank = error.rel_err_low_rank
    devices = sorted({d for d in (_device_of(v) for v in (*args, *kwargs.values())) if d})
    return Report(
        list(session.layers.values()),
        device=",".join(devices) or "cpu",
        options=dict(vars(config)),
        notes=["rel_err and pruned_E are measured for every GEMM, dense ones included (what pruning would cost)"],
    )


def _branches(sites: Sequence[GemmSite], config: LynxConfig) -> low_rank.Factors:
    """Option ``low_rank``: the branch of every GEMM the calibration has statistics of that shape for, as the
    compiled graph fits it (GEMMs that read one activation share A), in float64."""
    if not config.low_rank:
        return {}
    assert config.calibration is not None
    names = {site.name for site in sites}
    return low_rank.fitted(sites, names, resolve(config.calibration), config.low_rank, to_dtype=False)


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
        config = session.config
        orders, refits = channel_order.orders(sites, config), refit.maps(sites, config)
        out = MeasuringInterpreter(
            gm, sites, session.errors, config.compensate, _branches(sites, config), orders, refits
        ).run(*inputs)
        new = [site for site in sites if site.name not in session.layers]  # decided once, after a first measurement
        output_error = (
            None if config.error_budget is None else OutputError(gm, sites, [inputs], config.compensate, orders, refits)
        )
        decisions = plan(new, config, errors=session.errors, output_error=output_error)
        channel_order.check(new, decisions, config)
        refit.check(new, decisions, config)
        decisions = channel_order.annotated(new, decisions, orders, config.compensate)
        ranks = {name: a.shape[1] for name, (a, _) in low_rank.factors(new, decisions, config).items()}
        for site, decision in zip(new, decisions):
            session.layers[site.name] = layer_report(site, decision, rank=ranks.get(site.name, 0))
        return out

    return run
