"""Why activation pruning works, or does not: the share of each GEMM's input energy that 2:4 pruning
removes (``pruned_E`` = ||x - prune(x)||^2 / ||x||^2, ``lynx_compile.inspect``), at four timesteps of a
28-step sampling run, for the trained yardstick and for the same architecture with random weights.

RT-Lynx's premise is that trained DiT activations concentrate their energy in a few channels, so the
two values kept of every four carry nearly all of it. An activation without such structure (i.i.d.
Gaussian) loses ``GAUSSIAN_PRUNED_E`` ~ 0.132 of its energy (computed below); trained activations
should lose less, and the random-weight model shows what the architecture alone gives.

    python -m benchmarks.activation_energy [--device cuda]     (CPU is fine: a few seconds per model)

Writes ``benchmarks/results/<gpu>/activation_energy.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import gpu_slug, stamp
from lynx_compile import inspect, yardstick
from lynx_compile.quality import transformer_inputs

RESULTS = Path(__file__).resolve().parent / "results"
CAPTION_SEED = 4321
STEPS = 28
PROTOCOL = (
    "the yardstick sampled at its own guidance from seeds 0..n-1; per GEMM the share of the input energy "
    "that 2:4 pruning removes, at 4 sampled steps, trained weights against the same architecture random"
)
# GEMM kinds by module path (diffusers' SD3 MMDiT; the text stream's counterparts in the same kind)
KINDS = (
    ("q/k/v", r"\.attn\.(to_[qkv]|add_[qkv]_proj)$"),
    ("attention out", r"\.attn\.(to_out\.0|to_add_out)$"),
    ("MLP up", r"\.ff(_context)?\.net\.0\.proj$"),
    ("MLP down", r"\.ff(_context)?\.net\.2$"),
    ("adaLN", r"\.norm1(_context)?\.linear$"),
)
OTHER = "embedders and output"


def sample_steps(steps: int = STEPS) -> list[int]:
    """First, one third, two thirds, last."""
    return sorted({0, round((steps - 1) / 3), round(2 * (steps - 1) / 3), steps - 1})


def gaussian_pruned_energy(points: int = 200_001, upper: float = 12.0) -> float:
    """1 - E[energy of the 2 largest of 4 i.i.d. N(0, 1)] / E[energy of all 4], by quadrature of the
    order statistics of |X| (half-normal): the share 2:4 pruning removes from an unstructured activation."""
    x = torch.linspace(0, upper, points, dtype=torch.float64)
    cdf = torch.erf(x / 2**0.5)
    pdf = (2 / torch.pi) ** 0.5 * torch.exp(-x.square() / 2)
    # density of the k-th smallest of 4: 4!/((k-1)!(4-k)!) F^(k-1) (1-F)^(4-k) f; the two smallest are dropped
    smallest = 4 * (1 - cdf) ** 3 * pdf + 12 * cdf * (1 - cdf) ** 2 * pdf
    return (torch.trapezoid(x.square() * smallest, x) / 4).item()  # E[X^2] = 1 per value


def kind(name: str) -> str:
    return next((k for k, pattern in KINDS if re.search(pattern, name)), OTHER)


def measure(pipe: Any, prompts: Sequence[str], steps: int = STEPS) -> dict[str, dict[int, float]]:
    """GEMM name -> {step: pruned_E}, every GEMM of the transformer (inspect measures dense ones too)."""
    at = sample_steps(steps)
    inputs = transformer_inputs(pipe, prompts, at_steps=at, steps=steps, guidance_scale=pipe.default_guidance_scale)
    energies: dict[str, dict[int, float]] = {}
    for step in at:
        args, kwargs = inputs[step]
        for layer in inspect(pipe.transformer, *args, options={"cost_model": False}, **kwargs).layers:
            energies.setdefault(layer.name, {})[step] = layer.energy_pruned
    return energies


def summary(energies: dict[str, dict[int, float]]) -> dict[str, float]:
    """Mean pruned_E per GEMM kind (over its GEMMs and the steps), and over all GEMMs."""
    by_kind: dict[str, list[float]] = {}
    for name, per_step in energies.items():
        by_kind.setdefault(kind(name), []).extend(per_step.values())
    out = {k: statistics.fmean(by_kind[k]) for k in [*(k for k, _ in KINDS), OTHER] if k in by_kind}
    out["all GEMMs"] = statistics.fmean(v for per_step in energies.values() for v in per_step.values())
    return out


def run(models: dict[str, Any], prompts: Sequence[str], steps: int = STEPS) -> dict[str, Any]:
    """The JSON this benchmark writes, for ``models`` (name -> pipeline) sampled on ``prompts``."""
    measured = {name: measure(pipe, prompts, steps) for name, pipe in models.items()}
    names = list(next(iter(measured.values())))
    return {
        "meta": {
            **stamp({"captions": len(prompts), "steps": steps}, PROTOCOL),
            "captions": len(prompts),
            "steps": steps,
            "sampled_steps": sample_steps(steps),
            "models": list(models),
        },
        "gaussian_pruned_E": gaussian_pruned_energy(),
        "rows": [{"gemm": name, "kind": kind(name), **{m: measured[m].get(name) for m in models}} for name in names],
        "summary": {m: summary(measured[m]) for m in models},
    }


def markdown(data: dict[str, Any]) -> str:
    m, models, at = data["meta"], data["meta"]["models"], data["meta"]["sampled_steps"]
    lines = [
        "# Share of each GEMM's input energy that 2:4 pruning removes (pruned_E)",
        "",
        f"{m['gpu']}, torch {m['torch']}, {m['date']}; {m['captions']} yardstick captions, classifier-free guidance "
        f"batch, steps {at} of {m['steps']}. An i.i.d. Gaussian activation loses {data['gaussian_pruned_E']:.4f}.",
        "",
        "Mean per GEMM kind (over its GEMMs and the steps):",
        "",
        "| kind | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    kinds = list(data["summary"][models[0]])
    lines += [
        f"| {k} | " + " | ".join(f"{data['summary'][model].get(k, float('nan')):.4f}" for model in models) + " |"
        for k in kinds
    ]
    lines += [
        "",
        "Per GEMM and step:",
        "",
        "| GEMM | kind | " + " | ".join(f"{model} t{s}" for model in models for s in at) + " |",
        "|---|---|" + "---|" * (len(models) * len(at)),
    ]
    for row in data["rows"]:
        cells = [_fmt((row[model] or {}).get(s)) for model in models for s in at]
        lines.append(f"| {row['gemm']} | {row['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=8)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<gpu>/")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    trained = yardstick.load_pipeline(device=device, dtype=dtype)
    config = {k: trained.transformer.config[k] for k in yardstick.TRANSFORMER_CONFIG}
    random = yardstick.build_pipeline(seed=0, config_overrides=config, device=device, dtype=dtype)
    random.default_guidance_scale = trained.default_guidance_scale
    scenes = yardstick.sample_scenes(args.captions, torch.Generator().manual_seed(CAPTION_SEED))
    data = run({"trained": trained, "random": random}, [yardstick.caption(s) for s in scenes], args.steps)
    out = args.out or RESULTS / (gpu_slug() if device.type == "cuda" else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    (out / "activation_energy.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "activation_energy.md").write_text(markdown(data))
    print(markdown(data))
    print(f"wrote {out / 'activation_energy.json'}, {out / 'activation_energy.md'}")


if __name__ == "__main__":
    main()
