"""The ``lynx`` Dynamo backend: the 2:4 pass on the Dynamo graph, then Inductor for everything.

Registered under the ``torch_dynamo_backends`` entry point (so ``"lynx"`` is a backend right after
``import torch``) and again by ``import lynx_compile``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._subclasses.fake_tensor import FakeTensor

from . import steps
from .config import INDUCTOR_MODES, LynxConfig, dtype_name
from .passes import channel_order, low_rank, policy, profitability, refit
from .passes import errors as pruning
from .passes.decision import Decision
from .passes.errors import PruningError
from .passes.fold_bias import FoldedWeights
from .passes.gemms import GemmSite, find_gemms
from .passes.sensitivity import OutputError
from .passes.sparsify import sparsify
from .report import GemmPath, LayerReport, PruneSite, Report

log = logging.getLogger("lynx_compile")

_REPORTS: list[Report] = []
_GRAPHS = itertools.count()  # numbers the graphs of dump_graphs


def reports() -> list[Report]:
    """Reports of every graph the lynx backend compiled in this process and that then ran, in the order
    they first ran. A compile Dynamo discards (it restarts its analysis, e.g. with ``dynamic=True``)
    leaves no report."""
    return list(_REPORTS)


def plan_graph(
    gm: fx.GraphModule, config: LynxConfig, example_inputs: Sequence[Any] = (), *, measure: bool = True
) -> tuple[list[tuple[GemmSite, Decision]], dict[str, PruningError] | None]:
    """Each GEMM with its decision, and the pruning errors the decisions used (option ``max_layer_error``)."""
    plan, errors, _, _, _ = _plan(gm, config, example_inputs, measure=measure)
    return plan, errors


def _plan(
    gm: fx.GraphModule, config: LynxConfig, example_inputs: Sequence[Any], *, measure: bool = True
) -> tuple[
    list[tuple[GemmSite, Decision]],
    dict[str, PruningError] | None,
    OutputError | None,
    channel_order.Orders,
    refit.Maps,
]:
    """``plan_graph``, the output error measurement of option ``error_budget`` (for the report), the channel
    orders of option ``permute_channels`` and the maps of option ``refit`` (every measurement uses them)."""
    sites = find_gemms(gm)
    orders = channel_order.orders(sites, config)
    refits = refit.maps(sites, config)
    errors = pruning_errors(gm, sites, config, example_inputs, orders, refits)
    output_error = None
    if config.error_budget is not None and _real("error_budget", example_inputs):
        output_error = OutputError(gm, sites, [example_inputs], config.compensate, orders, refits)
    decisions = policy.plan(sites, config, measure=measure, errors=errors, output_error=output_error)
    channel_order.check(sites, decisions, config)
    refit.check(sites, decisions, config)
    return list(zip(sites, decisions)), errors, output_error, orders, refits


def pruning_errors(
    gm: fx.GraphModule,
    sites: Sequence[GemmSite],
    config: LynxConfig,
    example_inputs: Sequence[Any],
    orders: channel_order.Orders | None = None,
    refits: refit.Maps | None = None,
) -> dict[str, PruningError] | None:
    """Each GEMM's pruning error on the inputs the graph is compiled with, for option
    ``max_layer_error`` (None without it, or when the inputs are fake: then nothing goes sparse)."""
    if config.max_layer_error is None or not _real("max_layer_error", example_inputs):
        return None
    return pruning.measure(gm, sites, example_inputs, config.compensate, orders, refits)


def _real(option: str, example_inputs: Sequence[Any]) -> bool:
    """Whether errors can be measured on the inputs; if not (fake inputs), warn that the graph stays dense."""
    if any(isinstance(t, FakeTensor) for t in example_inputs):
        log.warning(
            "lynx: %s: the graph is compiled with fake inputs, pruning errors cannot be measured; its GEMMs stay dense",
            option,
        )
        return False
    return True


def layer_report(
    site: GemmSite, decision: Decision, errors: dict[str, PruningError] | None = None, rank: int = 0
) -> LayerReport:
    """``rank``: of the low-rank branch this GEMM adds (0: none)."""
    error = (errors or {}).get(site.name)
    return LayerReport(
        name=site.name,
        sparse=decision.sparse,
        reason=decision.reason,
        m=site.m,
        k=site.k,
        n=site.n,
        dtype=dtype_name(site.dtype),
        path=decision.path,
        alg_id=decision.alg_id if decision.path.on_cusparselt else None,
        prune=decision.prune,
        bias_folded=decision.fold_bias,
        precision="fp8" if decision.fp8 else dtype_name(site.dtype),
        rel_err=None if error is None else error.rel_err,
        energy_pruned=None if error is None else error.energy_pruned,
        low_rank=rank,
        rel_err_low_rank=None if error is None else error.rel_err_low_rank,
    )


def _needs_autograd(example_inputs: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)


def lynx_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: LynxConfig | dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """``torch.compile(model, backend="lynx", mode=...)`` or ``..., options={...})``: torch takes one of
    the two, so option ``inductor_mode`` gives Inductor's mode together with lynx options."""
    config = LynxConfig.from_options(options)
    mode = _inductor_mode(mode, config)
    plan, errors, output_error, orders, refits = _plan(gm, config, example_inputs)
    branches = low_rank.factors([s for s, _ in plan], [d for _, d in plan], config)
    if branches:  # which branches go into their sparse GEMMs (the reasons say), then what they cost
        sites = [s for s, _ in plan]
        decisions = low_rank.fuse(sites, [d for _, d in plan], branches, config)
        if config.cost_model:
            ranks = {name: a.shape[1] for name, (a, _) in branches.items()}
            decisions = profitability.charge_branches(sites, decisions, ranks, config.min_speedup, config.compensate)
        plan = list(zip(sites, decisions, strict=True))
        branches = {s.name: branches[s.name] for s, d in plan if d.sparse and s.name in branches}
    if orders:
        sites = [s for s, _ in plan]
        decisions = channel_order.annotated(sites, [d for _, d in plan], orders, config.compensate)
        plan = list(zip(sites, decisions, strict=True))
    report = Report(
        [layer_report(s, d, errors, _rank(branches, s.name)) for s, d in plan],
        device=_graph_device(plan),
        options={k: v for k, v in vars(config).items()},
    )
    if errors is not None:
        report.notes.append("rel_err and pruned_E: measured on the inputs of the call that compiled this graph")
    if branches:
        report.notes.append(low_rank.note(branches, config))
        report.notes.append(low_rank.forms_note([d for _, d in plan], branches))
    if output_error is not None and output_error.verified is not None:
        error, chosen = output_error.verified
        report.notes.append(
            f"error_budget={config.error_budget:g}: output error {error:.4g} with the {chosen} chosen "
            f"GEMMs pruned, measured on the inputs of the call that compiled this graph "
            f"({output_error.runs} runs with pruning)"
        )
    if _needs_autograd(example_inputs):
        reason = "autograd needed: lynx is inference-only (use torch.no_grad() or requires_grad_(False))"
        log.warning("lynx: %s; compiling this graph dense", reason)
        for layer in report.layers:
            layer.sparse, layer.path, layer.reason, layer.alg_id, layer.prune, layer.low_rank = (
                False,
                GemmPath.DENSE,
                reason,
                None,
                PruneSite.NONE,
                0,
            )
        plan, branches = [], {}
    for layer in report.layers:
        log.info("lynx: %-48s %-17s %s", layer.name, layer.path, layer.reason)
    _log_reference_once([decision for _, decision in plan])
    graph = next(_GRAPHS)
    _dump(gm, config, graph, "before")
    # option dense_steps: the graph as it is, compiled beside the sparse one (sparsify rewrites gm in place)
    dense_gm = (
        fx.GraphModule(gm, copy.deepcopy(gm.graph)) if config.dense_steps and any(d.sparse for _, d in plan) else None
    )
    folds = FoldedWeights(gm)
    orders = {s.name: orders[s.name] for s, d in plan if d.sparse and s.name in orders}
    refits = {s.name: refits[s.name] for s, d in plan if d.sparse and s.name in refits}
    sparsify(
        gm,
        plan,
        compensate=config.compensate,
        folds=folds,
        example_inputs=example_inputs,
        branches=branches,
        orders=orders,
        refits=refits,
    )
    if orders:
        report.notes.append(channel_order.note(orders, config))
    if refits:
        report.notes.append(refit.note(refits, config))
    if folds.nbytes:
        report.notes.append(
            f"{len(folds)} weight copies (bias appended, low-rank columns, channel order, refit, or fp8), "
            f"{folds.nbytes / 2**20:.1f} MiB"
        )
    _dump(gm, config, graph, "after")
    on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs)
    patches = _inductor_patches(mode, config, on_cuda)
    compiled = folds.wrap(compile_fx(gm, example_inputs, config_patches=patches))
    if dense_gm is not None:
        compiled = _by_step(
            compiled, compile_fx(dense_gm, example_inputs, config_patches=patches), config.dense_steps, report
        )
    return _reported_when_run(compiled, report)


