"""What every benchmark result carries: the stamp (GPU, versions, date) and a markdown table."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


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


def write_table(path: Path, title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                failures: Sequence[dict[str, Any]] = ()) -> None:
    m = meta()
    lines = [f"# {title}", "", f"{m['gpu']}, torch {m['torch']}, Triton {m['triton']}, "
             f"cuSPARSELt {m['cusparselt']}, {m['date']}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    lines.extend(f"\nNot measured: `{f['case']}`: {f['error']}" for f in failures)
    path.write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
