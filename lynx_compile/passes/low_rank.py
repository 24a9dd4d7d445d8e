"""Option ``low_rank``: the fitted branch ``(x A) B`` of each sparse GEMM, checked against its calibration.

The branch goes into the graph as two ordinary matmuls and an add (``sparsify``): on the GPU Inductor runs
them on cuBLAS next to the sparse GEMM and fuses the add into its consumer; on the reference path they are
the same ops. A and B are stored in the GEMM's dtype (docs/design.md, "Low-rank compensation").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..calibration import PRUNING_OPTIONS, resolve
from ..config import LynxConfig
from .decision import Decision
from .gemms import GemmSite

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # GEMM name -> (A, B) in its dtype and on its device


def factors(sites: Sequence[GemmSite], decisions: Sequence[Decision], config: LynxConfig) -> Factors:
    """A and B for every sparse GEMM (none without option ``low_rank``); raises ``CalibrationMismatch`` when the
    calibration lacks one of them, has another shape for it, or assumed other pruning options."""
    sparse = [site for site, d in zip(sites, decisions, strict=True) if d.sparse]
    if not config.low_rank or not sparse:
        return {}
    assert config.calibration is not None  # LynxConfig refuses low_rank without it
    calibration = resolve(config.calibration)
    calibration.check([(s.name, s.k, s.n) for s in sparse], {o: getattr(config, o) for o in PRUNING_OPTIONS})
    out: Factors = {}
    for site in sparse:
        a, b = calibration.factors(site.name, config.low_rank)
        out[site.name] = (a.to(site.device, site.dtype), b.to(site.device, site.dtype))
    return out


def note(branches: Factors, config: LynxConfig) -> str:
    """The report's note on the branches: how many, and which are distilled rather than closed form."""
    assert config.calibration is not None
    calibration = resolve(config.calibration)
    distilled = sum((name, config.low_rank) in calibration.refined for name in branches)
    how = (
        f"{distilled} of them distilled end to end ({calibration.distilled[config.low_rank]['steps']} steps), "
        f"{len(branches) - distilled} closed form"
        if distilled
        else "closed form"
    )
    return f"low_rank={config.low_rank}: {len(branches)} GEMMs add (x A) B, {how}, from {calibration.source}"
