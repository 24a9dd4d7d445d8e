"""The evaluator: a small CNN trained on the scene renderer that grades generated images.

It reads back every attribute a caption names (per cell: shape, colour, size; the background), so
*adherence* (the share of a caption's attributes found in its image) measures whether a sampler
still draws what it was asked for, and its penultimate features give a Fréchet distance to the
renderer's images (an FID in miniature, with this evaluator standing in for Inception).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .model import TRAIN_COMMAND, WEIGHTS_DIR
from .scenes import BACKGROUNDS, COLOURS, GRID, IGNORE, SHAPES, SIZES, Scene, labels

__all__ = [
    "ARCHITECTURE",
    "EVALUATOR_PATH",
    "FEATURES",
    "HEADS",
    "Evaluator",
    "accuracy",
    "adherence",
    "adherence_per_image",
    "augment",
    "features",
    "frechet_distance",
    "load_evaluator",
    "predict",
    "recognised",
    "save_evaluator",
]

ARCHITECTURE = "cnn-v1"  # bump when Evaluator's layers change: saved weights of another version are refused
FEATURES = 128
CELLS = GRID * GRID
HEADS = {
    "shape": (CELLS, 1 + len(SHAPES)),
    "colour": (CELLS, len(COLOURS)),
    "size": (CELLS, len(SIZES)),
    "background": (len(BACKGROUNDS),),
}
EVALUATOR_PATH = WEIGHTS_DIR / "evaluator.safetensors"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class Evaluator(nn.Module):
    """(n, 3, 64, 64) images in [-1, 1] to per-cell and per-image logits (0.53M parameters). The trunk
    keeps an 8x8 map whose flattening keeps *where* things are, so the heads can say which cell holds what."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            _conv(3, 32),
            _conv(32, 48, 2),
            _conv(48, 48),
            _conv(48, 64, 2),
            _conv(64, 64),
            _conv(64, 96, 2),
            _conv(96, 96),
            nn.Conv2d(96, 32, 1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(32 * 8 * 8, FEATURES), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, math.prod(shape)) for name, shape in HEADS.items()})
        self.accuracy: dict[str, float] = {}  # measured on fresh images when trained (saved beside the weights)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h).view(-1, *HEADS[name]) for name, head in self.heads.items()}


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """What a generator's images differ by, at random strengths per image: Gaussian noise (sigma up to
    0.08 of the [0, 1] range), a blur (sigma up to 0.8 px), brightness, contrast and per-channel gain."""
    n, device = images.shape[0], images.device
    rnd = {"generator": generator, "device": generator.device if generator is not None else device}
    u = torch.rand(n, 7, **rnd).to(device)
    x = images / 2 + 0.5
    sigma = 0.8 * u[:, 0] + 1e-3
    taps = torch.arange(-2, 3, device=device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (n*3, 5), one per channel
    flat = x.reshape(1, n * 3, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kernel.view(-1, 1, 1, 5), groups=n * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), kernel.view(-1, 1, 5, 1), groups=n * 3)
    x = flat.view_as(x)
    gain = 1 + 0.05 * (2 * u[:, 1:4] - 1)
    contrast = 1 + 0.1 * (2 * u[:, 4] - 1)
    brightness = 0.08 * (2 * u[:, 5] - 1)
    x = (x - 0.5) * contrast.view(-1, 1, 1, 1) + 0.5 + brightness.view(-1, 1, 1, 1)
    x = x * gain.view(n, 3, 1, 1)
    x = x + 0.08 * u[:, 6].view(-1, 1, 1, 1) * torch.randn(x.shape, **rnd).to(device)
    return x.clamp(0, 1) * 2 - 1


