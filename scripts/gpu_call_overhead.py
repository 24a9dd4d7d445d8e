"""Why does one synchronised lynx call take longer than its graph's kernels? (GPU diagnostic)

For dense reduce-overhead and lynx (FLUX, full width, depth 2, batch 1): per call, the CPU time to
return from the call, the wall time to finish it, both with the same and with fresh inputs; then the
CPU-side ops of one lynx call, by self CPU time.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lynx_compile  # noqa: E402,F401
from benchmarks.e2e import CASES  # noqa: E402
from lynx_compile import zoo  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "flux"
spec = CASES[name]
built = zoo.build(name, size="full", batch=1, dtype=torch.bfloat16, device="cuda", **spec)
seeds = iter(range(1, 10_000))


def fresh():
    return zoo.example_inputs(name, built.model, resolution=spec["resolution"], frames=spec.get("frames"), batch=1,
                              dtype=torch.bfloat16, device="cuda", seed=next(seeds))


def measure(fn, label):
    for inputs in ("same", "fresh"):
        cpu, wall = [], []
        for _ in range(15):
            kw = built.example_kwargs if inputs == "same" else fresh()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(**kw)
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            cpu.append(1e3 * (t1 - t0))
            wall.append(1e3 * (t2 - t0))
        print(f"{label:6s} {inputs:5s}: cpu {statistics.median(cpu):.3f} ms, wall {statistics.median(wall):.3f} ms",
              flush=True)


with torch.no_grad():
    for label, make in [("dense", lambda: torch.compile(built.model, mode="reduce-overhead")),
                        ("lynx", lambda: torch.compile(built.model, backend="lynx"))]:
        torch._dynamo.reset()
        fn = make()
        for _ in range(3):
            fn(**built.example_kwargs)
        measure(fn, label)
        kw = fresh()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(**kw)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
