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
from ..config import LynxConfig
from .decision import Decision
from .gemms import GemmSite
from .low_rank import covered_readers

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
        assert config.calibration is not None
        sparse = [s for s, d in zip(sites, decisions, strict=True) if d.sparse]
        resolve(config.calibration).check([(s.name, s.k, s.n) for s in sparse])


def in_kernel(decision: Decision) -> bool:
    """Whether the prune+compress kernel permutes the order in its tiles (the 16-bit standalone kernel, with or
    without norm sums or a ones column); elsewhere ``x[..., order]`` is a gather in the graph, a pass over x
    unless Inductor fuses it into x's producer (the fp8 kernel, fused low-rank branches, the reference path)."""
    return decision.path.on_cusparselt and not decision.fp8 and not decision.low_rank_columns


def annotated(sites: Sequence[GemmSite], decisions: Sequence[Decision], found: Orders) -> list[Decision]:
    """The decisions, each sparse one in ``found`` saying where its order is gathered."""
    out = []
    for site, d in zip(sites, decisions, strict=True):
        if d.sparse and site.name in found:
            where = "in the prune kernel" if in_kernel(d) else "in the graph"
            d = dataclasses.replace(d, reason=f"{d.reason}; channels permuted ({where})")
        out.append(d)
    return out


def note(found: Orders, config: LynxConfig) -> str:
    """The report's line on option ``permute_channels``."""
    assert config.calibration is not None
    activations = len({id(order) for order in found.values()})
    return (
        f"permute_channels: {len(found)} sparse GEMMs ({activations} activations) prune in the channel order of "
        f"{resolve(config.calibration).source}"
    )
