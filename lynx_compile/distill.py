"""``lynx_compile.distill``: refine the low-rank factors of every GEMM jointly, end to end, against the dense
model's outputs, starting from the closed-form fit (docs/design.md, "Low-rank compensation").

The closed form minimises each layer's own error on dense inputs; in the pruned network the errors of all
layers add up and interact, which no per-layer objective sees. Here the dense model's calls are recorded (for a
pipeline its real sampling loop: every transformer call and its output), every calibrated ``nn.Linear`` is put
on the compiled layer's semantics ``P(x) W^T + b + (x A) B`` with A and B trainable, and Adam steps on the
squared error of the model's output against the dense one, the model's own weights frozen.

The loss is relative to the dense outputs' energy pooled over all recorded calls, not to each call's own: a
flow-matching sampler's last call predicts almost nothing (the yardstick's has a seventh of the others' energy)
and moves the image by almost nothing, yet per call its relative error is the largest by far, and a per-call
normalisation spent the whole distillation on it (docs/design.md, "Low-rank compensation").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from . import lowrank
from .calibration import Calibration, CalibrationMismatch, resolve
from .calibrator import is_pipeline, run_all
from .semantics import pruning
from .zoo import sample

log = logging.getLogger("lynx_compile")

# Adam's learning rate, the one that worked on the yardstick (1e-3 diverged there; benchmarks/quality, DISTILL_LR)
LR = 1e-4

Call = tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]  # a recorded call: args, kwargs, the dense output


def distill(
    model_or_pipe: Any,
    inputs_or_prompts: Iterable[Any],
    calibration: Calibration | str | os.PathLike,
    *,
    rank: int,
    steps: int,
    lr: float = LR,
    num_inference_steps: int = 28,
    batch_size: int | None = None,
    seed: int = 0,
    pipe_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Calibration:
    """``calibration`` with the rank-``rank`` factors of its ``nn.Linear`` GEMMs refined by ``steps`` Adam steps
    (learning rate ``lr``) on the dense model's outputs; ``factors(name, rank)`` of the result returns them, other
    ranks stay closed form. Its ``distilled[rank]`` records the steps, ``lr`` and the relative squared error
    ``sum ||y - y_dense||^2 / sum ||y_dense||^2`` over the recorded calls before (closed form) and after.

    ``model_or_pipe`` and ``inputs_or_prompts`` as for ``calibrate``: a module and its example inputs, or a
    diffusers pipeline and prompts, sampled ``num_inference_steps`` steps, ``batch_size`` prompts per call
    (default all), prompt i from seed ``seed + i``; each step trains on one recorded call, in an order shuffled
    by ``seed``. GEMMs that are not ``nn.Linear`` modules called once per forward keep their closed form.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"distill: rank must be a positive int, got {rank!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"distill: steps must be a non-negative int, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"distill: lr must be a positive number, got {lr!r}")
    calibration = resolve(calibration)
    model = model_or_pipe.transformer if is_pipeline(model_or_pipe) else model_or_pipe
    if not isinstance(model, nn.Module):
        raise TypeError(f"distill needs an nn.Module or a diffusers pipeline, got {type(model_or_pipe).__name__}")
    linears = _linears(model, calibration)
    calls = _record(
        model_or_pipe, model, inputs_or_prompts, num_inference_steps, batch_size, seed, pipe_kwargs, progress
    )
    factors = {
        name: tuple(nn.Parameter(f.to(linear.weight.device, copy=True)) for f in calibration.closed_form(name, rank))
        for name, linear in linears.items()
    }  # copies (the closed forms are cached), float64 as they are (cast to x's dtype in the layer)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    hooks = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for name, linear in linears.items():
            order = None
            if calibration.options["permute_channels"]:
                order = calibration.channel_order([name]).to(linear.weight.device)
            prune = pruning(calibration.options["compensate"], order)
            hooks.append(linear.register_forward_hook(_pruned(prune, *factors[name])))
        before = _relative_error(model, calls, progress)
        if steps:
            _train(model, calls, [f for ab in factors.values() for f in ab], steps, lr, seed, progress)
        after = _relative_error(model, calls, progress) if steps else before
    finally:
        for hook in hooks:
            hook.remove()
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
    log.info("lynx distill: rank %d, %d steps: relative error %.4g -> %.4g", rank, steps, before, after)
    record = {"steps": steps, "lr": lr, "loss_before": before, "loss_after": after}
    return calibration.with_distilled(rank, {n: (a.detach(), b.detach()) for n, (a, b) in factors.items()}, record)


