"""What the policy decides for one GEMM, and the groups of GEMMs that share one compression."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..report import GemmPath, PruneSite
from ..semantics import BIAS_COLUMNS
from .gemms import GemmSite


@dataclasses.dataclass(frozen=True)
class Decision:
    sparse: bool
    path: GemmPath
    reason: str  # for the report: why dense, or why sparse and how
    alg_id: int = 0
    prune: PruneSite = PruneSite.NONE
    fold_bias: bool = False  # the bias is added inside the sparse GEMM (``passes/fold_bias.py``)
    fallback: str | None = None  # why the reference or compat path rather than the fast one (logged once)
    fp8: bool = False  # option precision="fp8" holds for this GEMM: e4m3 operands (docs/design.md, "FP8")
    low_rank_columns: int = 0  # 2R: the low-rank branches of its activation group in the GEMM (``passes/low_rank.py``)
    order_in_kernel: bool = False  # permute_channels: the prune kernel permutes x's order (``passes/channel_order.py``)

    @classmethod
    def dense(cls, reason: str) -> Decision:
        return cls(False, GemmPath.DENSE, reason)

    def gemm_k(self, k: int) -> int:
        """K of the sparse GEMM: fused low-rank branches add their columns, a folded bias BIAS_COLUMNS."""
        return k + self.low_rank_columns + (BIAS_COLUMNS if self.fold_bias else 0)


def activation_groups(
    sites: Sequence[GemmSite], decisions: Sequence[Decision]
) -> dict[tuple[object, PruneSite, bool, bool], list[int]]:
    """The cuSPARSELt GEMMs by what they share: the activation, where it is pruned, the ones column
    of a folded bias, and fp8. Each group's activation is compressed once."""
    groups: dict[tuple[object, PruneSite, bool, bool], list[int]] = {}
    for i, (site, decision) in enumerate(zip(sites, decisions, strict=True)):
        if decision.sparse and decision.path.on_cusparselt:
            groups.setdefault((site.x, decision.prune, decision.fold_bias, decision.fp8), []).append(i)
    return groups
