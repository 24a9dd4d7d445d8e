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
``lowrank16/32/64``: low-rank compensation of rank 16/32/64, fitted from one calibration per run on
CALIBRATION_CAPTIONS captions of other scenes (seed CALIBRATION_SEED) and other noise, every step, the
pipeline's own guidance. ``lowrank16/32/64_distill``: the same calibration, its factors of that rank then
distilled end to end (``lynx_compile.distill``) against the dense transformer's outputs on the same calibration
captions and noise, DISTILL_STEPS Adam steps at DISTILL_LR (``--distill-steps``, ``--distill-lr``), one call of
DISTILL_BATCH captions each. ``permute*``: option ``permute_channels``, its channel order from a calibration made
with it on the same captions (one more run over them). ``*refit``: option ``refit``, from a calibration made with
it on the same captions.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import gpu_slug, torchao_fp8
from lynx_compile import Calibration, calibrate, distill, quality, yardstick
from lynx_compile.quality import pipelines
from lynx_compile.quality.compare import Variant, transformer_inputs

RESULTS = Path(__file__).resolve().parents[1] / "results"
CAPTION_SEED = 4321
CAPTIONS = 64
REFERENCES = 2048
CALIBRATION_SEED = 8765  # captions for the low-rank fit: never the evaluated ones
CALIBRATION_CAPTIONS = 32
CALIBRATION_NOISE_SEED = 100_000  # sample i of the calibration starts from seed 100000 + i
# lowrank*_distill: Adam steps, learning rate, and calibration captions per recorded pipeline call (each step
# trains on one call: DISTILL_BATCH captions, twice as many images with guidance). Picked on the CPU, rank 32, 8
# evaluation captions (lr, steps, captions): 1e-3, 100, 8 diverged; 3e-4 or 1e-4, 100, 8 and 1e-4, 100, 32 lowered
# the output error but not PSNR; 1e-4, 300, 32 lowered it 43% (36% on other captions) and gained 0.2 dB
# (docs/design.md, "Low-rank compensation")
DISTILL_STEPS = 300
DISTILL_LR = 1e-4
DISTILL_BATCH = 8
DISTILL = "distill"  # a key of CONFIGS, not a lynx option: main distils that configuration's calibration
_NO_COST_MODEL = {"cost_model": False}


