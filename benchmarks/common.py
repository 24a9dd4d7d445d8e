"""What every benchmark result carries, and where it goes.

``benchmarks/results/<gpu>/<benchmark>.{json,md}``: the current results of one benchmark on one GPU,
overwritten by a rerun (``--append``, where a benchmark has it, adds cases to them). Each JSON holds
``meta`` (GPU, versions, date, the commit, the options it ran with and how it timed) and ``rows``;
``python -m benchmarks.plot`` draws the PNGs from the JSON files.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import triton

from lynx_compile.provenance import source_commit

RESULTS = Path(__file__).resolve().parent / "results"

# Bytes moved per element of a bf16 activation from its producer's store to one GEMM's load, by
# where the report says it was pruned ("-": a dense layer). Analytic, from the kernels' loads/stores.
BYTES_PER_ELEMENT = {
    "-": 2 + 2,  # written by the producer, read by cuBLAS
    "triton": 2 + 2 + 9 / 8 + 9 / 8,  # + read by prune+compress, kept values + metadata written and read
    "fused": 9 / 8 + 9 / 8,  # the template writes kept values + metadata; cuSPARSELt reads them
    "torch": 2 + 2,  # reference path: the pruned activation, fused into its producer, read by cuBLAS
    "cslt": 2 + 2 + 2 + 2 + 9 / 8 + 9 / 8,  # + pruned copy written and read by torch._cslt_compress
}


def activation_mb(layers: Sequence[Any], dense: bool = False) -> float:
    """MB moved for the inputs of the sparsified GEMMs (a shared input counted once per GEMM)."""
    return (
        sum(layer.m * layer.k * BYTES_PER_ELEMENT["-" if dense else layer.prune] for layer in layers if layer.sparse)
        / 1e6
    )


def torchao_fp8(module: torch.nn.Module, activation_value_lb: float | None = None) -> torch.nn.Module | None:
    """A copy of ``module`` with every nn.Linear in torchao's dense fp8, dynamic per-row activation and
    per-row weight scales: what FP8 serving runs today. None, said once, without torchao.

    ``activation_value_lb``: torchao's lower bound on a row's amax. Its default (none) scales an all-zero
    activation row by 0 and quantises it to 0/0 = NaN; the quality benchmark sets it (see there).

    ``set_inductor_config=False``: torchao's default turns on Inductor's coordinate-descent tuning for
    the whole process, which made FLUX's compile run past 5 minutes on the H100 and would tune every
    compile after it. Off, torchao compiles with the same Inductor settings as the bf16 and lynx models
    it is timed against."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as e:
        _say_once(f"torchao not importable ({e}): torchao_fp8 left empty; pip install -e '.[bench]'")
        return None
    copied = copy.deepcopy(module)
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), set_inductor_config=False, activation_value_lb=activation_value_lb
    )
    quantize_(copied, config)
    return copied


@functools.cache
def _say_once(message: str) -> None:
    print(message, flush=True)


def gpu_slug() -> str:
    """The results folder of this machine: ``h100_80gb_hbm3``, ``h200``, ``cpu``."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower().removeprefix("nvidia ")).strip("_")


def stamp(options: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The ``meta`` of a result: the machine, the versions, the code, the options and the timing protocol."""
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cusparselt": torch.backends.cusparselt.version() if cuda else None,
        "date": datetime.date.today().isoformat(),
        "commit": source_commit(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
        "protocol": protocol,
    }


def result_stem(benchmark: str, root: Path = RESULTS) -> Path:
    """``root/<gpu>/<benchmark>``: where a benchmark writes its .json and .md (the folder is made)."""
    folder = Path(root) / gpu_slug()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / benchmark


def write_json(stem: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]], **extra: Any) -> None:
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": list(rows), **extra}, indent=1))


def earlier_rows(stem: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """For ``--append``: the rows already in ``stem``.json, each with the commit it was measured with.
    They must come from this GPU and these versions."""
    path = stem.with_suffix(".json")
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    differ = {
        k: (old["meta"][k], meta[k]) for k in ("gpu", "torch", "triton", "cusparselt") if old["meta"][k] != meta[k]
    }
    if differ:
        raise SystemExit(f"--append: {path} was measured with other {differ}; move it away or run without --append")
    commit = old["meta"].get("commit", "unknown")
    return [{"commit": commit, **row} for row in old["rows"]]


def write_table(
    path: Path,
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    failures: Sequence[dict[str, Any]] = (),
    meta: dict[str, Any] | None = None,
    notes: str = "",
) -> None:
    """The markdown beside the JSON; ``meta``: the stamp the numbers carry (default: this machine's)."""
    m = meta or stamp({}, "")
    lines = [
        f"# {title}",
        "",
        f"{m['gpu']}, torch {m['torch']}, Triton {m['triton']}, "
        f"cuSPARSELt {m['cusparselt']}, {m['date']}, commit {m.get('commit', 'unknown')}",
        "",
        *([notes, ""] if notes else []),
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    lines.extend(f"\nNot measured: `{f['case']}`: {f['error']}" for f in failures)
    path.write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
