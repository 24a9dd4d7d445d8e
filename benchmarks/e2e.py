"""End-to-end transformer forward: eager bf16 vs dense torch.compile vs backend="lynx" (GPU).

Full-width zoo architectures at realistic sizes; depth is reduced to fit the GPU time (say so in
the table) and the per-block time is reported beside the whole forward. Timing: CUDA events around
each call (the compiled models replay CUDA graphs), warm-up first, median of ``--runs``, fresh
inputs every call. Each case runs in a process of its own and compiles cold (fresh Inductor,
Triton and lynx caches), so compile times are those of a first compile on a new machine.
Writes benchmarks/results/<gpu>/e2e.{json,md}; ``--append`` adds cases to them (a case run again
replaces its row). Variants (``flux:1:fused``) are rows of the same table.

    python -m benchmarks.e2e --cases flux:1 flux:2 sd3:1 sd3:2 pixart:1 pixart:2 wan:1 wan:2 flux:1:fused
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch._inductor.utils import fresh_cache

import lynx_compile
from benchmarks.common import (
    RESULTS,
    activation_mb,
    earlier_rows,
    result_stem,
    stamp,
    torchao_fp8,
    write_json,
    write_table,
)
from lynx_compile import zoo

# (depth used, depth of the real model) per architecture; resolution/frames as in issue 4
CASES: dict[str, dict[str, Any]] = {
    "flux": {"depth": 2, "resolution": 1024},
    "sd3": {"depth": 4, "resolution": 1024},
    "pixart": {"depth": 4, "resolution": 1024},
    "wan": {"depth": 4, "resolution": 480, "frames": 17},
    "qwen": {"depth": 4, "resolution": 1024},
    "zimage": {"depth": 4, "resolution": 1024},
}


@dataclasses.dataclass
class Row:
    model: str
    variant: str  # a key of VARIANTS ("default": lynx's defaults)
    batch: int
    tokens: int
    depth: int
    eager_ms: float
    inductor_ms: float
    lynx_ms: float
    rel_err_vs_dense: float
    inductor_compile_s: float
    lynx_compile_s: float
    lynx_recompile_s: float  # torch._dynamo.reset() and compile again: Inductor's and lynx's caches warm
    layers_sparse: int
    layers_fused: int  # sparse layers whose pruning runs inside the producer's kernel
    layers_folded: int  # sparse layers with the bias inside the sparse GEMM (fold_bias)
    layers_total: int
    act_mb_dense: float  # bytes moved for the sparsified GEMMs' inputs had they stayed dense
    act_mb_lynx: float  # the same under lynx (``benchmarks.common.BYTES_PER_ELEMENT``)
    sparse_names: list[str]  # the GEMMs lynx sparsified (JSON only)
    dense_reasons: dict[str, str]  # why each other GEMM stayed dense: the report's reason (JSON only)
    speedup_vs_inductor: float
    inductor_loop_ms: float  # per call, 10 calls back to back (``_loop_ms``)
    lynx_loop_ms: float
    loop_speedup: float
    max_autotune_ms: float | None  # dense torch.compile(mode="max-autotune"), only with --max-autotune
    max_autotune_compile_s: float | None
    per_block_inductor_ms: float
    per_block_lynx_ms: float
    # torchao's dense fp8 (Float8DynamicActivationFloat8WeightConfig, per row, every nn.Linear) under
    # torch.compile(mode="reduce-overhead"), timed in the same run; None without torchao
    torchao_fp8_ms: float | None = None
    torchao_fp8_loop_ms: float | None = None
    torchao_fp8_compile_s: float | None = None  # cold, as the other compiles


def call_ms(fn, kwargs: dict[str, Any], calls: int = 1) -> float:
    """CUDA-event time per call of ``calls`` back-to-back calls, after a synchronisation."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.compiler.cudagraph_mark_step_begin()  # a new generation of the CUDA-graph tree per timing
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn(**kwargs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def time_interleaved(fns: dict[str, Any], make_inputs, runs: int, loop: int | None = 10) -> dict[str, float]:
    """Per model: the median single call, and (``key_loop``) the per-call time of ``loop`` calls back
    to back (as in a denoising loop, where the CPU's launch work overlaps the previous call's
    kernels; ``loop=None``: single calls only). Every single call is timed before any loop: on an
    H100 a call right after a 10-call loop took 0.7-1.6 ms longer than one after a single call, for
    dense and lynx alike (docs/performance.md, "End to end"), which diluted and blurred the single-call
    ratio. Models take turns within each run, the order reversed every other run and the number of
    runs made even, so drift (clocks, temperature) and going first or second hit them alike; fresh
    inputs every run, made outside the timed region; two untimed warm-up rounds per phase."""
    times: dict[str, list[float]] = {}
    turns = list(fns.items())
    for calls, suffix in ((1, ""), (loop, "_loop")) if loop else ((1, ""),):
        for i in range(runs + runs % 2 + 2):
            kwargs = make_inputs()
            for key, fn in turns if i % 2 == 0 else reversed(turns):
                ms = call_ms(fn, kwargs, calls)
                if i >= 2:
                    times.setdefault(f"{key}{suffix}", []).append(ms)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclasses.dataclass(frozen=True)
class Variant:
    """lynx options over the defaults, and whether the model's q/k/v projections are fused into one
    GEMM first (diffusers' ``fuse_qkv_projections()``, common in serving recipes): then eager, dense
    and lynx all run the fused model."""

    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    fuse_qkv: bool = False


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "fused": Variant({"fuse_producers": True}),
    "fold": Variant({"fold_bias": True}),
    "fold_fused": Variant({"fold_bias": True, "fuse_producers": True}),
    "qkv": Variant(fuse_qkv=True),
    "compensate": Variant({"compensate": True}),
    "fp8": Variant({"precision": "fp8"}),
    "fp8_fused": Variant({"precision": "fp8", "fuse_producers": True}),
    **{f"lowrank{r}": Variant({"low_rank": r}) for r in (16, 32, 64)},
    # the sensitivity policy: its budgets bound the output's relative error, measured on the compiling call
    "budget_lo": Variant({"error_budget": 0.05}),
    "budget_hi": Variant({"error_budget": 0.2}),
    "permute": Variant({"permute_channels": True}),
    "refit": Variant({"refit": True}),
    "fp8_permute": Variant({"precision": "fp8", "permute_channels": True}),
    # the recovery that meets the quality targets on the yardstick (CPU): its cost on FLUX
    "permute_budget_hi": Variant({"permute_channels": True, "error_budget": 0.2}),
    "permute_budget_hi_lowrank32": Variant({"permute_channels": True, "error_budget": 0.2, "low_rank": 32}),
}


