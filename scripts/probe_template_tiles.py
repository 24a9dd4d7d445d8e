"""Per-kernel GPU time of the FLUX-width MLP block (benchmarks/fusion.py) compiled by lynx with the
standalone prune+compress and with the template fused into its producer, for several template tiles.

    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python scripts/probe_template_tiles.py [--tokens 4096 16384]

(Inductor's caches key on the graph, not on the template's tile: turn them off, or every tile
reuses the first one's kernel.)
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lynx_compile  # noqa: E402,F401
from benchmarks.fusion import MlpBlock  # noqa: E402
from lynx_compile.codegen import inductor_lowering  # noqa: E402

TILES = [(16, 512, 4), (16, 512, 8), (16, 256, 4), (16, 256, 8), (32, 256, 8), (16, 128, 4), (32, 128, 8), (64, 128, 8), (16, 64, 2)]


def kernel_ms(fn, args, runs: int = 20) -> dict[str, float]:
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn(*args)
        torch.cuda.synchronize()
    out: dict[str, float] = collections.defaultdict(float)
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.self_device_time_total > 0:
            out[e.key[:60]] += e.self_device_time_total / runs / 1e3
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    args = p.parse_args()
    torch.manual_seed(0)
    block = MlpBlock(3072, 12288).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    base = {"cost_model": False, "cudagraphs": False}
    for m in args.tokens:
        inputs = (torch.randn(m, 3072, device="cuda", dtype=torch.bfloat16),
                  *(0.5 * torch.randn(3072, device="cuda", dtype=torch.bfloat16) for _ in range(3)))
        variants = [("standalone", None, {"fuse_producers": False})]
        variants += [(f"fused {t}", t, {"fuse_producers": True}) for t in TILES]
        with torch.no_grad():
            for name, tile, opts in variants:
                if tile:
                    inductor_lowering._TILES = (tile,)
                torch._dynamo.reset()
                fn = torch.compile(block, backend="lynx", options={**base, **opts})
                times = kernel_ms(fn, inputs)
                prune = {k: v for k, v in times.items() if "compress" in k or "gelu" in k or "layer_norm" in k}
                print(f"M={m} {name}: total {sum(times.values()):.3f} ms | " +
                      " | ".join(f"{k} {v:.4f}" for k, v in sorted(prune.items())), flush=True)


if __name__ == "__main__":
    main()
