"""``lynx_compile.inspect``: what the lynx backend would do to a model, and what pruning costs per layer.

The model is captured by Dynamo exactly as ``backend="lynx"`` would capture it (same graphs, same
GEMM names, same decisions), then each graph runs through ``passes.errors.MeasuringInterpreter``: every
GEMM's own pruning error, in float32, from the same dense input.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from .backend import layer_report
from .config import LynxConfig
from .passes.errors import MeasuringInterpreter, PruningError
from .passes.gemms import find_gemms
from .passes.policy import plan
from .passes.sensitivity import OutputError
from .report import LayerReport, Report


@dataclasses.dataclass
class _Session:
    config: LynxConfig
    layers: dict[str, LayerReport] = dataclasses.field(default_factory=dict)
    errors: dict[str, PruningError] = dataclasses.field(default_factory=dict)


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("lynx_inspect", default=None)


def inspect(model: Callable[..., Any], *args: Any, options: LynxConfig | dict[str, Any] | None = None,
            **kwargs: Any) -> Report:
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
        out = MeasuringInterpreter(gm, sites, session.errors, session.config.compensate).run(*inputs)
        new = [site for site in sites if site.name not in session.layers]  # decided once, after a first measurement
        output_error = None if session.config.error_budget is None else OutputError(
            gm, sites, [inputs], session.config.compensate)
        for site, decision in zip(new, plan(new, session.config, errors=session.errors, output_error=output_error)):
            session.layers[site.name] = layer_report(site, decision)
        return out

    return run
