"""Where ``lynx-compile quality`` gets its pipeline and prompts: the yardstick, a zoo pipeline, or a
local diffusers checkpoint, each with the prompts that suit it when the user gives none."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import yardstick, zoo

YARDSTICK = "yardstick"
REFERENCE_SEED = 99  # the renders the FID-like distance compares with: fresh scenes, never sampled prompts
ZOO_FLUX = "zoo:flux"
ZOO_SIDE = 32  # pixels: the tiny zoo FLUX at 32x32 is 64 tokens, seconds per config on a CPU
# For a real checkpoint run without --prompt: everyday scenes, one per line of the grid.
DEFAULT_PROMPTS = (
    "a red fox sitting in fresh snow, morning light",
    "a bowl of ramen on a wooden table, steam rising, close-up",
    "a lighthouse on a rocky coast at sunset, dramatic clouds",
    "an astronaut riding a horse on the moon, detailed illustration",
    "a street market in the rain at night, neon signs reflected in puddles",
    "a watercolor painting of a hummingbird and red flowers",
    "a cozy reading nook with a cat asleep on a pile of books",
    "a vintage bicycle leaning against a blue wall, sharp shadows",
)


@dataclasses.dataclass
class Source:
    """A pipeline to compare, what to call it in the results, and how to make prompts for it."""

    pipe: Any
    kind: str  # "yardstick", "zoo", "diffusers"
    model: str
    call_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # for every pipeline call
    embeddings: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # zoo: one prompt's, as a template


def open_pipeline(spec: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Source:
    """``"yardstick"`` (the trained one), ``"zoo:flux"`` (tiny, random weights) or a directory: a saved
    yardstick (holding ``yardstick.json``) or any diffusers pipeline (``DiffusionPipeline.from_pretrained``)."""
    if spec == YARDSTICK:
        return Source(yardstick.load_pipeline(device=device, dtype=dtype), YARDSTICK, "yardstick (trained)")
    if spec == ZOO_FLUX:
        pipe, kwargs = zoo.flux_pipeline(size="tiny", dtype=dtype, device=device, seed=seed)
        embeddings = {k: kwargs[k] for k in ("prompt_embeds", "pooled_prompt_embeds")}
        return Source(
            pipe,
            "zoo",
            "zoo:flux tiny (random weights)",
            {"height": ZOO_SIDE, "width": ZOO_SIDE, "guidance_scale": kwargs["guidance_scale"]},
            embeddings,
        )
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--pipeline {spec!r}: not {YARDSTICK!r}, {ZOO_FLUX!r} or a directory")
    if (path / "yardstick.json").is_file():
        return Source(yardstick.load_pipeline(path, device=device, dtype=dtype), YARDSTICK, f"yardstick {path}")
    from diffusers import DiffusionPipeline  # a real checkpoint's pipeline class is only known once loaded

    return Source(DiffusionPipeline.from_pretrained(path, torch_dtype=dtype).to(device), "diffusers", str(path))


def default_prompts(source: Source, n: int, seed: int = 0) -> tuple[list[Any], list[yardstick.Scene] | None]:
    """``n`` prompts for ``source`` and, for the yardstick, the scenes they describe: the yardstick's
    captions of seeded random scenes; random prompt embeddings for the zoo (it has no text encoder);
    ``DEFAULT_PROMPTS`` for a real checkpoint."""
    if source.kind == YARDSTICK:
        scenes = yardstick.sample_scenes(n, torch.Generator().manual_seed(seed))
        return [yardstick.caption(s) for s in scenes], scenes
    if source.kind == "zoo":
        g = torch.Generator().manual_seed(seed)
        return [
            {k: torch.randn(v.shape, generator=g).to(v) for k, v in source.embeddings.items()} for _ in range(n)
        ], None
    return [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(n)], None


def scenes_of(prompts: list[str]) -> list[yardstick.Scene] | None:
    """The scenes yardstick captions describe; ``None`` if any prompt is not a yardstick caption."""
    try:
        return [yardstick.parse_caption(p) for p in prompts]
    except ValueError:
        return None


def grading(
    source: Source, scenes: list[yardstick.Scene] | None, references: int, device: torch.device
) -> tuple[yardstick.Evaluator | None, torch.Tensor | None, str]:
    """For the yardstick: its trained evaluator and ``references`` renders of fresh scenes ([0, 1]), or why
    not (no trained evaluator, prompts that are not captions: then there is nothing to grade adherence by)."""
    if source.kind != YARDSTICK:
        return None, None, ""
    try:
        evaluator = yardstick.load_evaluator(device=device)
    except FileNotFoundError as e:
        return None, None, str(e)
    why = "" if scenes is not None else "the prompts are not all yardstick captions: no adherence"
    return evaluator, reference_images(references) if references > 0 else None, why


def reference_images(n: int) -> torch.Tensor:
    """``n`` renders of seeded random scenes, (n, 3, 64, 64) in [0, 1]: what the FID-like distance measures against."""
    scenes = yardstick.sample_scenes(n, torch.Generator().manual_seed(REFERENCE_SEED))
    return (yardstick.render(scenes, generator=torch.Generator().manual_seed(REFERENCE_SEED)) + 1) / 2
