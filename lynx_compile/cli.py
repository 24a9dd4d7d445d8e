"""``lynx-compile``: the demo, the inspection report, the image-quality comparison and the calibration (and
distillation) of low-rank compensation from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import quality, zoo
from .calibrator import calibrate
from .config import LynxConfig
from .distill import LR, distill
from .inspection import inspect
from .quality import pipelines

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lynx-compile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile a small DiT with backend='lynx', compare with dense")
    _model_args(demo, default_model="dit")
    demo.add_argument("--runs", type=int, default=5, help="timed runs of each model (median)")
    demo.set_defaults(resolution=256, batch=2)  # M = 2 x 256 tokens: over the default min_rows
    insp = sub.add_parser("inspect", help="per-GEMM report of what lynx sparsifies and what it costs")
    _model_args(insp, default_model="flux")
    insp.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    insp.add_argument("--dump-graph", metavar="DIR", help="write the FX graphs before/after the pass")
    _quality_args(sub.add_parser("quality", help="dense and lynx images from the same seeds, measured side by side"))
    _calibrate_args(
        sub.add_parser(
            "calibrate",
            help="statistics of a pipeline's dense sampling for options low_rank, permute_channels and refit",
        )
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "quality":
        return _quality(args)
    if args.command == "calibrate":
        return _calibrate(args)
    options = _parse_options(args.option)
    built = _build(args)
    if args.command == "demo":
        return _demo(built, options, args.runs)
    report = inspect(built.model, **built.example_kwargs, options=options)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json())
    if args.dump_graph:
        with torch.no_grad():
            torch.compile(built.model, backend="lynx", options={**options, "dump_graphs": args.dump_graph})(
                **built.example_kwargs
            )
        print(f"FX graphs before/after the pass written to {args.dump_graph}/")
    return 0


def _model_args(p: argparse.ArgumentParser, *, default_model: str) -> None:
    p.add_argument("--model", choices=zoo.ZOO_NAMES, default=default_model)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--depth", type=int, help="transformer blocks (default: the size's)")
    p.add_argument("--width", type=int, help="attention heads (head_dim kept)")
    p.add_argument("--resolution", type=int, help="image side in pixels")
    p.add_argument("--frames", type=int, help="video frames (wan)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", help="local diffusers checkpoint directory instead of random weights")
    _option_arg(p, "a lynx option, VALUE as JSON (e.g. -o min_rows=64 -o 'exclude=[\"*.ff.*\"]')")
    p.add_argument("-v", "--verbose", action="store_true", help="log every per-layer decision")


def _option_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help=text)


def _pipeline_args(
    p: argparse.ArgumentParser,
    *,
    pipeline_help: str,
    num_prompts: int,
    num_prompts_help: str,
    steps_help: str,
    seed: int,
) -> None:
    """What ``quality`` and ``calibrate`` share: which pipeline, which prompts, how it samples, where."""
    p.add_argument("--pipeline", default=pipelines.YARDSTICK, metavar="yardstick|zoo:flux|DIR", help=pipeline_help)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line")
    p.add_argument("--num-prompts", type=int, default=num_prompts, help=num_prompts_help)
    p.add_argument("--steps", type=int, default=28, help=steps_help)
    p.add_argument("--seed", type=int, default=seed, help="prompt i samples from seed + i (and the scenes from seed)")
    p.add_argument("--batch-size", type=int, help="prompts per pipeline call (default: all for the yardstick, else 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _quality_args(p: argparse.ArgumentParser) -> None:
    _pipeline_args(
        p,
        pipeline_help="the trained yardstick, the tiny random zoo FLUX, or a local directory: a saved yardstick or "
        "any diffusers pipeline (DiffusionPipeline.from_pretrained)",
        num_prompts=8,
        num_prompts_help="prompts made when none are given: yardstick captions of random scenes, random embeddings "
        "for the zoo, a built-in list for a checkpoint (default: 8)",
        steps_help="sampling steps",
        seed=0,
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a configuration: lynx options as a JSON object (repeatable; default: "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in quality.DEFAULT_CONFIGS.items() if v is not None)
        + "; dense always runs first)",
    )
    p.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    p.add_argument("--height", type=int, help="image height (diffusers and zoo pipelines)")
    p.add_argument("--width", type=int, help="image width (diffusers and zoo pipelines)")
    p.add_argument(
        "--reference-images",
        type=int,
        default=2048,
        metavar="N",
        help="yardstick: renders the FID-like distance compares with (0: no FID-like)",
    )
    p.add_argument("--no-cost-model", action="store_true", help="add cost_model: false to every lynx configuration")
    p.add_argument("--out", default="quality_out", metavar="DIR", help="where quality.{json,md,png} go")
    p.add_argument("-v", "--verbose", action="store_true", help="log every per-layer decision")


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    _pipeline_args(
        p,
        pipeline_help="as for `lynx-compile quality`",
        num_prompts=32,
        num_prompts_help="prompts made when none are given, as for `quality` but from --seed (default: 32); use "
        "another seed than the evaluation's",
        steps_help="sampling steps: every one is calibrated",
        seed=1000,
    )
    _option_arg(
        p,
        "a lynx option the compiled model will use (the selection, compensate, permute_channels, refit), VALUE as JSON",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the calibration file (FILE and FILE.json)")
    p.add_argument("--rank", type=int, help="the option low_rank the compiled model will use (needed to distil)")
    p.add_argument(
        "--distill-steps",
        type=int,
        default=0,
        metavar="N",
        help="then refine the rank's factors end to end against the dense model's outputs, N Adam steps on the "
        "same prompts' sampling (default 0: the closed form)",
    )
    p.add_argument("--distill-lr", type=float, default=LR, help=f"Adam's learning rate (default {LR:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")


def _calibrate(args: argparse.Namespace) -> int:
    if (
        args.distill_steps < 0
        or (args.distill_steps and args.rank is None)
        or (args.rank is not None and args.rank < 1)
    ):
        raise SystemExit("lynx-compile calibrate: --distill-steps N needs N >= 0 and a --rank R >= 1 to refine")
    _, source, prompts = _open(args, "calibrate")
    if not prompts:
        prompts, _ = pipelines.default_prompts(source, args.num_prompts, args.seed)
    sampling = {
        "batch_size": args.batch_size or (len(prompts) if source.kind == pipelines.YARDSTICK else 1),
        "seed": args.seed,
        "pipe_kwargs": source.call_kwargs,
        "progress": not args.no_progress,
    }
    options = _parse_options(args.option)
    calibration = calibrate(source.pipe, prompts, options=options, steps=args.steps, **sampling)
    if args.distill_steps:
        calibration = distill(
            source.pipe,
            prompts,
            calibration,
            rank=args.rank,
            steps=args.distill_steps,
            lr=args.distill_lr,
            num_inference_steps=args.steps,
            **sampling,
        )
        record = calibration.distilled[args.rank]
        print(
            f"distilled rank {args.rank}, {args.distill_steps} steps: relative output error "
            f"{record['loss_before']:.4g} (closed form) -> {record['loss_after']:.4g}"
        )
    sidecar = calibration.save(args.out)
    print(
        f"{calibration}: wrote {args.out} and {sidecar}; use it with "
        f"options={{'low_rank': {args.rank or 32}, 'calibration': {args.out!r}}}"
    )
    return 0


def _quality(args: argparse.Namespace) -> int:
    configs = _parse_configs(args.config, args.no_cost_model)
    device, source, prompts = _open(args, "quality")
    if prompts:
        scenes = pipelines.scenes_of(prompts) if source.kind == pipelines.YARDSTICK else None
    else:
        prompts, scenes = pipelines.default_prompts(source, args.num_prompts, args.seed)
    pipe_kwargs = dict(source.call_kwargs)
    for key in ("height", "width"):
        if getattr(args, key) is not None:
            if source.kind == pipelines.YARDSTICK:
                raise SystemExit(f"lynx-compile quality: the yardstick samples 64x64 only; --{key} is for the others")
            pipe_kwargs[key] = getattr(args, key)
    evaluator, reference, why = pipelines.grading(source, scenes, args.reference_images, device)
    if device.type == "cpu":
        print(
            "lynx-compile quality on the CPU: the reference path (pruning, then a dense GEMM), the same numbers as "
            "the GPU up to rounding, no speed-up; keep sizes small"
        )
    result = quality.compare(
        source.pipe,
        prompts,
        configs,
        seeds=[args.seed + i for i in range(len(prompts))],
        steps=args.steps,
        guidance_scale=args.guidance,
        pipe_kwargs=pipe_kwargs,
        batch_size=args.batch_size or (len(prompts) if source.kind == pipelines.YARDSTICK else 1),
        evaluator=evaluator,
        scenes=scenes,
        reference_images=reference,
        model=source.model,
        out=args.out,
        progress=not args.no_progress,
    )
    print(result)
    if why:
        print(f"adherence and FID-like not measured: {why}")
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 0


def _open(args: argparse.Namespace, verb: str) -> tuple[torch.device, pipelines.Source, list[Any]]:
    """The device, the opened pipeline and the prompts given (``--prompt``, ``--prompts`` file) of ``verb``."""
    device = torch.device(args.device)
    dtype = _DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    source = pipelines.open_pipeline(args.pipeline, device, dtype, seed=args.seed)
    prompts: list[Any] = list(args.prompt)
    if args.prompts:
        with open(args.prompts) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if prompts and source.kind == "zoo":
        raise SystemExit(f"lynx-compile {verb}: the zoo pipeline has no text encoder: it takes no --prompt")
    return device, source, prompts


def _parse_configs(pairs: list[str], no_cost_model: bool) -> dict[str, dict[str, Any] | None]:
    """``NAME=JSON`` pairs (default: ``quality.DEFAULT_CONFIGS``), every option checked before anything runs."""
    configs: dict[str, dict[str, Any] | None] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if name == quality.DENSE and raw.strip() in ("", "null"):
            configs[name] = None
            continue
        try:
            options = json.loads(raw) if name and sep else None
        except json.JSONDecodeError as e:
            raise SystemExit(f"lynx-compile quality: --config {pair!r}: {raw!r} is not JSON ({e})") from None
        if not isinstance(options, dict):
            raise SystemExit(
                f"lynx-compile quality: --config {pair!r} is not NAME=JSON with a JSON object of lynx "
                """options, e.g. --config 'naive={"compensate": false}'"""
            )
        configs[name] = options
    configs = configs or dict(quality.DEFAULT_CONFIGS)
    if no_cost_model:
        configs = {k: v if v is None else {**v, "cost_model": False} for k, v in configs.items()}
    for options in configs.values():
        LynxConfig.from_options(options)  # fail here, with the list of valid options
    return configs


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"lynx-compile: option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw  # bare strings: -o path=reference
    LynxConfig.from_options(options)  # fail here, with the list of valid options
    return options


def _build(args: argparse.Namespace) -> zoo.ZooModel:
    device = torch.device(args.device)
    dtype = _DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return zoo.build(
        args.model,
        size=args.size,
        depth=args.depth,
        width=args.width,
        resolution=args.resolution,
        frames=args.frames,
        batch=args.batch,
        dtype=dtype,
        device=device,
        checkpoint=args.checkpoint,
    )


def _demo(built: zoo.ZooModel, options: dict[str, Any], runs: int) -> int:
    device = next(built.model.parameters()).device
    print(
        f"lynx demo: {built.name} ({sum(p.numel() for p in built.model.parameters()) / 1e6:.1f}M params) "
        f"on {device}, {built.tokens} tokens"
    )
    report = inspect(built.model, **built.example_kwargs, options=options)
    print(report, end="\n\n")
    with torch.no_grad():
        dense_fn = torch.compile(built.model, backend="inductor")
        lynx_fn = torch.compile(built.model, backend="lynx", options=options)
        t0 = time.perf_counter()
        dense = zoo.sample(dense_fn(**built.example_kwargs))
        t_dense_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        sparse = zoo.sample(lynx_fn(**built.example_kwargs))
        t_lynx_compile = time.perf_counter() - t0
        dense_ms = _median_ms(lambda: dense_fn(**built.example_kwargs), runs, device)
        lynx_ms = _median_ms(lambda: lynx_fn(**built.example_kwargs), runs, device)
    rel = ((sparse.float() - dense.float()).norm() / dense.float().norm()).item()
    paths = sorted({layer.path for layer in report.layers if layer.sparse})
    print(f"paths used by sparse GEMMs: {', '.join(paths) or 'none'}")
    print(f"output error vs dense torch.compile: {rel:.4f} (relative L2)")
    print(f"dense torch.compile: {dense_ms:8.2f} ms/forward (compile {t_dense_compile:.1f} s)")
    print(f"lynx torch.compile : {lynx_ms:8.2f} ms/forward (compile {t_lynx_compile:.1f} s)")
    if any(p.on_cusparselt for p in paths):
        print(f"speed-up over dense torch.compile: {dense_ms / lynx_ms:.2f}x")
    else:
        print("no speed-up is expected here: the reference path prunes on top of a dense GEMM")
    return 0


def _median_ms(fn: Callable[[], Any], runs: int, device: torch.device) -> float:
    """Median wall time per call; on CUDA synchronised, after one warm-up call."""
    fn()
    times = []
    for _ in range(max(runs, 1)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
