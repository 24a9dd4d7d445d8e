"""Option ``low_rank``: the fitted branch ``(x A) B`` of each sparse GEMM, checked against its calibration,
and the form it takes in the graph (docs/design.md, "Low-rank compensation"). A and B are stored in the
GEMM's dtype.

Fused (a 16-bit cuSPARSELt GEMM pruned by the standalone Triton kernel): the branch rides in the sparse
GEMM as 2R more columns of K. The GEMMs that share an activation's compression share one ``x A``: their
A side by side, (K, R) with R the sum of their ranks; the prune kernel computes ``u = round(x A)`` on its
pass over x and appends ``spread_2to4(u)``; each GEMM's weight copy appends ``spread_2to4(B^T)`` with its
own B at its columns of u and zeros at the others':

    [P(x) | spread(u)] @ [W | spread(B_i^T)]^T  =  P(x) W^T + u_i B_i

Unfused (everywhere else, with the reason in the report): two ordinary matmuls and an add after the GEMM
(``sparsify``); on the GPU Inductor runs them on cuBLAS and fuses the add into its consumer, on the
reference path they are the semantics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import torch

from ..calibration import PRUNING_OPTIONS, resolve
from ..codegen import self_check
from ..codegen.prune_compress_low_rank import MAX_RANK, RANK_MULTIPLE
from ..config import LynxConfig
from ..report import PruneSite
from . import profitability
from .decision import Decision, activation_groups
from .gemms import GemmSite

log = logging.getLogger("lynx_compile")

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


def fuse(
    sites: Sequence[GemmSite], decisions: Sequence[Decision], branches: Factors, config: LynxConfig
) -> list[Decision]:
    """Which branches go into their sparse GEMM (``Decision.low_rank_columns``, a cuSPARSELt algorithm timed
    for the longer K) and which stay in the graph; each GEMM's reason says which and why, each reason for
    staying unfused is logged once."""
    out = [
        d if d.path.on_cusparselt or site.name not in branches else _noted(d, "low-rank branch unfused: reference path")
        for site, d in zip(sites, decisions, strict=True)
    ]
    for (_, prune, _, fp8), members in activation_groups(sites, decisions).items():
        members = [i for i in members if sites[i].name in branches]
        if not members:
            continue
        ranks = [branches[sites[i].name][0].shape[1] for i in members]
        why = _unfused(sites[members[0]], prune, fp8, ranks, config)
        if why:
            _warn_unfused(why)
        columns = 2 * sum(ranks)
        shared = f", x A shared by {len(members)} GEMMs" if len(members) > 1 else ""
        for i in members:
            if why:
                out[i] = _noted(out[i], f"low-rank branch unfused: {why}")
            else:
                d = _noted(out[i], f"low-rank branch fused into the sparse GEMM (K + {columns}{shared})")
                out[i] = profitability.with_alg(sites[i], dataclasses.replace(d, low_rank_columns=columns))
    return out


def _noted(decision: Decision, note: str) -> Decision:
    return dataclasses.replace(decision, reason=f"{decision.reason}; {note}")


def _unfused(site: GemmSite, prune: PruneSite, fp8: bool, ranks: Sequence[int], config: LynxConfig) -> str | None:
    """Why the branches of an activation group (``ranks``: theirs; the fit clips r to min(K, N)) cannot go
    into its sparse GEMMs, or None."""
    if fp8:
        return "fp8 GEMM (the fused kernel writes 16-bit operands)"
    if config.compensate:
        return "compensate (the row scale would scale the branch too)"
    if prune == PruneSite.FUSED:
        return "activation pruned in Inductor's template (fuse_producers), which computes no x A"
    if prune != PruneSite.TRITON:
        return "the Triton prune+compress failed its self-check (cusparselt-compat)"
    odd = [r for r in ranks if r % RANK_MULTIPLE]
    if odd:
        return f"rank {odd[0]} is not a multiple of {RANK_MULTIPLE} (the fused kernel's x A tile)"
    if sum(ranks) > MAX_RANK:
        return (
            f"x A of the {len(ranks)} GEMMs sharing this activation has {sum(ranks)} columns, "
            f"over the fused kernel's {MAX_RANK}"
        )
    if not self_check.fast_compress_ok(site.device, site.dtype, low_rank=True):
        return "the Triton kernel with low-rank columns failed its self-check"
    return None


@functools.cache
def _warn_unfused(why: str) -> None:
    log.warning("lynx: low_rank: branches stay two GEMMs and an add in the graph: %s", why)


def fused_factors(sites: Sequence[GemmSite], decisions: Sequence[Decision], branches: Factors) -> Factors:
    """For each GEMM whose branch is fused: its activation group's A, (K, R), the members' A side by side
    (one tensor per group), and its own B padded to (R, N), zeros at the other members' rows."""
    out: Factors = {}
    for members in activation_groups(sites, decisions).values():
        names = [sites[i].name for i in members if decisions[i].low_rank_columns]
        if not names:
            continue
        a = torch.cat([branches[name][0] for name in names], dim=1)
        start = 0
        for name in names:
            b = branches[name][1]
            padded = b.new_zeros((a.shape[1], b.shape[1]))
            padded[start : start + b.shape[0]] = b
            out[name] = (a, padded)
            start += b.shape[0]
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


def forms_note(decisions: Sequence[Decision], branches: Factors) -> str:
    """The report's note on the branches' forms: how many are fused into their sparse GEMM."""
    fused = sum(d.low_rank_columns > 0 for d in decisions)
    return (
        f"low_rank: {fused} of {len(branches)} branches fused into the sparse GEMM (extra K columns), "
        f"{len(branches) - fused} as two GEMMs and an add in the graph (reasons per GEMM)"
    )
