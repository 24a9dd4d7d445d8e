"""Why does one synchronised lynx call take longer than a call inside a loop? (GPU diagnostic)

``python scripts/gpu_call_overhead.py [flux|pixart|...]``: compiles the full-width zoo model (batch 1,
e2e.py's depth) as dense ``reduce-overhead``, again as dense on a copy of the model (a second compile:
the compile-to-compile spread), and with ``backend="lynx"``, all alive at once as in
benchmarks/e2e.py. For each: the CPU time to return from a call and the wall time to finish it,
called right after one call or a loop of 10 calls of the same model or of another compiled model
(until 2026-12-02 e2e.py timed every single call right after a loop); and the per-call time of 10
calls in a row.
"""

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

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


def timed(fn, kw, calls: int = 1) -> tuple[float, float]:
    """(CPU ms to return, wall ms to finish) per call of ``calls`` calls in a row, after a synchronisation."""
    torch.compiler.cudagraph_mark_step_begin()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(**kw)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e3 * (t1 - t0) / calls, 1e3 * (time.perf_counter() - t0) / calls


with torch.no_grad():
    fns = {"dense": torch.compile(built.model, mode="reduce-overhead"),
           "dense2": torch.compile(copy.deepcopy(built.model), mode="reduce-overhead"),
           "lynx": torch.compile(built.model, backend="lynx")}
    for fn in fns.values():
        for _ in range(3):
            fn(**built.example_kwargs)
    # what runs right before the timed single call (other model's or own, calls in a row); until
    # 2026-12-02 e2e.py timed each single call right after a loop
    before = {"after own call": (False, 1), "after other call": (True, 1),
              "after own loop": (False, 10), "after other loop": (True, 10)}
    stats: dict[str, list[tuple[float, float]]] = {f"{k} {b}": [] for k in fns for b in before}
    loops: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(10):
        for label, fn in fns.items() if i % 2 else reversed(fns.items()):
            other = fns["dense" if label != "dense" else "lynx"]
            for b, (switch, calls) in before.items():
                kw = fresh()
                timed(other if switch else fn, kw, calls)
                stats[f"{label} {b}"].append(timed(fn, kw))
            loops[label].append(timed(fn, kw, 10)[1])
    for key, samples in stats.items():
        cpu, wall = zip(*samples)
        print(f"{name} {key:24s}: cpu {statistics.median(cpu):7.3f} ms  wall {statistics.median(wall):7.3f} ms", flush=True)
    for key, samples in loops.items():
        print(f"{name} {key:24s}: loop of 10 {statistics.median(samples):7.3f} ms per call", flush=True)
