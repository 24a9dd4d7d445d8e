"""The image-quality benchmark (issue 24): the trained yardstick sampled dense and under each lynx
configuration from the same noise, graded against the dense samples and by the yardstick's evaluator.

Protocol: 64 captions of seeded random scenes, seeds 0..63 (sample i of every configuration starts
from the same noise), 28 steps of ``FlowMatchEulerDiscreteScheduler``, classifier-free guidance at the
yardstick's own scale (batched ``[uncond; cond]`` as diffusers' pipelines do); FID-like against 2048
renders of fresh scenes. The yardstick's GEMMs are small, so every lynx configuration runs with the
cost model off: on the GPU it would keep most of them dense, and pruning would not be measured.

    python -m benchmarks.quality [--configs naive compensate] [--device cuda]

Writes ``benchmarks/results/<gpu>/quality.{json,md,png}``. ``defaults_reference`` is lynx's defaults on
the reference path: on the GPU its row against ``defaults`` shows that the cuSPARSELt path and the
reference path give the same metrics up to bf16 rounding (on the CPU both are the reference path).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import gpu_slug
from lynx_compile import quality, yardstick
from lynx_compile.quality import pipelines

RESULTS = Path(__file__).resolve().parents[1] / "results"
CAPTION_SEED = 4321
CAPTIONS = 64
REFERENCES = 2048
_NO_COST_MODEL = {"cost_model": False}
def torchao_fp8(transformer: torch.nn.Module) -> torch.nn.Module:
    """A copy of the transformer with every nn.Linear in torchao's dense fp8 (per-row dynamic
    activation and per-row weight scales): the FP8 baseline serving runs today."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    copied = copy.deepcopy(transformer)
    quantize_(copied, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return copied


# Every configuration the benchmark knows, in the order of its table: "naive" has every recovery option
# off, "defaults" is lynx's defaults of the day. A later accuracy option gets its own entry here.
# "fp8": lynx with precision="fp8"; "torchao_fp8": torchao's dense fp8 (skipped, said, where it cannot run).
CONFIGS: dict[str, dict[str, Any] | quality.Variant | None] = {
    "dense": None,
    "naive": {"compensate": False, **_NO_COST_MODEL},
    "defaults": {**_NO_COST_MODEL},
    "compensate": {"compensate": True, **_NO_COST_MODEL},
    "defaults_reference": {"path": "reference", **_NO_COST_MODEL},
    "fp8": {"precision": "fp8", **_NO_COST_MODEL},
    "torchao_fp8": quality.Variant(transform=torchao_fp8),  # dense fp8, no lynx
}


def torchao_fp8_unsupported(device: torch.device) -> str | None:
    """Why the torchao_fp8 row cannot run here (torchao missing, or no fp8 tensor cores), or None."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install -e '.[bench]')"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return f"torchao's float8 GEMMs need an sm89+ GPU, not {device}"
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="a subset of the configurations (dense always runs)")
    p.add_argument("--captions", type=int, default=CAPTIONS)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=CAPTIONS, help="captions per pipeline call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<gpu>/")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    configs = list(args.configs)
    skip = torchao_fp8_unsupported(device) if "torchao_fp8" in configs else None
    if skip:
        print(f"note: config torchao_fp8 skipped: {skip}", flush=True)
        configs.remove("torchao_fp8")
    pipe = yardstick.load_pipeline(device=device, dtype=dtype)
    scenes = yardstick.sample_scenes(args.captions, torch.Generator().manual_seed(CAPTION_SEED))
    result = quality.compare(
        pipe, [yardstick.caption(s) for s in scenes], {name: CONFIGS[name] for name in configs},
        seeds=range(args.captions), steps=args.steps, guidance_scale=pipe.default_guidance_scale,
        batch_size=args.batch_size, evaluator=yardstick.load_evaluator(device=device), scenes=scenes,
        reference_images=pipelines.reference_images(REFERENCES), model="yardstick (trained)",
        out=args.out or RESULTS / (gpu_slug() if device.type == "cuda" else "cpu"),
    )
    print(result)
    print("wrote " + ", ".join(str(f) for f in result.files))


if __name__ == "__main__":
    main()