def _rank(branches: low_rank.Factors, name: str) -> int:
    return branches[name][0].shape[1] if name in branches else 0


def _by_step(
    sparse: Callable[..., Any], dense: Callable[..., Any], dense_steps: int | float, report: Report
) -> Callable[..., Any]:
    """Option ``dense_steps``: one of the two compiled graphs per call, by the denoising step read now.

    Dynamo calls this function after its guards passed; the step is read here, so Dynamo guards on
    nothing and a new step never recompiles (docs/design.md, "Timestep schedule"). With no step set, the
    sparse graph runs, with a warning once and a note in the report."""
    first = (
        f"the first {dense_steps} denoising steps"
        if isinstance(dense_steps, int)
        else f"the first {dense_steps:g} of the denoising steps"
    )
    report.notes.append(
        f"dense_steps={dense_steps:g}: {first} run this graph dense (a second graph, compiled "
        "beside the sparse one), the others sparse"
    )
    unknown = False

    @functools.wraps(sparse)
    def run(*args: Any) -> Any:
        nonlocal unknown
        now = steps.runs_dense(dense_steps)
        if now is None and not unknown:
            unknown = True
            report.notes.append(
                f"dense_steps={dense_steps:g}: the graph ran with no denoising step set "
                "(lynx_compile.follow_steps / set_step): it ran sparse"
            )
            _warn_once(
                "lynx: option dense_steps is set but no denoising step is (use lynx_compile.follow_steps(pipe) "
                "or lynx_compile.set_step(i, total)): the graphs run sparse on every step"
            )
        return dense(*args) if now else sparse(*args)

    return run


