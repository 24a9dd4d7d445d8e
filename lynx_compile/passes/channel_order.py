"""Option ``permute_channels``: the channel order each activation is pruned in (docs/design.md, "Channel order").

2:4 pruning keeps the two largest of every 4 consecutive channels. Where a group holds two large channels and
a third as large (a DiT's outlier channels next to each other), it must drop a large one. Permuting the
channels of x and the columns of W alike changes nothing in ``x @ W.T`` but which channels share a group:

    prune_2to4(x[..., order]) @ W[:, order].T      (the weight a copy, ``FoldedWeights``)

The order comes from a calibration (``Calibration.channel_order``: the channels' energies, large ones spread
two to a group). GEMMs that read one activation share its compression, so they share one order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..calibration import resolve
from ..codegen import self_check
from ..config import LynxConfig
from ..report import PruneSite
from . import calibrated
from .calibrated import covered_readers
from .decision import Decision
from .gemms import GemmSite

Orders = dict[str, torch.Tensor]  # GEMM name -> the order of its activation's channels (int64, its device)


def orders(sites: Sequence[GemmSite], config: LynxConfig) -> Orders:
    """The channel order of every GEMM the calibration covers (its K x N), one per activation; none without
    option ``permute_channels``."""
    if not config.permute_channels:
        return {}
    assert config.calibration is not None  # LynxConfig refuses permute_channels without it
    calibration = resolve(config.calibration)
    out: Orders = {}
    for group in covered_readers(sites, calibration).values():
        order = calibration.channel_order([s.name for s in group]).to(group[0].device)
        out.update(dict.fromkeys((s.name for s in group), order))
    return out


def check(sites: Sequence[GemmSite], decisions: Sequence[Decision], config: LynxConfig) -> None:
    """``CalibrationMismatch`` unless the calibration has (so the orders cover) every sparse GEMM."""
    if config.permute_channels:
        calibrated.check_sparse(sites, decisions, config)


def in_kernel(site: GemmSite, decision: Decision, compensate: bool) -> tuple[bool, str]:
    """(whether the prune+compress kernel permutes the order in its tiles, where the report says it happens).
    The standalone kernels do (16-bit with or without norm sums or a ones column, and fp8) once their self-check
    passed, and the ``cusparselt-compat`` op gathers before ``torch._cslt_compress`` (no kernel of its own to
    check); elsewhere ``x[..., order]`` is a gather in the graph, a pass over x unless Inductor fuses it into x's
    producer (fused low-rank branches, fp8 with norm compensation, whose scale Inductor computes from the ordered
    x, the reference path, a kernel that failed its self-check)."""
    if not decision.path.on_cusparselt or decision.low_rank_columns or (decision.fp8 and compensate):
        return False, "in the graph"
    if decision.prune == PruneSite.CSLT:  # cusparselt-compat: the op gathers before torch._cslt_compress
        return True, "in the compression op"
    variant = {"fp8": True} if decision.fp8 else {"ones_column": decision.fold_bias, "norms": compensate}
    if not self_check.fast_compress_ok(site.device, site.dtype, ordered=True, **variant):  # logged once
        return False, "in the graph: the prune kernel's permutation failed its self-check"
    return True, "in the prune kernel"


def annotated(
    sites: Sequence[GemmSite], decisions: Sequence[Decision], found: Orders, compensate: bool
) -> list[Decision]:
    """The decisions, each sparse one in ``found`` saying where its order is gathered (``order_in_kernel``)."""
    out = []
    for site, d in zip(sites, decisions, strict=True):
        if d.sparse and site.name in found:
            kernel, where = in_kernel(site, d, compensate)
            d = dataclasses.replace(d, order_in_kernel=kernel, reason=f"{d.reason}; channels permuted ({where})")
        out.append(d)
    return out


def note(found: Orders, config: LynxConfig) -> str:
    """The report's line on option ``permute_channels``."""
    return calibrated.note("permute_channels", found, config, "prune in the channel order of")
