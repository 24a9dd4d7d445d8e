"""Draw the benchmarks' plots from their JSON results: a PNG beside each JSON that has a plot.

    python -m benchmarks.plot                                # every result under benchmarks/results
    python -m benchmarks.plot benchmarks/results/h200/e2e.json

Which plot a file gets follows its name: ``e2e*.json`` (speed-up over dense per case) and
``linear*.json`` (speed-up per layer and M). Needs matplotlib (``pip install matplotlib``); the
benchmarks themselves do not.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS


def e2e(data: dict[str, Any], ax_factory: Callable[..., Any]) -> Any:
    """Speed-up over dense reduce-overhead per case (eager and max-autotune beside it where run)."""
    rows = data["rows"]
    labels = [f"{r['model']} b{r['batch']}" + ("" if r["variant"] == "default" else f"\n{r['variant']}") for r in rows]
    series = [
        ("eager", "inductor_ms", "eager_ms"),
        ("max-autotune", "inductor_ms", "max_autotune_ms"),
        ("lynx", "inductor_ms", "lynx_ms"),
        ("lynx, 10-call loop", "inductor_loop_ms", "lynx_loop_ms"),
    ]
    width = 0.8 / len(series)
    fig, ax = ax_factory(figsize=(1.4 * len(rows) + 2, 4))
    for n, (label, base, key) in enumerate(series):
        speedups = [r[base] / r[key] if r.get(key) and r.get(base) else 0.0 for r in rows]
        ax.bar([i + (n - (len(series) - 1) / 2) * width for i in range(len(rows))], speedups, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("speed-up over torch.compile reduce-overhead")
    ax.legend(fontsize=8)
    return fig


def linear(data: dict[str, Any], ax_factory: Callable[..., Any]) -> Any:
    """Speed-up over cuBLAS per layer, one panel per M: the sparse GEMM alone, and the lynx linear
    with its prune+compress, with the bias folded, with the bias added apart."""
    rows = data["rows"]
    ms = sorted({r["m"] for r in rows})
    fig, axes = ax_factory(1, len(ms), figsize=(6 * len(ms), 4.5), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], ms, strict=True):
        sub = [r for r in rows if r["m"] == m]
        pos = range(len(sub))
        for offset, label, key in [
            (-0.3, "sparse GEMM alone", "sparse_gemm_ms"),
            (-0.1, "prune+compress + GEMM", "lynx_nobias_ms"),
            (0.1, "... + bias in the GEMM (fold_bias)", "lynx_folded_ms"),
            (0.3, "... + unfused bias add", "lynx_ms"),
        ]:
            ax.bar([p + offset for p in pos], [r["dense_ms"] / r[key] for r in sub], 0.2, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(list(pos), [f"{r['layer']}\n{r['k']}->{r['n']}" for r in sub], rotation=60, fontsize=7)
        ax.set_title(f"M = {m}")
    axes[0][0].set_ylabel("speedup over cuBLAS F.linear (bf16)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"2:4 activation-sparse linear vs dense, {data['meta']['gpu']}")
    return fig


PLOTS: dict[str, Callable[[dict[str, Any], Callable[..., Any]], Any]] = {"e2e": e2e, "linear": linear}


def kind(path: Path) -> str:
    """The benchmark a result file comes from: its name up to the first ``_`` (``e2e``, ``linear``)."""
    return path.stem.split("_", 1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="result JSON files (default: all under benchmarks/results)")
    args = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("benchmarks.plot needs matplotlib: pip install matplotlib") from None
    files = args.files or sorted(f for f in RESULTS.rglob("*.json") if kind(f) in PLOTS)
    for path in files:
        if kind(path) not in PLOTS:
            raise SystemExit(f"{path}: no plot for {kind(path)!r} results (plots: {sorted(PLOTS)})")
        fig = PLOTS[kind(path)](json.loads(path.read_text()), plt.subplots)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=110)
        plt.close(fig)
        print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
