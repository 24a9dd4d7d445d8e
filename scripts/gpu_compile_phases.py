"""Where a cold lynx compile of a full-width e2e case spends its time, beside a cold dense compile.

    python scripts/gpu_compile_phases.py flux:1 [--cprofile N]   # N: also the lynx compile's N costliest functions

Both compiles start from fresh caches (``benchmarks.e2e.cold_caches``) after a throw-away compile
(``pay_first_compile``), as in the e2e benchmark. Each phase's time excludes the phases nested in it.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._inductor.compile_fx as inductor_compile_fx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lynx_compile.backend as backend  # noqa: E402
from benchmarks.e2e import CASES, _compile, cold_caches, pay_first_compile  # noqa: E402
from lynx_compile import zoo  # noqa: E402
from lynx_compile.codegen import cusparselt  # noqa: E402

SELF: collections.Counter[str] = collections.Counter()  # phase -> seconds, nested phases excluded
CALLS: collections.Counter[str] = collections.Counter()
_STACK: list[float] = []  # time spent in nested phases, per open phase


def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        _STACK.append(0.0)
        try:
            return fn(*args, **kwargs)
        finally:
            total = time.perf_counter() - t0
            SELF[phase] += total - _STACK.pop()
            CALLS[phase] += 1
            if _STACK:
                _STACK[-1] += total
    return wrapper


def patch() -> None:
    for phase, owner, name in [("self-check (fast_compress_ok)", cusparselt, "fast_compress_ok"),
                               ("algorithm sweep (_search)", cusparselt, "_search"),
                               ("cost model timing (measure_costs)", cusparselt, "measure_costs"),
                               ("lynx pass, rest (plan_graph)", backend, "plan_graph"),
                               ("Inductor (compile_fx)", backend, "compile_fx"),
                               ("Inductor (compile_fx)", inductor_compile_fx, "compile_fx")]:
        setattr(owner, name, timed(phase, getattr(owner, name)))


def report(what: str, total: float) -> None:
    print(f"\n{what}: {total:.1f} s", flush=True)
    for phase, s in SELF.most_common():
        print(f"  {phase:40s} {s:6.1f} s  ({CALLS[phase]} calls)", flush=True)
    print(f"  {'rest (Dynamo, AOT, CUDA graphs, runs)':40s} {total - sum(SELF.values()):6.1f} s", flush=True)
    SELF.clear()
    CALLS.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("case")
    p.add_argument("--cprofile", type=int, default=0)
    args = p.parse_args()
    name, batch = args.case.split(":")
    spec = CASES[name]
    built = zoo.build(name, size="full", batch=int(batch), dtype=torch.bfloat16, device="cuda", **spec)
    model, kwargs = built.model, built.example_kwargs
    patch()
    pay_first_compile("/tmp")
    SELF.clear()
    CALLS.clear()
    profile = cProfile.Profile() if args.cprofile else None
    with torch.no_grad(), cold_caches("/tmp"):
        if profile:
            profile.enable()
        seconds = _compile(lambda: torch.compile(model, backend="lynx"), kwargs)[2]
        if profile:
            profile.disable()
        report(f"lynx {args.case}", seconds)
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.cprofile)
    with torch.no_grad(), cold_caches("/tmp"):
        report(f"dense {args.case}", _compile(lambda: torch.compile(model, mode="reduce-overhead"), kwargs)[2])


if __name__ == "__main__":
    main()
