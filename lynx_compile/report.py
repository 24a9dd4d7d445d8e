"""What was sparsified and what it cost: one row per GEMM, readable as a table and as JSON; and the
vocabulary of its ``path`` and ``prune`` columns, which the policy and the ops speak too."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any


class GemmPath(enum.StrEnum):
    """How a GEMM runs. The values are the report's and the benchmark results' strings."""

    DENSE = "dense"
    REFERENCE = "reference"  # prune_2to4 in torch ops, then the dense GEMM
    CUSPARSELT = "cusparselt"  # the Triton prune+compress (standalone or fused), then cuSPARSELt
    CUSPARSELT_COMPAT = "cusparselt-compat"  # cuSPARSELt's own compression: the Triton kernel failed its self-check

    @property
    def on_cusparselt(self) -> bool:
        return self in (GemmPath.CUSPARSELT, GemmPath.CUSPARSELT_COMPAT)


class PruneSite(enum.StrEnum):
    """Where a GEMM's activation is pruned (and compressed); the ``method`` of ``lynx::compress_2to4``."""

    NONE = "-"  # dense: not pruned
    TORCH = "torch"  # reference path: torch ops that Inductor fuses into the producer
    TRITON = "triton"  # the standalone Triton prune+compress kernel
    FUSED = "fused"  # Inductor's template, the producer computed in it as its prologue
    CSLT = "cslt"  # torch._cslt_compress of the reference pruning (cusparselt-compat)


@dataclasses.dataclass
class LayerReport:
    """One GEMM. ``rel_err`` / ``energy_pruned`` are filled by ``lynx_compile.inspect``, and by the
    backend with option ``max_layer_error`` (measured on the compiling call's inputs)."""

    name: str
    sparse: bool
    reason: str
    m: int
    k: int
    n: int
    dtype: str
    path: GemmPath
    rel_err: float | None = None  # ||Y_pruned - Y_dense|| / ||Y_dense||, this layer alone
    energy_pruned: float | None = None  # ||x - prune(x)||^2 / ||x||^2
    alg_id: int | None = None
    prune: PruneSite = PruneSite.NONE
    bias_folded: bool = False  # the bias is added inside the sparse GEMM (option fold_bias)
    low_rank: int = 0  # rank r of the low-rank branch (x A) B this GEMM adds (option low_rank)
    rel_err_low_rank: float | None = None  # rel_err with the branch added (measured with option low_rank)
    precision: str = "-"  # the GEMM's operands: "fp8" (float8_e4m3fn, option precision), or the activation's dtype

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flops": self.flops}


@dataclasses.dataclass
class Report:
    """The GEMMs of one model (or of every graph one compiled model produced)."""

    layers: list[LayerReport]
    device: str = "cpu"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def sparse_flops(self) -> int:
        return sum(layer.flops for layer in self.layers if layer.sparse)

    @property
    def sparse_share(self) -> float:
        return self.sparse_flops / self.total_flops if self.total_flops else 0.0

    def layer(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no GEMM named {name!r}; names: {[layer.name for layer in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "options": self.options,
            "notes": self.notes,
            "totals": {
                "gemms": len(self.layers),
                "sparse_gemms": sum(layer.sparse for layer in self.layers),
                "flops": self.total_flops,
                "sparse_flops": self.sparse_flops,
                "sparse_share": self.sparse_share,
            },
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)  # default: a Calibration in the options

    def __str__(self) -> str:
        header = (
            "name",
            "path",
            "prune",
            "M",
            "K",
            "N",
            "dtype",
            "precision",
            "GFLOP",
            "rel_err",
            "pruned_E",
            "r",
            "rel_err_r",
            "reason",
        )
        rows = [
            (
                layer.name,
                layer.path,
                layer.prune,
                str(layer.m),
                str(layer.k),
                str(layer.n),
                layer.dtype,
                layer.precision,
                f"{layer.flops / 1e9:.3g}",
                _fmt(layer.rel_err),
                _fmt(layer.energy_pruned),
                str(layer.low_rank) if layer.low_rank else "-",
                _fmt(layer.rel_err_low_rank),
                layer.reason,
            )
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_sparse = sum(layer.sparse for layer in self.layers)
        lines.append(
            f"{n_sparse}/{len(self.layers)} GEMMs sparse on {self.device}: "
            f"{self.sparse_flops / 1e9:.4g} of {self.total_flops / 1e9:.4g} GFLOP "
            f"({100 * self.sparse_share:.1f}%) run on 2:4 activations"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