@torch.no_grad()
def predict(evaluator: Evaluator, images_0_1: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """The evaluator's logits (float32, on its device) for images in [0, 1], as the pipelines return them."""
    evaluator.eval()
    device = next(evaluator.parameters()).device
    chunks = [evaluator(x.to(device=device, dtype=torch.float32) * 2 - 1) for x in images_0_1.split(batch_size)]
    return {name: torch.cat([c[name] for c in chunks]) for name in HEADS}


def recognised(logits: Mapping[str, torch.Tensor], scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, how many of its caption's attributes the logits get right, and how many there are:
    shape, colour and size of each object at its cell, and the background."""
    target = {k: v.to(logits["shape"].device) for k, v in labels(scenes).items()}
    occupied = target["shape"] > 0
    hits = (logits["background"].argmax(-1) == target["background"]).long()
    for name in ("shape", "colour", "size"):
        hits = hits + ((logits[name].argmax(-1) == target[name]) & occupied).sum(1)
    return hits, 1 + 3 * occupied.sum(1)


def adherence_per_image(evaluator: Evaluator, images_0_1: torch.Tensor, scenes: Sequence[Scene]) -> torch.Tensor:
    """(n,) the share of each image's caption attributes the evaluator recognises."""
    hits, total = recognised(predict(evaluator, images_0_1), scenes)
    return (hits / total).cpu()


def adherence(evaluator: Evaluator, images_0_1: torch.Tensor, scenes: Sequence[Scene]) -> float:
    """The share of all captions' attributes recognised, pooled over the images."""
    hits, total = recognised(predict(evaluator, images_0_1), scenes)
    return hits.sum().item() / total.sum().item()


def accuracy(logits: Mapping[str, torch.Tensor], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per head: shape over all cells (empty is a class), colour and size over occupied cells, background."""
    target = {k: v.to(logits["shape"].device) for k, v in labels(scenes).items()}
    out = {}
    for name in HEADS:
        keep = target[name] != IGNORE
        out[name] = (logits[name].argmax(-1) == target[name])[keep].float().mean().item()
    return out


@torch.no_grad()
def features(evaluator: Evaluator, images_0_1: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(n, 128) penultimate features (float32, on the evaluator's device) of images in [0, 1]."""
    evaluator.eval()
    device = next(evaluator.parameters()).device
    return torch.cat(
        [evaluator.features(x.to(device=device, dtype=torch.float32) * 2 - 1) for x in images_0_1.split(batch_size)]
    )


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (n, d) feature sets (unbiased covariances):
    ``|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr(sqrt(sqrt(Sa) Sb sqrt(Sa)))``, in float64; nan when a feature
    is not finite (images with nan or inf)."""
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feature sets must be (n, d) with the same d, got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )
    if min(feats_a.shape[0], feats_b.shape[0]) < 2:
        raise ValueError("each feature set needs at least 2 samples to fit a covariance")
    # on the CPU: CUDA's eigh fails to converge on some of these ill-conditioned covariances (H100, torch 2.11)
    a, b = feats_a.detach().cpu().double(), feats_b.detach().cpu().double()
    if not (a.isfinite().all() and b.isfinite().all()):
        return math.nan
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).view(a.shape[1], -1), torch.cov(b.T).view(b.shape[1], -1)
    root_a = _sqrtm(cov_a)
    cross = _sqrtm(root_a @ cov_b @ root_a)
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace()).item()


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding: 0)."""
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def save_evaluator(evaluator: Evaluator, path: str | os.PathLike = EVALUATOR_PATH) -> None:
    """Weights (float32 safetensors) at ``path`` and ``path.json``: architecture version and accuracy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in evaluator.state_dict().items()}, path)
    meta = {
        "architecture": ARCHITECTURE,
        "parameters": sum(p.numel() for p in evaluator.parameters()),
        "accuracy": evaluator.accuracy,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def load_evaluator(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Evaluator:
    """The evaluator ``save_evaluator`` wrote (default: the trained one in the package's ``weights/``), in eval mode."""
    path = EVALUATOR_PATH if path is None else Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"no trained evaluator at {path} (and {meta_path.name}): train one with "
            f"`{TRAIN_COMMAND} --out {path.parent}`"
        )
    meta = json.loads(meta_path.read_text())
    if meta["architecture"] != ARCHITECTURE:
        raise ValueError(
            f"{path} holds evaluator architecture {meta['architecture']!r}, this code builds "
            f"{ARCHITECTURE!r}: retrain with `{TRAIN_COMMAND}`"
        )
    evaluator = Evaluator()
    evaluator.load_state_dict(load_file(path))
    evaluator.accuracy = meta["accuracy"]
    return evaluator.to(device).eval()