def _linears(model: nn.Module, calibration: Calibration) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of the calibration's GEMMs (checked against their K x N); the other GEMMs are
    logged, and GEMM names the model has nothing of are a ``CalibrationMismatch``."""
    modules = dict(model.named_modules())
    tensors = {name for name, _ in (*model.named_parameters(), *model.named_buffers())}
    reused = {name.partition("#")[0] for name in calibration.names if "#" in name}  # "w#1": w's second use
    linears: dict[str, nn.Linear] = {}
    kept, unknown, shapes = [], [], []
    for name, stats in calibration.stats.items():
        module = modules.get(name)
        if isinstance(module, nn.Linear) and name not in reused:
            if (module.in_features, module.out_features) == (stats.k, stats.n):
                linears[name] = module
            else:
                shapes.append(
                    f"{name} is K x N = {(module.in_features, module.out_features)} in the model, "
                    f"{(stats.k, stats.n)} in the calibration"
                )
        elif name.partition("#")[0] in modules or name.partition("#")[0] in tensors:
            kept.append(name)
        else:
            unknown.append(name)
    if unknown or shapes:
        raise CalibrationMismatch(
            f"calibration {calibration.source} does not fit this {type(model).__name__}: "
            + "; ".join([*shapes, *([f"no module or parameter named {unknown}"] if unknown else [])])
        )
    if not linears:
        raise CalibrationMismatch(
            f"calibration {calibration.source}: none of its GEMMs is an nn.Linear of this {type(model).__name__} "
            "called once per forward: nothing to distil"
        )
    if kept:
        log.warning(
            "lynx distill: %d GEMMs keep their closed-form factors (not an nn.Linear called once per forward): %s",
            len(kept),
            kept,
        )
    return linears


def _record(
    model_or_pipe: Any,
    model: nn.Module,
    inputs_or_prompts: Iterable[Any],
    num_inference_steps: int,
    batch_size: int | None,
    seed: int,
    pipe_kwargs: Mapping[str, Any] | None,
    progress: bool,
) -> list[Call]:
    """Every call of ``model`` while the dense model (or pipeline) runs on its inputs, with its output."""
    calls: list[Call] = []

    def keep(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        copy = pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), (args, kwargs))
        calls.append((*copy, sample(output).detach().clone()))

    hook = model.register_forward_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            run_all(
                model_or_pipe,
                inputs_or_prompts,
                model,
                steps=num_inference_steps,
                batch_size=batch_size,
                seed=seed,
                pipe_kwargs=pipe_kwargs,
                progress=progress,
                desc="lynx distill: dense",
            )
    finally:
        hook.remove()
    if not calls:
        raise ValueError("distill: no inputs (the model never ran)")
    return calls


def _pruned(prune: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> Callable[..., Any]:
    """A forward hook giving an ``nn.Linear`` the compiled layer's output, ``P(x) W^T + b + (x A) B``."""

    def hook(module: nn.Linear, args: tuple[Any, ...], _output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return F.linear(prune(x), module.weight, module.bias) + lowrank.branch(x, a.to(x.dtype), b.to(x.dtype))

    return hook


def _squared_error(output: Any, target: torch.Tensor) -> torch.Tensor:
    """``||y - y_dense||^2`` in float32."""
    return (sample(output).float() - target.float()).square().sum()


def _energy(calls: list[Call]) -> float:
    """The dense outputs' mean ``||y_dense||^2`` per call: the losses' scale."""
    energy = sum(target.float().square().sum().item() for _, _, target in calls) / len(calls)
    return max(energy, torch.finfo(torch.float32).tiny)


def _relative_error(model: nn.Module, calls: list[Call], progress: bool) -> float:
    """``sum ||y - y_dense||^2 / sum ||y_dense||^2`` over the recorded calls."""
    with torch.no_grad():
        errors = [
            _squared_error(model(*args, **kwargs), target).item()
            for args, kwargs, target in tqdm(calls, desc="lynx distill: loss", unit="call", disable=not progress)
        ]
    return sum(errors) / len(errors) / _energy(calls)


def _train(
    model: nn.Module, calls: list[Call], params: list[torch.Tensor], steps: int, lr: float, seed: int, progress: bool
) -> None:
    """``steps`` Adam steps, one recorded call each, every call once per pass in an order shuffled by ``seed``; the
    loss is the call's squared error over the mean dense energy (the module docstring says why not over its own)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    energy = _energy(calls)
    order: list[int] = []
    with torch.enable_grad(), tqdm(total=steps, desc="lynx distill", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            if not order:
                order = torch.randperm(len(calls), generator=generator).tolist()
            args, kwargs, target = calls[order.pop()]
            loss = _squared_error(model(*args, **kwargs), target) / energy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4g}")
            bar.update()
