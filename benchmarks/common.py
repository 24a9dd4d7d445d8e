"""What every benchmark result carries: the stamp (GPU, versions, date) and a markdown table."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


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
    return sum(l.m * l.k * BYTES_PER_ELEMENT["-" if dense else l.prune] for l in layers if l.sparse) / 1e6


def meta() -> dict[str, Any]:
    import triton

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cusparselt": torch.backends.cusparselt.version() if cuda else None,
        "date": datetime.date.today().isoformat(),
    }


def gpu_slug() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower().removeprefix("nvidia ")).strip("_")


def result_stem(out: Path, kind: str, *tags: str | None) -> Path:
    """``out/<kind>_<gpu>[_tag...]``: where a benchmark writes its .json/.md/.png (empty tags left out)."""
    return Path(out) / "_".join([f"{kind}_{gpu_slug()}", *(tag for tag in tags if tag)])


def write_table(path: Path, title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                failures: Sequence[dict[str, Any]] = (), stamp: dict[str, Any] | None = None,
                notes: str = "") -> None:
    """``stamp``: the machine the numbers come from (default: this one)."""
    m = stamp or meta()
    lines = [f"# {title}", "", f"{m['gpu']}, torch {m['torch']}, Triton {m['triton']}, "
             f"cuSPARSELt {m['cusparselt']}, {m['date']}", "", *([notes, ""] if notes else []),
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
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