# Every configuration the benchmark knows, in the order of its table: "naive" has every recovery option
# off, "defaults" is lynx's defaults of the day. A later accuracy option gets its own entry here.
# "fp8": lynx with precision="fp8"; "torchao_fp8": torchao's dense fp8 (skipped, said, where it cannot run).
CONFIGS: dict[str, dict[str, Any] | quality.Variant | None] = {
    "dense": None,
    "naive": {"compensate": False, **_NO_COST_MODEL},
    "defaults": {**_NO_COST_MODEL},
    "compensate": {"compensate": True, **_NO_COST_MODEL},
    "defaults_reference": {"path": "reference", **_NO_COST_MODEL},
    "lowrank16": {"low_rank": 16, **_NO_COST_MODEL},
    "lowrank32": {"low_rank": 32, **_NO_COST_MODEL},
    "lowrank64": {"low_rank": 64, **_NO_COST_MODEL},
    "lowrank16_distill": {"low_rank": 16, DISTILL: True, **_NO_COST_MODEL},
    "lowrank32_distill": {"low_rank": 32, DISTILL: True, **_NO_COST_MODEL},
    "lowrank64_distill": {"low_rank": 64, DISTILL: True, **_NO_COST_MODEL},
    "dense_steps_25pct": {"dense_steps": 0.25, **_NO_COST_MODEL},
    # output error budgets, bracketing the yardstick's trade-offs (CPU, step 14 of 8 calibration captions: 0.05
    # keeps 8 of 72 block GEMMs sparse, output error 0.032; 0.2 keeps 12, 42% of the GEMM FLOPs). The
    # sensitivities are measured on calibration captions disjoint from the evaluated ones (see main); at their step 0,
    # as the benchmark runs them, 0.05 kept 20 GEMMs sparse and 0.2 kept 53 (8 captions, CPU)
    "budget_lo": {"error_budget": 0.05, **_NO_COST_MODEL},
    "budget_hi": {"error_budget": 0.2, **_NO_COST_MODEL},
    # the recovery options together: whether combining them reaches what none reaches alone
    "lowrank32_dense_steps_25pct": {"low_rank": 32, "dense_steps": 0.25, **_NO_COST_MODEL},
    "budget_hi_lowrank32_dense_steps_25pct": {
        "error_budget": 0.2,
        "low_rank": 32,
        "dense_steps": 0.25,
        **_NO_COST_MODEL,
    },
    # the same without dense steps: whether the dense steps, which cap the sampling loop's speed-up, are needed
    "budget_hi_lowrank32": {"error_budget": 0.2, "low_rank": 32, **_NO_COST_MODEL},
    "budget_mid_lowrank32": {"error_budget": 0.1, "low_rank": 32, **_NO_COST_MODEL},
    "budget_mid_lowrank32_dense_steps_25pct": {
        "error_budget": 0.1,
        "low_rank": 32,
        "dense_steps": 0.25,
        **_NO_COST_MODEL,
    },
    # channel order (option permute_channels) from the calibration's energies, alone and with the options above
    "permute": {"permute_channels": True, **_NO_COST_MODEL},
    "permute_lowrank32": {"permute_channels": True, "low_rank": 32, **_NO_COST_MODEL},
    "permute_budget_hi": {"permute_channels": True, "error_budget": 0.2, **_NO_COST_MODEL},
    "permute_budget_hi_lowrank32": {"permute_channels": True, "error_budget": 0.2, "low_rank": 32, **_NO_COST_MODEL},
    "permute_budget_mid_lowrank32": {"permute_channels": True, "error_budget": 0.1, "low_rank": 32, **_NO_COST_MODEL},
    "refit": {"refit": True, **_NO_COST_MODEL},
    "permute_refit": {"permute_channels": True, "refit": True, **_NO_COST_MODEL},
    "budget_hi_refit": {"error_budget": 0.2, "refit": True, **_NO_COST_MODEL},
    "permute_budget_hi_refit": {"permute_channels": True, "error_budget": 0.2, "refit": True, **_NO_COST_MODEL},
    "fp8": {"precision": "fp8", **_NO_COST_MODEL},
    # dense fp8, no lynx. The yardstick's unconditional pooled text embedding is an all-zero row, which torchao's
    # default quantises to NaN (scale 0): a lower bound on the amax, far below any nonzero row's, keeps it 0.
    "torchao_fp8": quality.Variant(transform=functools.partial(torchao_fp8, activation_value_lb=1e-12)),
}
SENSITIVITY_NOISE_SEED = 10_000  # the error budgets' sensitivities: CALIBRATION_SEED's captions, this noise
CALIBRATION_STEP = 0  # the step a denoising loop compiles at