def prepare(model: torch.nn.Module, variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Apply ``variant`` to ``model`` (in place) and return the lynx options it compiles with. A low-rank or
    channel-order or refit variant calibrates on ``kwargs``, one call: random weights make its factors and orders
    meaningless for quality, but their cost (what this benchmark times) is that of any rank-r branch or order."""
    if VARIANTS[variant].fuse_qkv:
        model.fuse_qkv_projections()
    options = VARIANTS[variant].options
    if options.get("low_rank") or options.get("permute_channels") or options.get("refit"):
        calibration = lynx_compile.calibrate(model, [kwargs], options={**options, "low_rank": 0}, progress=False)
        options = {**options, "calibration": calibration}
    return options


def timed_compile(make, kwargs: dict[str, Any]) -> tuple[Any, torch.Tensor, float]:
    """(compiled model, its output, seconds to compile it and record its CUDA graphs)."""
    t0 = time.perf_counter()
    model = make()
    for _ in range(3):  # cudagraph trees record on the second/third call
        out = zoo.sample(model(**kwargs)).clone()
    torch.cuda.synchronize()
    return model, out, time.perf_counter() - t0


def cold_caches(root: str):
    """Compile as on a fresh machine: Inductor's, Triton's and lynx's caches (lynx keeps its algorithm
    and cost cache in Inductor's directory) in a new directory under ``root``, Inductor's in-memory
    caches emptied: Inductor's own ``fresh_cache``. The files stay: the compiled model keeps using them."""
    return fresh_cache(dir=root, delete=False)


def pay_first_compile(root: str) -> None:
    """A throw-away compile: what any first compile of a process pays (imports, Inductor's compile
    workers), so that the compiles timed after it pay only their own work."""
    with cold_caches(root):
        torch.compile(lambda t: t.sin() * 2)(torch.ones(8, device="cuda"))


def stage(case: str, t0: float, what: str) -> None:
    """One line per stage of a case, with the seconds since it started: a case takes minutes."""
    print(f"[{case}] {time.perf_counter() - t0:6.1f} s  {what}", flush=True)


def run_case(name: str, batch: int, runs: int, variant: str = "default", max_autotune: bool = False) -> Row:
    case, t0 = f"{name}:{batch}:{variant}", time.perf_counter()
    spec = CASES[name]
    built = zoo.build(name, size="full", batch=batch, dtype=torch.bfloat16, device="cuda", **spec)
    model, kwargs0 = built.model, built.example_kwargs
    stage(case, t0, "built")
    options = prepare(model, variant, kwargs0)
    seeds = iter(range(1, 10_000))

    def make_inputs() -> dict[str, Any]:
        return zoo.example_inputs(
            name,
            model,
            resolution=spec["resolution"],
            frames=spec.get("frames"),
            batch=batch,
            dtype=torch.bfloat16,
            device="cuda",
            seed=next(seeds),
        )

    def lynx_model():
        return torch.compile(model, backend="lynx", options=options)

    with torch.no_grad(), tempfile.TemporaryDirectory() as root:
        eager_ms = time_interleaved({"eager": model}, make_inputs, max(3, runs // 3), loop=None)["eager"]
        # Every compile starts cold (a dense compile before would warm the next one's Inductor and
        # Triton caches). Lynx first: its recompile after torch._dynamo.reset() (caches warm) drops
        # every compiled model of the process.
        stage(case, t0, "eager timed")
        pay_first_compile(root)
        with cold_caches(root):
            n_reports = len(lynx_compile.reports())
            _, _, lynx_compile_s = timed_compile(lynx_model, kwargs0)
            layers = [layer for r in lynx_compile.reports()[n_reports:] for layer in r.layers]
            torch._dynamo.reset()
            stage(case, t0, f"lynx compiled ({lynx_compile_s:.1f} s)")
            lynx, out, lynx_recompile_s = timed_compile(lynx_model, kwargs0)
        stage(case, t0, f"lynx recompiled ({lynx_recompile_s:.1f} s)")
        with cold_caches(root):
            dense, ref, inductor_compile_s = timed_compile(
                lambda: torch.compile(model, mode="reduce-overhead"), kwargs0
            )
        stage(case, t0, f"dense compiled ({inductor_compile_s:.1f} s)")
        fns = {"inductor": dense, "lynx": lynx}
        fp8_model, torchao_fp8_compile_s = torchao_fp8(model), None
        if fp8_model is not None:
            with cold_caches(root):
                fns["torchao_fp8"], _, torchao_fp8_compile_s = timed_compile(
                    lambda m=fp8_model: torch.compile(m, mode="reduce-overhead"), kwargs0
                )
            stage(case, t0, f"torchao fp8 compiled ({torchao_fp8_compile_s:.1f} s)")
        max_autotune_compile_s = None
        if max_autotune:
            with cold_caches(root):
                fns["max_autotune"], _, max_autotune_compile_s = timed_compile(
                    lambda: torch.compile(model, mode="max-autotune"), kwargs0
                )
        stage(case, t0, f"compiled {', '.join(fns)}; timing")
        ms = time_interleaved(fns, make_inputs, runs)
        stage(case, t0, "timed")
        del fns, dense, lynx, fp8_model
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    depth = spec["depth"]
    return Row(
        model=name,
        variant=variant,
        batch=batch,
        tokens=built.tokens,
        depth=depth,
        eager_ms=eager_ms,
        inductor_ms=ms["inductor"],
        lynx_ms=ms["lynx"],
        rel_err_vs_dense=rel,
        inductor_compile_s=inductor_compile_s,
        lynx_compile_s=lynx_compile_s,
        lynx_recompile_s=lynx_recompile_s,
        layers_sparse=sum(layer.sparse for layer in layers),
        layers_fused=sum(layer.prune == "fused" for layer in layers),
        layers_folded=sum(layer.bias_folded for layer in layers),
        layers_total=len(layers),
        act_mb_dense=activation_mb(layers, dense=True),
        act_mb_lynx=activation_mb(layers),
        sparse_names=[layer.name for layer in layers if layer.sparse],
        dense_reasons={layer.name: layer.reason for layer in layers if not layer.sparse},
        speedup_vs_inductor=ms["inductor"] / ms["lynx"],
        inductor_loop_ms=ms["inductor_loop"],
        lynx_loop_ms=ms["lynx_loop"],
        loop_speedup=ms["inductor_loop"] / ms["lynx_loop"],
        max_autotune_ms=ms.get("max_autotune"),
        max_autotune_compile_s=max_autotune_compile_s,
        per_block_inductor_ms=ms["inductor"] / depth,
        per_block_lynx_ms=ms["lynx"] / depth,
        torchao_fp8_ms=ms.get("torchao_fp8"),
        torchao_fp8_loop_ms=ms.get("torchao_fp8_loop"),
        torchao_fp8_compile_s=torchao_fp8_compile_s,
    )


NOTES = """Depth reduced (column `depth`; for flux, depth 2 = 2 double-stream + 4 single-stream blocks; qwen =
Qwen-Image's double-stream blocks, zimage = Z-Image's main blocks after its 2 + 2 refiner blocks; both with
256 text tokens), full width, random weights, bf16. dense = `torch.compile(mode="reduce-overhead")`; lynx =
`backend="lynx"` defaults (CUDA graphs, cost model, standalone Triton prune+compress); `variant=fused` adds
`fuse_producers=True`, `variant=fold` adds `fold_bias=True`, `fold_fused` both; `variant=qkv` runs diffusers'
`fuse_qkv_projections()` on the model first (eager, dense and lynx alike: one q/k/v GEMM per attention, lynx
defaults); `variant=compensate` adds `compensate=True` (RT-Lynx's norm compensation); `variant=fp8` adds
`precision="fp8"`, `fp8_fused` also `fuse_producers=True`; `variant=budget_lo` / `budget_hi` add
`error_budget=0.05` / `0.2` (sensitivities measured on the case's random weights and inputs: which layers stay
dense, not a quality figure); `variant=lowrankR` adds `low_rank=R`, calibrated on one call of the case's random
inputs (the branch's cost, not its quality; the cost model keeps dense the GEMMs whose branch eats their gain);
`variant=permute` adds `permute_channels=True`, calibrated the same way (the order's cost), `variant=refit` adds
`refit=True` (the same kernels on refitted weight copies: what the copies cost), `fp8_permute` adds it
with `precision="fp8"`, `permute_budget_hi` and `permute_budget_hi_lowrank32` add it to `budget_hi` and to
`budget_hi` with `low_rank=32`; `torchao_fp8_*`: torchao's dense fp8 (per-row
`Float8DynamicActivationFloat8WeightConfig`, every nn.Linear, `torch.compile(mode="reduce-overhead")`,
`set_inductor_config=False`: Inductor's settings as for dense and lynx), timed in the same run. `*_ms`: CUDA events
around each synchronised call (the GPU also waits for the call's ~1 ms of CPU work: guards, CUDA-graph input
copies, launch), median of the runs, fresh inputs every run, all timed before any loop (a call right after a
loop runs ~1 ms slower); `*_loop_ms`: per call of 10 calls back to back, as in a denoising loop. The compiled
models take turns within each run, in reversed order every other run, over an even number of runs (drift and
going first hit them alike), after two warm-up rounds. Compile times start cold: each case runs in a process
of its own, which times the eager model and makes a throw-away compile first; then each compile gets fresh
Inductor, Triton and lynx caches (Inductor's `fresh_cache`), as on a new machine, and lynx's includes its
kernel self-check. `lynx_recompile_s`: `torch._dynamo.reset()` and compile again (caches warm). `act_mb_*`:
bytes moved for the inputs of the sparsified GEMMs (analytic, `benchmarks/common.py`). `rel_err_vs_dense` is
large because weights and inputs are random Gaussians: not an accuracy figure. `max_autotune_*`: dense
`mode="max-autotune"`, only where run (`--max-autotune`). Each row's `commit` (in the JSON) is the commit that
measured it; with `--append` rows of several commits share a file."""

COLUMNS = [
    "model",
    "variant",
    "batch",
    "tokens",
    "depth",
    "eager_ms",
    "inductor_ms",
    "lynx_ms",
    "speedup_vs_inductor",
    "inductor_loop_ms",
    "lynx_loop_ms",
    "loop_speedup",
    "torchao_fp8_ms",
    "torchao_fp8_loop_ms",
    "torchao_fp8_compile_s",
    "max_autotune_ms",
    "max_autotune_compile_s",
    "rel_err_vs_dense",
    "inductor_compile_s",
    "lynx_compile_s",
    "lynx_recompile_s",
    "layers_sparse",
    "layers_fused",
    "layers_folded",
    "layers_total",
    "act_mb_dense",
    "act_mb_lynx",
    "per_block_inductor_ms",
    "per_block_lynx_ms",
]


PROTOCOL = (
    "CUDA events around each synchronised call, median of --runs on fresh inputs, models taking turns "
    "in reversed order every other run, after two warm-up rounds; 10-call loops timed after every single "
    "call; each case in a process of its own, every compile cold (fresh Inductor, Triton and lynx caches)"
)


def write(rows: list[dict[str, Any]], failures: list[dict[str, Any]], stem: Path, meta: dict[str, Any]) -> None:
    write_json(stem, meta, rows, failures=failures)
    write_table(
        stem.with_suffix(".md"),
        "End-to-end transformer forward (depth reduced: see `depth`)",
        rows,
        COLUMNS,
        failures,
        meta,
        NOTES,
    )


def _run_isolated(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case in a process of its own, so that nothing compiled or measured for one case (Triton's
    kernels in memory, lynx's self-check, cuSPARSELt's handles) makes the next one's compile look cheap."""
    with tempfile.TemporaryDirectory() as tmp:
        row_json = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.e2e",
            "--case",
            case,
            "--runs",
            str(args.runs),
            "--row-json",
            str(row_json),
            "--case-timeout",
            str(args.case_timeout),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd + (["--max-autotune"] if args.max_autotune else []), check=False, cwd=RESULTS.parents[1]
        )
        if not row_json.exists():
            if time.perf_counter() - t0 >= args.case_timeout:  # faulthandler ended it (exit status 1, as a crash)
                raise RuntimeError(f"timed out after {args.case_timeout} s (its threads' stacks are above)")
            raise RuntimeError(f"exit status {proc.returncode}, no result (its output is above)")
        return json.loads(row_json.read_text())


def _case_key(row: dict[str, Any]) -> tuple[str, int, str]:
    return row["model"], row["batch"], row["variant"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cases",
        nargs="+",
        default=[f"{model}:{batch}" for model in ("flux", "sd3", "pixart", "wan") for batch in (1, 2)],
    )  # batch 2: classifier-free guidance
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--max-autotune", action="store_true", help="also time dense mode='max-autotune' (slow compile)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results root; files go to OUT/<gpu>/e2e.*")
    p.add_argument("--append", action="store_true", help="add the cases to the rows already in the result files")
    p.add_argument(
        "--case-timeout",
        type=float,
        default=1200,
        help="seconds after which a case prints every thread's stack and is given up (its failure recorded)",
    )
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process, its row to --row-json
    p.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        faulthandler.dump_traceback_later(args.case_timeout, exit=True)
        name, batch, *variant = args.case.split(":")
        row = run_case(name, int(batch), args.runs, *variant, max_autotune=args.max_autotune)
        args.row_json.write_text(json.dumps(dataclasses.asdict(row)))  # first: an outer timeout may come any time
        print(row, flush=True)
        return
    stem = result_stem("e2e", args.out)
    meta = stamp({k: v for k, v in vars(args).items() if k not in ("case", "row_json")}, PROTOCOL)
    meta["variants"] = {name: dataclasses.asdict(variant) for name, variant in VARIANTS.items()}
    earlier = earlier_rows(stem, meta) if args.append else []
    rows, failures = [], []
    for case in args.cases:
        try:
            rows.append({**_run_isolated(case, args), "commit": meta["commit"]})
        except Exception as e:  # one architecture failing must not lose the others' numbers
            failures.append({"case": case, "error": repr(e)[:500]})
            print(f"{case} FAILED: {e!r}", flush=True)
        rerun = {_case_key(r) for r in rows}  # a case run again replaces its earlier row
        write([r for r in earlier if _case_key(r) not in rerun] + rows, failures, stem, meta)


if __name__ == "__main__":
    main()
