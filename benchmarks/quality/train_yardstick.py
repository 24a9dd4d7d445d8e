"""Train the quality yardstick: the evaluator, then the text-to-image MMDiT, then grade it dense.

    python -m benchmarks.quality.train_yardstick                  # H100: ~7 minutes in all
    python -m benchmarks.quality.train_yardstick --device cpu --tiny --steps 2 --evaluator-steps 2 --out /tmp/y

1. Evaluator (``lynx_compile.yardstick.evaluator``): AdamW on fresh augmented renders; accuracy per
   head on fresh clean renders, saved beside its weights.
2. Yardstick: flow matching as SD3 trains (logit-normal sigma, ``x_t = (1 - sigma) x0 + sigma noise``,
   target ``noise - x0``, ``timestep = 1000 sigma``), text encoder trained jointly, 10% empty
   captions (for classifier-free guidance), EMA weights saved every ``--save-every-minutes``, so a
   run killed by a time limit still leaves a usable model.
3. Dense evaluation: 64 fixed captions sampled at guidance 1-5; adherence and the evaluator's
   Fréchet distance per scale; the best adherence becomes the pipeline's default guidance. It is
   chosen here, on the dense model, before anything is pruned.
4. Artefacts in ``--out``: the pipeline, the evaluator, loss.png, samples.png, MODEL_CARD.md,
   train_log.json; the last line printed is ``YARDSTICK_DONE steps=... final_loss=... adherence=... guidance=...``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from lynx_compile.yardstick import (
    EVALUATOR_PATH,
    HEADS,
    IGNORE,
    TINY_OVERRIDES,
    TRANSFORMER_CONFIG,
    WEIGHTS_DIR,
    Evaluator,
    Scene,
    TextEncoder,
    YardstickPipeline,
    accuracy,
    adherence,
    augment,
    build_pipeline,
    caption,
    features,
    frechet_distance,
    labels,
    load_evaluator,
    load_pipeline,
    predict,
    render,
    sample_scenes,
    save_evaluator,
    save_pipeline,
)

log = logging.getLogger(__name__)
COMMAND = "python -m benchmarks.quality.train_yardstick"
GUIDANCE_SCALES = (1.0, 2.0, 3.0, 4.0, 5.0)
EVAL_CAPTION_SEED, REFERENCE_SEED = 1234, 4321  # fixed whatever --seed: every run is graded on the same captions


@dataclass(frozen=True)
class Budget:
    """How much of everything a run does: the full run for the GPU, a tiny one for CPU tests."""

    batch: int  # yardstick training batch unless --batch
    evaluator_batch: int
    accuracy_images: int  # fresh images the evaluator is scored on
    captions: int  # dense evaluation captions
    sampling_steps: int
    reference_images: int  # renders the Fréchet distance compares samples against
    sample_batch: int  # prompts per pipeline call (x2 with guidance)


FULL = Budget(
    batch=256,
    evaluator_batch=256,
    accuracy_images=4096,
    captions=64,
    sampling_steps=28,
    reference_images=2048,
    sample_batch=64,
)
TINY = Budget(
    batch=8, evaluator_batch=8, accuracy_images=32, captions=8, sampling_steps=2, reference_images=32, sample_batch=8
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where every artefact goes (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="data, initialisation and caption dropout")
    p.add_argument("--batch", type=int, default=None, help=f"yardstick batch (default {FULL.batch}, tiny {TINY.batch})")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-time limit of the yardstick's training")
    p.add_argument("--steps", type=int, default=None, help="step limit of the yardstick's training (first limit wins)")
    p.add_argument("--evaluator-steps", type=int, default=1500)
    p.add_argument("--save-every-minutes", type=float, default=1.5, help="EMA checkpoint interval")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument(
        "--decay",
        choices=("none", "cosine"),
        default="none",
        help="learning rate after warm-up: constant, or cosine to zero over --minutes",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a directory this script wrote: continue from its EMA weights and reuse its evaluator "
        "(a second stage of the same training; the model card lists every stage)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (eager if it fails)")
    p.add_argument("--tiny", action="store_true", help="1 layer, 1 head, a few eval captions and steps (CPU tests)")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "evaluator_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.minutes <= 0 or args.save_every_minutes < 0:
        p.error("--minutes must be positive and --save-every-minutes not negative")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget = TINY if args.tiny else FULL
    batch = args.batch or budget.batch
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    if args.resume is None:
        evaluator, evaluator_acc, evaluator_losses, evaluator_s = train_evaluator(args, budget, device)
    else:
        evaluator = load_evaluator(args.resume / EVALUATOR_PATH.name, device)
        save_evaluator(evaluator, args.out / EVALUATOR_PATH.name)
        evaluator_acc, evaluator_losses, evaluator_s = {"clean": evaluator.accuracy}, [], 0.0
    print(
        f"evaluator: {evaluator_s:.0f} s, accuracy on {budget.accuracy_images} fresh images: "
        + ", ".join(f"{k} {v:.4f}" for k, v in evaluator_acc["clean"].items()),
        flush=True,
    )

    record = {
        "seed": args.seed,
        "batch": batch,
        "gpu": _gpu_name(device),
        "versions": _versions(),
        "command": " ".join([COMMAND, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "transformer_config": {**TRANSFORMER_CONFIG, **(TINY_OVERRIDES if args.tiny else {})},
        "evaluator_accuracy": evaluator_acc["clean"],
        "hyperparameters": {
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "betas": [0.9, 0.99],
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "ema_decay": args.ema_decay,
            "caption_dropout": args.caption_dropout,
            "decay": args.decay,
            "autocast": "bf16" if device.type == "cuda" else "none (float32)",
        },
    }
    train = train_yardstick(args, budget, batch, device, record)

    eval_started = time.perf_counter()
    pipe = load_pipeline(args.out, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    evaluation, samples, scenes = evaluate(pipe, evaluator, budget, device)
    evaluation_s = time.perf_counter() - eval_started
    pipe.default_guidance_scale = evaluation["guidance"]
    pipe.record = {**pipe.record, "evaluation": evaluation, "complete": True}
    save_pipeline(pipe, args.out)

    timings = {
        "evaluator_s": evaluator_s,
        "train_s": train["seconds"],
        "evaluation_s": evaluation_s,
        "total_s": time.perf_counter() - started,
        "step_ms": 1e3 * train["seconds"] / max(train["steps"], 1),
    }
    _save_grid(samples, args.out / "samples.png")
    _plot_loss(train["losses"], args.out / "loss.png")
    log_json = {
        "loss": train["losses"],
        "evaluator_loss": evaluator_losses,
        "timings": timings,
        "budget": asdict(budget),
    }
    (args.out / "train_log.json").write_text(json.dumps(log_json) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(pipe, evaluator, budget, timings, scenes))

    print(_summary(pipe.record, evaluation, timings, args.out))
    adh = evaluation["per_guidance"][str(evaluation["guidance"])]["adherence"]
    print(
        f"YARDSTICK_DONE steps={train['steps']} final_loss={pipe.record['final_loss']:.4f} adherence={adh:.4f} "
        f"guidance={evaluation['guidance']}",
        flush=True,
    )
    return {"record": pipe.record, "timings": timings}


# ---------------------------------------------------------------- stage 1: evaluator


def train_evaluator(
    args: argparse.Namespace, budget: Budget, device: torch.device
) -> tuple[Evaluator, dict[str, dict[str, float]], list[float], float]:
    """AdamW with warm-up and cosine decay on fresh augmented renders; accuracy on fresh renders, clean
    and augmented (what it must read on generated images)."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 10)
        evaluator = Evaluator().to(device)
    data = torch.Generator().manual_seed(args.seed + 11)
    pixels = torch.Generator(device).manual_seed(args.seed + 12)
    steps = args.evaluator_steps
    opt = torch.optim.AdamW(evaluator.parameters(), lr=2e-3, weight_decay=0.01)
    warmup = min(100, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    )
    losses: list[torch.Tensor] = []
    evaluator.train()
    for _ in tqdm(range(steps), desc="evaluator", mininterval=_bar_interval()):
        scenes = sample_scenes(budget.evaluator_batch, data)
        x = augment(render(scenes, pixels, device), pixels)
        target = {k: v.to(device, non_blocking=True) for k, v in labels(scenes).items()}
        with _autocast(device):
            logits = evaluator(x)
        loss = sum(
            F.cross_entropy(logits[k].float().flatten(0, -2), target[k].flatten(), ignore_index=IGNORE) for k in HEADS
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    scenes = sample_scenes(budget.accuracy_images, torch.Generator().manual_seed(args.seed + 13))
    clean = render(scenes, torch.Generator(device).manual_seed(args.seed + 14), device)
    noisy = augment(clean, torch.Generator(device).manual_seed(args.seed + 15))
    acc = {
        "clean": accuracy(predict(evaluator, clean / 2 + 0.5), scenes),
        "augmented": accuracy(predict(evaluator, noisy / 2 + 0.5), scenes),
    }
    evaluator.accuracy = acc["clean"]
    save_evaluator(evaluator, args.out / "evaluator.safetensors")
    return evaluator, acc, torch.stack(losses).tolist() if losses else [], time.perf_counter() - started


# ---------------------------------------------------------------- stage 2: yardstick


def flow_matching_loss(
    transformer: torch.nn.Module,
    text_encoder: TextEncoder,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """SD3's rectified-flow objective: predict the velocity ``noise - x0`` at ``x_t``."""
    s = sigma.view(-1, 1, 1, 1)
    hidden, pooled = text_encoder(ids)
    pred = transformer(
        hidden_states=(1 - s) * x0 + s * noise,
        timestep=sigma * 1000,
        encoder_hidden_states=hidden,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    return F.mse_loss(pred.float(), noise - x0)


def _forward_backward(fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...], device: torch.device) -> torch.Tensor:
    with _autocast(device):
        loss = fn(*inputs)
    loss.backward()
    return loss


def adaln_zero_init(transformer: torch.nn.Module) -> None:
    """DiT's adaLN-Zero: modulations and the output projection start at zero, so every block starts as
    the identity (DiT, Peebles & Xie 2023: trains markedly faster than the default init)."""
    for name, module in transformer.named_modules():
        if name == "proj_out" or name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear")):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def train_yardstick(
    args: argparse.Namespace, budget: Budget, batch: int, device: torch.device, record: dict[str, Any]
) -> dict[str, Any]:
    if args.resume is None:
        pipe = build_pipeline(args.seed, TINY_OVERRIDES if args.tiny else None, device=device)
        adaln_zero_init(pipe.transformer)
    else:
        pipe = load_pipeline(args.resume, device=device, dtype=torch.float32)
        earlier = pipe.record
        record["stages"] = [
            *earlier.get("stages", []),
            {k: earlier[k] for k in ("command", "steps", "minutes", "final_loss", "gpu")},
        ]
    transformer, text_encoder, tokenizer = pipe.transformer, pipe.text_encoder, pipe.tokenizer
    params = [*transformer.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=device.type == "cuda")

    def lr_factor(s: int) -> float:
        """Linear warm-up; then constant, or cosine to zero over the wall-time budget (the run stops on time)."""
        warm = min((s + 1) / args.warmup, 1.0)
        if args.decay == "none" or s == 0:
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min((time.perf_counter() - started) / limit, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    ema = EMAModel(params, decay=args.ema_decay, foreach=True)
    ema_pipe = YardstickPipeline(copy.deepcopy(transformer), copy.deepcopy(text_encoder), tokenizer, pipe.scheduler)
    ema_params = [*ema_pipe.transformer.parameters(), *ema_pipe.text_encoder.parameters()]
    data = torch.Generator().manual_seed(args.seed)  # scenes and caption dropout
    pixels = torch.Generator(device).manual_seed(args.seed + 1)  # render jitter and textures
    noise_gen = torch.Generator(device).manual_seed(args.seed + 2)  # noise and sigma
    step_fn: Callable[..., torch.Tensor] = torch.compile(flow_matching_loss) if args.compile else flow_matching_loss
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    step = 0
    started = time.perf_counter()
    limit = args.minutes * 60

    def fetch_losses() -> None:
        """Move the pending losses to the host (this waits for the GPU); a non-finite one stops the run
        before it can reach a checkpoint."""
        new = torch.stack(pending).tolist() if pending else []
        pending.clear()
        if not all(math.isfinite(v) for v in new):
            raise FloatingPointError(
                f"the training loss became {new} near step {step}; the last checkpoint in {args.out} predates it"
            )
        losses.extend(new)

    def checkpoint(complete: bool) -> None:
        fetch_losses()
        ema.copy_to(ema_params)
        tail = losses[-200:]
        ema_pipe.record = {
            **record,
            "steps": step,
            "final_loss": sum(tail) / max(len(tail), 1),
            "minutes": (time.perf_counter() - started) / 60,
            "compiled": step_fn is not flow_matching_loss,
            "complete": complete,
        }
        save_pipeline(ema_pipe, args.out)

    started = last_save = time.perf_counter()
    bar = tqdm(total=args.steps, desc="yardstick", unit="step", mininterval=_bar_interval())
    transformer.train()
    while step == 0 or ((args.steps is None or step < args.steps) and time.perf_counter() - started < limit):
        scenes = sample_scenes(batch, data)
        drop = (torch.rand(batch, generator=data) < args.caption_dropout).tolist()
        captions = ["" if d else caption(s) for s, d in zip(scenes, drop, strict=True)]
        ids = tokenizer.encode(captions).to(device, non_blocking=True)
        x0 = render(scenes, pixels, device)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        sigma = torch.sigmoid(torch.randn(batch, generator=noise_gen, device=device))
        inputs = (transformer, text_encoder, x0, noise, sigma, ids)
        try:
            loss = _forward_backward(step_fn, inputs, device)
        except Exception as e:  # only a compile failure on the first step falls back; anything else raises
            if step_fn is flow_matching_loss or step > 0:
                raise
            log.warning("torch.compile of the training step failed (%s: %s); training in eager", type(e).__name__, e)
            step_fn = flow_matching_loss
            opt.zero_grad(set_to_none=True)
            loss = _forward_backward(step_fn, inputs, device)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(params)
        pending.append(loss.detach())
        step += 1
        bar.update()
        if len(pending) >= 50:  # fetching a loss waits for the GPU: every 50 steps only
            fetch_losses()
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}", refresh=False)
        if time.perf_counter() - last_save >= args.save_every_minutes * 60:
            checkpoint(complete=False)
            last_save = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - started
    checkpoint(complete=False)  # complete once evaluated
    print(
        f"yardstick: {step} steps of batch {batch} in {seconds / 60:.2f} min, "
        f"loss (mean of the last 200) {ema_pipe.record['final_loss']:.4f}",
        flush=True,
    )
    return {"steps": step, "seconds": seconds, "losses": losses}


# ---------------------------------------------------------------- stage 3: dense evaluation


def evaluate(
    pipe: YardstickPipeline, evaluator: Evaluator, budget: Budget, device: torch.device
) -> tuple[dict[str, Any], torch.Tensor, list[Scene]]:
    """Adherence and Fréchet distance per guidance scale on fixed captions and per-prompt seeds; the
    scale with the best adherence (ties: the smaller distance) is chosen. Also the same numbers for the
    renderer's own images of those captions: the ceiling a perfect generator would reach."""
    scenes = sample_scenes(budget.captions, torch.Generator().manual_seed(EVAL_CAPTION_SEED))
    prompts = [caption(s) for s in scenes]
    reference = (
        render(
            sample_scenes(budget.reference_images, torch.Generator().manual_seed(REFERENCE_SEED)),
            torch.Generator().manual_seed(REFERENCE_SEED + 1),
            device,
        )
        / 2
        + 0.5
    )
    reference_features = features(evaluator, reference)
    real = render(scenes, torch.Generator().manual_seed(EVAL_CAPTION_SEED + 1), device) / 2 + 0.5
    renderer = {
        "adherence": adherence(evaluator, real, scenes),
        "frechet": frechet_distance(features(evaluator, real), reference_features),
    }
    pipe.set_progress_bar_config(disable=True)
    per_guidance, images = {}, {}
    for g in GUIDANCE_SCALES:
        chunks = []
        for start in range(0, len(prompts), budget.sample_batch):
            end = min(start + budget.sample_batch, len(prompts))
            generators = [torch.Generator().manual_seed(i) for i in range(start, end)]
            chunks.append(
                pipe(
                    prompts[start:end],
                    num_inference_steps=budget.sampling_steps,
                    guidance_scale=g,
                    generator=generators,
                ).images
            )
        images[g] = torch.cat(chunks)
        per_guidance[str(g)] = {
            "adherence": adherence(evaluator, images[g], scenes),
            "frechet": frechet_distance(features(evaluator, images[g]), reference_features),
        }
        print(
            f"guidance {g}: adherence {per_guidance[str(g)]['adherence']:.4f}, "
            f"Fréchet distance {per_guidance[str(g)]['frechet']:.3f}",
            flush=True,
        )
    best = max(GUIDANCE_SCALES, key=lambda g: (per_guidance[str(g)]["adherence"], -per_guidance[str(g)]["frechet"]))
    evaluation = {
        "guidance": best,
        "per_guidance": per_guidance,
        "renderer": renderer,
        "captions": len(prompts),
        "steps": budget.sampling_steps,
        "reference_images": budget.reference_images,
        "caption_seed": EVAL_CAPTION_SEED,
        "reference_seed": REFERENCE_SEED,
        "sample_seeds": f"0..{len(prompts) - 1}, one generator per prompt",
    }
    return evaluation, images[best], scenes


# ---------------------------------------------------------------- stage 4: artefacts


_DECAY = {"none": "constant", "cosine": "cosine decay to zero"}


def _stages(record: dict[str, Any]) -> str:
    """The earlier stages a ``--resume`` continued from, one line each (empty for a single stage)."""
    return "".join(
        f"- Stage {i + 1}: {st['steps']} steps in {st['minutes']:.2f} minutes on {st['gpu']}, final loss "
        f"{st['final_loss']:.4f} (`{st['command']}`); the next stage starts from its EMA weights.\n"
        for i, st in enumerate(record.get("stages", []))
    )


def model_card(
    pipe: YardstickPipeline, evaluator: Evaluator, budget: Budget, timings: dict[str, float], scenes: Sequence[Scene]
) -> str:
    r, ev, h = pipe.record, pipe.record["evaluation"], pipe.record["hyperparameters"]
    n_transformer = sum(p.numel() for p in pipe.transformer.parameters())
    n_text = sum(p.numel() for p in pipe.text_encoder.parameters())
    n_eval = sum(p.numel() for p in evaluator.parameters())
    rows = "\n".join(f"| {g} | {v['adherence']:.4f} | {v['frechet']:.3f} |" for g, v in ev["per_guidance"].items())
    config = ", ".join(f"{k}={v!r}" for k, v in r["transformer_config"].items())
    captions = "\n".join(f"{i + 1}. {caption(s)}" for i, s in enumerate(scenes))
    acc = ", ".join(f"{k} {v:.4f}" for k, v in r["evaluator_accuracy"].items())
    return f"""# The yardstick: a text-to-image MMDiT trained on procedural scenes

A small text-conditioned Diffusion Transformer, trained here, on which the image quality of 2:4
activation pruning is measured: the zoo's models have random weights and cannot say whether images
stay good. Load it with `lynx_compile.yardstick.load_pipeline()`; grade images with
`lynx_compile.yardstick.load_evaluator()`.

## Model
- Transformer: diffusers `SD3Transformer2DModel` (MMDiT) in pixel space, 64x64 RGB, patch 4 (256
  image tokens), {n_transformer:,} parameters; config:
  `{config}`.
- Text encoder: token + position embedding and LayerNorm (24 tokens x 256), {n_text:,} parameters;
  pooled = mean over the caption's words. Trained jointly with the transformer.
- Scheduler: `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)`; default
  guidance scale {pipe.default_guidance_scale} (chosen below). Weights stored in bf16.

## Data
Scenes from `lynx_compile.yardstick.scenes`, drawn from seeded generators (nothing on disk): 1-3
objects (circle, square, triangle, diamond; red, green, blue, yellow, magenta, cyan; small or
large) in distinct cells of a 3x3 grid, on a plain, striped, checkered or dotted greyish background.
Captions name every attribute: "{caption(scenes[0])}".

## Training
{_stages(r)}- {r["steps"]} steps of batch {r["batch"]} in {r["minutes"]:.2f} minutes on {r["gpu"]}
  ({timings["step_ms"]:.1f} ms per step), seed {r["seed"]}; torch {r["versions"]["torch"]},
  diffusers {r["versions"]["diffusers"]}, Python {r["versions"]["python"]}.
- Flow matching as SD3: sigma ~ sigmoid(N(0, 1)), x_t = (1 - sigma) x0 + sigma noise, target
  noise - x0, timestep 1000 sigma; {h["caption_dropout"]:.0%} empty captions; AdamW lr {h["lr"]:g}
  ({h["warmup_steps"]} warm-up steps, then {_DECAY[h.get("decay", "none")]}), betas {tuple(h["betas"])},
  weight decay {h["weight_decay"]:g}, gradient
  clip {h["grad_clip"]:g}, autocast {h["autocast"]}, {"torch.compile" if r["compiled"] else "eager"};
  adaLN-Zero init; EMA {h["ema_decay"]:g} (the EMA weights are what is saved and sampled).
- Final loss (mean of the last 200 steps): {r["final_loss"]:.4f} (`loss.png`, `train_log.json`).

## Evaluator
A CNN of {n_eval:,} parameters that reads per cell the shape (or empty), colour and size, and the
background, trained on augmented renders (noise, blur, brightness, contrast, colour gain).
Accuracy on {budget.accuracy_images} fresh renders: {acc}.

## Dense evaluation
{ev["captions"]} fixed captions (`sample_scenes(n, torch.Generator().manual_seed({ev["caption_seed"]}))`), one
generator per prompt seeded 0..{ev["captions"] - 1}, {ev["steps"]} steps. Adherence: the share of the captions'
attributes (per object shape, colour and size at its cell, and the background) the evaluator finds.
Fréchet distance: between Gaussians fitted to the evaluator's 128 features of the samples and of
{ev["reference_images"]} fresh renders (an FID in miniature; with {ev["captions"]} samples it carries a
sampling bias, so compare it only between runs of the same size).

| guidance | adherence | Fréchet distance |
|---|---|---|
{rows}

Chosen guidance: **{ev["guidance"]}** (best adherence, on the dense model, before any pruning).
The renderer's own images of the same captions: adherence {ev["renderer"]["adherence"]:.4f},
Fréchet distance {ev["renderer"]["frechet"]:.3f} (what a perfect generator would score).
`samples.png`: the {ev["captions"]} samples at the chosen guidance, row by row, captions:

{captions}

## What it can and cannot tell
- It can tell whether a change to the sampler (2:4 activation pruning, compensation, a kernel)
  changes *what* a trained DiT draws: the same prompts and seeds, dense against pruned, graded by
  attributes. It is a real diffusers MMDiT with SD3's blocks, trained, so its activations have the
  structure training gives (unlike random weights).
- It cannot stand for a real checkpoint's numbers: it is 256 wide, 6 blocks, pixel space, 256
  tokens, trained for minutes on a narrow synthetic distribution; real DiTs are 10-100x wider, see
  latents through a VAE and far richer text. How much pruning costs there (sharpness, texture,
  text rendering, aesthetics) must be measured on those checkpoints. Its Fréchet distance uses a
  small evaluator's features, not Inception's, so it is not comparable to published FIDs.

## Reproduce
`{r["command"]}`
"""


def _save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Images (n, 3, 64, 64) in [0, 1], row by row, each drawn 2x."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(rows * columns, 3, h, w)
    grid[:n] = images.float().cpu()
    grid = grid.view(rows, columns, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, columns * w, 3)
    image = Image.fromarray((grid * 255).round().byte().numpy())
    image.resize((columns * w * 2, rows * h * 2), Image.NEAREST).save(path)


def _plot_loss(losses: Sequence[float], path: Path, width: int = 900, height: int = 420) -> None:
    """Raw loss per step (grey) and its moving average (blue), drawn with PIL."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.text((left, 8), f"flow-matching loss per step ({len(losses)} steps): raw, and moving average", fill="black")
    if losses:
        window = max(1, len(losses) // 50)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        ordered = sorted(losses)
        y_max = ordered[int(0.99 * (len(ordered) - 1))] * 1.1 or 1.0
        x_of = lambda i: left + (right - left) * i / max(len(losses) - 1, 1)
        y_of = lambda v: bottom - (bottom - top) * min(v, y_max) / y_max
        for values, colour in ((losses, (190, 190, 190)), (smooth, (30, 80, 200))):
            points = [(x_of(i), y_of(v)) for i, v in enumerate(values)]
            draw.line(points if len(points) > 1 else points * 2, fill=colour, width=1 if colour[0] > 100 else 2)
        for k in range(5):
            v = y_max * k / 4
            draw.line([(left - 4, y_of(v)), (left, y_of(v))], fill="black")
            draw.text((5, y_of(v) - 6), f"{v:.3f}", fill="black")
        draw.text((right - 60, bottom + 10), f"step {len(losses)}", fill="black")
    draw.rectangle([left, top, right, bottom], outline="black")
    img.save(path)


def _summary(record: dict[str, Any], evaluation: dict[str, Any], timings: dict[str, float], out: Path) -> str:
    lines = [
        "evaluator accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in record["evaluator_accuracy"].items()),
        f"yardstick: {record['steps']} steps, batch {record['batch']}, {record['minutes']:.2f} min, "
        f"{timings['step_ms']:.1f} ms/step, final loss {record['final_loss']:.4f}, {record['gpu']}",
        *(
            f"guidance {g}: adherence {v['adherence']:.4f}, Fréchet {v['frechet']:.3f}"
            for g, v in evaluation["per_guidance"].items()
        ),
        f"renderer's images: adherence {evaluation['renderer']['adherence']:.4f}, "
        f"Fréchet {evaluation['renderer']['frechet']:.3f}",
        f"chosen guidance {evaluation['guidance']}; times: evaluator {timings['evaluator_s']:.0f} s, "
        f"training {timings['train_s']:.0f} s, evaluation {timings['evaluation_s']:.0f} s, "
        f"total {timings['total_s']:.0f} s; artefacts in {out}",
    ]
    return "\n".join(lines)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp32 master weights); full float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bar_interval() -> float:
    """Seconds between progress-bar refreshes: a bar in a log (no terminal) would otherwise fill it."""
    return 0.5 if sys.stderr.isatty() else 30.0


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