def torchao_fp8_unsupported(device: torch.device) -> str | None:
    """Why the torchao_fp8 row cannot run here (torchao missing, or no fp8 tensor cores), or None."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install -e '.[bench]')"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return f"torchao's float8 GEMMs need an sm89+ GPU, not {device}"
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(CONFIGS),
        help="a subset of the configurations (dense always runs)",
    )
    p.add_argument("--captions", type=int, default=CAPTIONS)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=CAPTIONS, help="captions per pipeline call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<gpu>/")
    p.add_argument("--calibration-captions", type=int, default=CALIBRATION_CAPTIONS)
    p.add_argument("--distill-steps", type=int, default=DISTILL_STEPS, help="lowrank*_distill's Adam steps")
    p.add_argument("--distill-lr", type=float, default=DISTILL_LR, help="lowrank*_distill's learning rate")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    names = list(args.configs)
    skip = torchao_fp8_unsupported(device) if "torchao_fp8" in names else None
    if skip:
        print(f"note: config torchao_fp8 skipped: {skip}", flush=True)
        names.remove("torchao_fp8")
    pipe = yardstick.load_pipeline(device=device, dtype=dtype)
    configs: dict[str, Any] = {name: CONFIGS[name] for name in names}
    calibrated = {
        name: options
        for name, options in configs.items()
        if isinstance(options, dict) and any(options.get(o) for o in ("low_rank", "permute_channels", "refit"))
    }
    if calibrated:
        captions = calibration_captions(args.calibration_captions)
        calibrations: dict[bool, Calibration] = {}  # permute_channels -> the calibration made with it
        # with the refit moments too where a configuration with that permute_channels needs them
        refit = {
            p: any(o.get("refit") and o.get("permute_channels", False) == p for o in calibrated.values())
            for p in (False, True)
        }
        distilled: dict[tuple[int, bool], Calibration] = {}  # (rank, permute_channels) -> distilled at that rank
        for name, options in calibrated.items():
            permute, rank = options.get("permute_channels", False), options.get("low_rank", 0)
            if permute not in calibrations:
                calibrations[permute] = calibrate(
                    pipe,
                    captions,
                    options={"permute_channels": permute, "refit": refit[permute]},
                    steps=args.steps,
                    batch_size=args.batch_size,
                    seed=CALIBRATION_NOISE_SEED,
                )
            calibration = calibrations[permute]
            if options.get(DISTILL) and (rank, permute) not in distilled:
                distilled[rank, permute] = distill(
                    pipe,
                    captions,
                    calibration,
                    rank=rank,
                    steps=args.distill_steps,
                    lr=args.distill_lr,
                    num_inference_steps=args.steps,
                    batch_size=DISTILL_BATCH,
                    seed=CALIBRATION_NOISE_SEED,
                )
                record = distilled[rank, permute].distilled[rank]
                print(
                    f"{name}: relative output error {record['loss_before']:.4g} (closed form) -> "
                    f"{record['loss_after']:.4g} (distilled)",
                    flush=True,
                )
            lynx_options = {k: v for k, v in options.items() if k != DISTILL}
            configs[name] = {
                **lynx_options,
                "calibration": distilled[rank, permute] if options.get(DISTILL) else calibration,
            }
    measuring = [name for name, options in configs.items() if isinstance(options, dict) and "error_budget" in options]
    if measuring:  # the compiling call: step CALIBRATION_STEP of other captions, at the sampling's batch shape
        batch = min(args.batch_size, args.captions)
        warmup = [
            transformer_inputs(
                pipe,
                calibration_captions(batch),
                [CALIBRATION_STEP],
                seeds=range(SENSITIVITY_NOISE_SEED, SENSITIVITY_NOISE_SEED + batch),
                steps=args.steps,
                guidance_scale=pipe.default_guidance_scale,
            )[CALIBRATION_STEP]
        ]
        configs.update({name: Variant(options=configs[name], warmup=warmup) for name in measuring})
    result = compare_on_yardstick(
        pipe,
        configs,
        captions=args.captions,
        steps=args.steps,
        batch_size=args.batch_size,
        out=args.out or RESULTS / (gpu_slug() if device.type == "cuda" else "cpu"),
    )
    print(result)
    print("wrote " + ", ".join(str(f) for f in result.files))


def compare_on_yardstick(
    pipe: Any, configs: dict[str, Any], *, captions: int, steps: int, batch_size: int, out: Path
) -> quality.QualityResult:
    """``quality.compare`` under this benchmark's protocol: ``captions`` scenes from CAPTION_SEED, sample i from
    seed i, the yardstick's guidance, graded by its evaluator and against REFERENCES renders (for studies too)."""
    scenes = yardstick.sample_scenes(captions, torch.Generator().manual_seed(CAPTION_SEED))
    return quality.compare(
        pipe,
        [yardstick.caption(s) for s in scenes],
        configs,
        seeds=range(captions),
        steps=steps,
        guidance_scale=pipe.default_guidance_scale,
        batch_size=batch_size,
        evaluator=yardstick.load_evaluator(device=pipe.transformer.device),
        scenes=scenes,
        reference_images=pipelines.reference_images(REFERENCES),
        model="yardstick (trained)",
        out=out,
    )


def calibration_captions(n: int) -> list[str]:
    """``n`` captions of scenes drawn from CALIBRATION_SEED: disjoint from the evaluated ones."""
    return [yardstick.caption(s) for s in yardstick.sample_scenes(n, torch.Generator().manual_seed(CALIBRATION_SEED))]


if __name__ == "__main__":
    main()