def _reported_when_run(compiled: Callable[..., Any], report: Report) -> Callable[..., Any]:
    """``compiled``, adding ``report`` to ``reports()`` at its first call: Dynamo may discard a compiled
    graph (a restarted analysis compiles the frame again), and its report must not show."""
    reported = False

    @functools.wraps(compiled)
    def run(*args: Any) -> Any:
        nonlocal reported
        if not reported:
            reported = True
            _REPORTS.append(report)
        return compiled(*args)

    return run


def _inductor_mode(mode: str | None, config: LynxConfig) -> str | None:
    """Inductor's mode: ``torch.compile``'s ``mode`` or option ``inductor_mode`` (one of the two)."""
    if mode is not None and config.inductor_mode is not None and mode != config.inductor_mode:
        raise ValueError(f"lynx: mode={mode!r} and option inductor_mode={config.inductor_mode!r} disagree; give one")
    mode = config.inductor_mode if mode is None else mode
    if mode is not None and mode not in INDUCTOR_MODES:
        raise ValueError(f"lynx: unknown mode {mode!r}; valid: {list(INDUCTOR_MODES)}")
    return mode


def _dump(gm: fx.GraphModule, config: LynxConfig, graph: int, stage: str) -> None:
    code = gm.print_readable(print_output=False)
    log.debug("lynx: graph %s the 2:4 pass:\n%s", stage, code)
    if config.dump_graphs:
        os.makedirs(config.dump_graphs, exist_ok=True)
        path = os.path.join(config.dump_graphs, f"graph_{graph}_{stage}.py")
        with open(path, "w") as f:
            f.write(code)


def _graph_device(plan: list[tuple[GemmSite, Decision]]) -> str:
    devices = sorted({str(site.device) for site, _ in plan})
    return ",".join(devices) if devices else "cpu"


_LOGGED_REFERENCE: set[str] = set()
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _log_reference_once(decisions: Sequence[Decision]) -> None:
    for decision in decisions:
        why = decision.fallback
        if decision.path == GemmPath.REFERENCE and why is not None and why not in _LOGGED_REFERENCE:
            _LOGGED_REFERENCE.add(why)
            log.warning("lynx: sparse GEMMs run on the reference path (prune, then dense GEMM): %s", why)


def _inductor_patches(mode: str | None, config: LynxConfig, on_cuda: bool) -> dict[str, Any]:
    """Inductor settings for ``mode``; CUDA graphs on by default for graphs on the GPU.

    cuSPARSELt sets its plan up on every call (about 0.5 ms of CPU on an H100), more than most DiT
    GEMMs take on the GPU: graph replay removes that cost. Graphs where the cost model kept every
    GEMM dense get graphs too, so they run as fast as ``mode="reduce-overhead"``, not slower.
    """
    user_pass = torch._inductor.config.post_grad_custom_post_pass
    patches: dict[str, Any] = {"post_grad_custom_post_pass": KeyedOnLynx(user_pass)}
    if mode not in (None, "default"):
        patches.update(torch._inductor.list_mode_options(mode))
    elif config.cudagraphs and on_cuda:
        patches["triton.cudagraphs"] = True
    if not config.cudagraphs:
        patches["triton.cudagraphs"] = False
    return patches


class KeyedOnLynx(CustomGraphPass):
    """Runs the user's own post-grad passes, if any, and puts lynx's code into Inductor's cache key.

    Inductor's FX graph cache keys on the graph, its config and custom passes' ``uuid``, not on the
    lowerings a graph runs through: without this, a cached graph compiled by an older lynx (an
    older ``compress_2to4`` lowering) would be served after an upgrade.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = list(inner) if isinstance(inner, (list, tuple)) else [inner] if inner else []

    def __call__(self, graph: fx.Graph) -> None:
        for p in self.inner:
            p(graph)

    def uuid(self) -> Any:
        if not all(callable(getattr(p, "uuid", None)) for p in self.inner):
            return None  # a plain callable has no uuid: Inductor does not cache such graphs
        root = os.path.dirname(os.path.abspath(__file__))
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(".py"))
        return (get_hash_for_files(tuple(files)), tuple(p.uuid() for p in self.inner))
