"""``lynx_compile.calibrate``: run the dense model on example inputs (or a diffusers pipeline's whole sampling
loop) and collect the statistics the low-rank fit needs, per GEMM.

The model is captured by Dynamo as ``backend="lynx"`` captures it, so the GEMM names are the pass's names
exactly; each graph then runs through a ``GemmInterpreter`` that feeds every GEMM the lynx pass could make
sparse (``legality``, under the given options) to its ``GemmStatistics``, and carries on dense. With option
``permute_channels`` a first run measures the channels' energies, which give each activation its channel order
(``balanced_order``); the second collects the statistics with pruning in that order, and the calibration keeps
the orders.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import fx
from tqdm.auto import tqdm

from .calibration import PRUNING_OPTIONS, Calibration, GemmStatistics, balanced_order
from .config import LynxConfig, dtype_name
from .passes import legality
from .passes.errors import GemmInterpreter
from .passes.gemms import GemmSite, find_gemms


class _Collector(GemmInterpreter):
    def __init__(
        self,
        gm: fx.GraphModule,
        sites: Sequence[GemmSite],
        stats: dict[str, GemmStatistics],
        compensate: bool,
        orders: Mapping[str, torch.Tensor],
        refit: bool,
    ) -> None:
        super().__init__(gm, sites)
        self.stats, self.compensate, self.orders, self.refit = stats, compensate, orders, refit

    def visit(self, site: GemmSite, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        stats = self.stats.setdefault(site.name, GemmStatistics.empty(site.k, site.n, x.device, self.refit))
        order = self.orders.get(site.name)
        stats.add(x, weight, self.compensate, None if order is None else order.to(x.device))


def _first_readers(sites: Sequence[GemmSite]) -> dict[str, str]:
    """GEMM name -> the name of the first GEMM that reads the same activation (itself, for the first)."""
    first: dict[object, str] = {}
    return {s.name: first.setdefault(s.x, s.name) for s in sites}


class _Energies(GemmInterpreter):
    """Sums x_k^2 per channel of each activation (float64), under the name of the first GEMM that reads it."""

    def __init__(
        self,
        gm: fx.GraphModule,
        sites: Sequence[GemmSite],
        energies: dict[str, torch.Tensor],
        owner: Mapping[str, str],
    ) -> None:
        super().__init__(gm, sites)
        self.energies, self.owner = energies, owner

    def visit(self, site: GemmSite, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if self.owner[site.name] == site.name:
            sums = x.reshape(-1, x.shape[-1]).double().square().sum(0)
            self.energies[site.name] = self.energies.get(site.name, 0) + sums


def calibrate(
    model_or_pipe: Any,
    inputs_or_prompts: Iterable[Any],
    *,
    options: LynxConfig | Mapping[str, Any] | None = None,
    steps: int = 28,
    batch_size: int | None = None,
    seed: int = 0,
    pipe_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Calibration:
    """Statistics of every GEMM the lynx pass may make sparse under ``options`` (the pruning it assumes:
    ``compensate``, and ``permute_channels``: then the channel orders too, from a first run over the same inputs),
    on the dense model's activations; with option ``refit`` also the moments that option fits its weights from.

    ``model_or_pipe``: a module (or any callable) with ``inputs_or_prompts`` its example inputs, each a tensor
    (``model(x)``), a tuple (``model(*args)``) or a dict (``model(**kwargs)``); or a diffusers pipeline (it
    has a ``.transformer`` module) with ``inputs_or_prompts`` its prompts: its real sampling loop runs,
    ``steps`` steps, ``batch_size`` prompts per call (default: all), prompt i from seed ``seed + i``, the
    pipeline's own guidance unless ``pipe_kwargs`` say otherwise, so every timestep is seen (with
    classifier-free guidance, both halves of its batch).
    """
    given = options if isinstance(options, LynxConfig) else dict(options or {})
    # options that need a calibration: what this one is made for
    permute, refit = (
        (given.permute_channels, given.refit)
        if isinstance(given, LynxConfig)
        else (given.pop("permute_channels", False), given.pop("refit", False))
    )
    for name, value in (("permute_channels", permute), ("refit", refit)):
        if not isinstance(value, bool):
            raise TypeError(f"lynx option {name!r} must be a bool, got {value!r}")
    config = LynxConfig.from_options(
        dataclasses.replace(given, permute_channels=False, refit=False) if isinstance(given, LynxConfig) else given
    )
    stats: dict[str, GemmStatistics] = {}
    energies: dict[str, torch.Tensor] = {}
    orders: dict[str, torch.Tensor] = {}
    owners: dict[str, str] = {}  # GEMM -> the first GEMM reading its activation, in every graph compiled
    dtypes: set[str] = set()

    def energy_pass(gm: fx.GraphModule, sites: list[GemmSite]) -> GemmInterpreter:
        return _Energies(gm, sites, energies, owners)

    def statistics_pass(gm: fx.GraphModule, sites: list[GemmSite]) -> GemmInterpreter:
        return _Collector(gm, sites, stats, config.compensate, orders, refit)

    current = [statistics_pass]  # what the compiled graphs run now: one compilation serves both passes

    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], **_: Any) -> Callable[..., Any]:
        sites = [s for s in find_gemms(gm) if legality.can_sparsify(s, config).sparse]
        dtypes.update(dtype_name(s.dtype) for s in sites)
        owners.update(_first_readers(sites))

        def run(*args: Any) -> Any:
            return current[0](gm, sites).run(*args)

        return run

    module = model_or_pipe.transformer if is_pipeline(model_or_pipe) else model_or_pipe
    compiled = torch.compile(module, backend=backend, dynamic=False)
    inputs = list(inputs_or_prompts) if permute else inputs_or_prompts  # two passes over them
    passes = [(energy_pass, "lynx calibrate (channel energies)")] if permute else []
    for current[0], desc in [*passes, (statistics_pass, "lynx calibrate")]:
        if current[0] is statistics_pass:  # each reader gets its activation's order (none without the first pass)
            orders.update({n: balanced_order(energies[o]) for n, o in owners.items() if o in energies})
        with torch.no_grad():
            run_all(
                model_or_pipe,
                inputs,
                compiled,
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                pipe_kwargs=pipe_kwargs,
                progress=progress,
                desc=desc,
            )
    if not stats:
        raise RuntimeError(
            "lynx calibrate: no GEMM the lynx pass could make sparse ran (check the options: "
            f"include/exclude, min_rows={config.min_rows}, dtypes)"
        )
    options_assumed = {**{o: getattr(config, o) for o in PRUNING_OPTIONS}, "permute_channels": permute}
    return Calibration(stats, options=options_assumed, dtype=",".join(sorted(dtypes)), orders=orders)


def is_pipeline(model_or_pipe: Any) -> bool:
    """A diffusers pipeline (it has a ``.transformer`` module), not a model."""
    return isinstance(getattr(model_or_pipe, "transformer", None), torch.nn.Module)


def call(fn: Callable[..., Any], item: Any) -> Any:
    """``fn`` on one example input: a dict as kwargs, a tuple or list as args, anything else as the one arg."""
    if isinstance(item, Mapping):
        return fn(**item)
    if isinstance(item, (tuple, list)):
        return fn(*item)
    return fn(item)


def run_all(
    model_or_pipe: Any,
    inputs_or_prompts: Iterable[Any],
    module: Callable[..., Any],
    *,
    steps: int,
    batch_size: int | None,
    seed: int,
    pipe_kwargs: Mapping[str, Any] | None,
    progress: bool,
    desc: str,
) -> None:
    """``module`` (the model, or what stands in for it or for a pipeline's transformer: a compiled or hooked
    copy) over every example input, or over a pipeline's whole sampling loop of every prompt: what calibrate
    and distill both need to see."""
    if is_pipeline(model_or_pipe):
        sample_pipeline(
            model_or_pipe,
            list(inputs_or_prompts),
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            pipe_kwargs=pipe_kwargs,
            transformer=module,
            progress=progress,
            desc=desc,
        )
        return
    total = len(inputs_or_prompts) if isinstance(inputs_or_prompts, Sequence) else None
    for item in tqdm(inputs_or_prompts, total=total, desc=desc, unit="call", disable=not progress):
        call(module, item)


def sample_pipeline(
    pipe: Any,
    prompts: list[Any],
    *,
    steps: int,
    batch_size: int | None,
    seed: int,
    pipe_kwargs: Mapping[str, Any] | None,
    transformer: torch.nn.Module | None = None,
    progress: bool,
    desc: str,
) -> None:
    """The pipeline's sampling loop over every batch of prompts (``batch_size`` per call, default all; prompt i
    from seed ``seed + i``; latents out), with ``transformer`` in place of its own while it runs (None: its own)."""
    if not prompts:
        raise ValueError(f"{desc}: no prompts")
    if "callback_on_step_end" not in pyinspect.signature(pipe.__call__).parameters:
        raise TypeError(
            f"{type(pipe).__name__}.__call__ takes no callback_on_step_end: {desc} follows the steps "
            "through it (every diffusers DiT pipeline has it)"
        )
    size = batch_size or len(prompts)
    batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    bar = tqdm(total=len(batches) * steps, desc=desc, unit="step", disable=not progress)

    def on_step(_pipe: Any, _i: int, _t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        bar.update(1)
        return callback_kwargs

    original = pipe.transformer
    if transformer is not None:
        pipe.transformer = transformer
    bar_config = getattr(pipe, "_progress_bar_config", None)
    if hasattr(pipe, "set_progress_bar_config"):  # ours counts the steps
        pipe.set_progress_bar_config(**{**(bar_config or {}), "disable": True})
    try:
        with bar:
            for b, batch in enumerate(batches):
                generators = [torch.Generator().manual_seed(seed + b * size + i) for i in range(len(batch))]
                pipe(
                    **batched_prompts(batch),
                    num_inference_steps=steps,
                    generator=generators,
                    output_type="latent",
                    callback_on_step_end=on_step,
                    **(pipe_kwargs or {}),
                )
    finally:
        pipe.transformer = original
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(**(bar_config or {}))


def batched_prompts(prompts: list[Any]) -> dict[str, Any]:
    """Pipeline kwargs for a batch of prompts: ``prompt=[...]``, or dict prompts' tensors concatenated (pipelines
    without a text encoder take per-prompt embeddings)."""
    if isinstance(prompts[0], str):
        return {"prompt": prompts}
    keys = set(prompts[0])
    merged: dict[str, Any] = {}
    for key in keys:
        values = [p.get(key) for p in prompts]
        if any(set(p) != keys for p in prompts):
            raise ValueError(f"prompt dicts of one batch must have the same keys, got {[sorted(p) for p in prompts]}")
        if all(isinstance(v, torch.Tensor) for v in values):
            merged[key] = torch.cat(values)
        elif all(v == values[0] for v in values):
            merged[key] = values[0]
        else:
            raise ValueError(f"prompt dicts of one batch differ in {key!r}; use batch_size=1")
    return merged
