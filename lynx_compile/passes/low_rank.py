"""Option ``low_rank``: the fitted branch ``(x A) B`` of each sparse GEMM, checked against its calibration,
and the form it takes in the graph (docs/design.md, "Low-rank compensation"). A and B are stored in the
GEMM's dtype.

GEMMs that read one activation (q, k, v) share one A, fitted jointly (``Calibration.shared_factors``), each
with its own B: ``y_i = P(x) W_i^T + (x A) B_i``.

Fused (a 16-bit cuSPARSELt GEMM pruned by the standalone Triton kernel): the branch rides in the sparse
GEMM as 2R more columns of K. The GEMMs that share an activation's compression share one ``x A``: their
distinct A side by side, (K, R) (R = r where the fit shares A); the prune kernel computes ``u = round(x A)``
on its pass over x and appends ``spread_2to4(u)``; each GEMM's weight copy appends ``spread_2to4(B^T)``
with its own B at its A's columns of u and zeros at the others':

    [P(x) | spread(u)] @ [W | spread(B_i^T)]^T  =  P(x) W^T + u_i B_i

Unfused (everywhere else, with the reason in the report): ``x A`` once per activation and A, then
``u B_i`` and an add after each GEMM (``sparsify``); on the GPU Inductor runs them on cuBLAS and fuses the
add into its consumer, on the reference path they are the semantics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import torch

from ..calibration import Calibration, resolve
from ..codegen import self_check
from ..codegen.prune_compress_low_rank import RANK_MULTIPLE
from ..config import LynxConfig
from ..report import PruneSite
from . import calibrated, profitability
from .calibrated import covered_readers
from .decision import Decision, activation_groups
from .gemms import GemmSite

log = logging.getLogger("lynx_compile")

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # GEMM name -> (A, B) in its dtype and on its device


def factors(sites: Sequence[GemmSite], decisions: Sequence[Decision], config: LynxConfig) -> Factors:
    """A and B for every sparse GEMM (none without option ``low_rank``), in its dtype; raises
    ``CalibrationMismatch`` when the calibration lacks one of them, has another shape for it, or assumed other
    pruning options."""
    sparse = [site for site, d in zip(sites, decisions, strict=True) if d.sparse]
    if not config.low_rank or not sparse:
        return {}
    assert config.calibration is not None  # LynxConfig refuses low_rank without it
    calibrated.check_sparse(sites, decisions, config, same_pruning=True)
    return fitted(sites, {s.name for s in sparse}, resolve(config.calibration), config.low_rank, to_dtype=True)


def fitted(sites: Sequence[GemmSite], wanted: set[str], calibration: Calibration, rank: int, to_dtype: bool) -> Factors:
    """The factors of the GEMMs named in ``wanted`` that the calibration covers (its K x N), on their device (in
    their dtype with ``to_dtype``, else float64). The GEMMs of the graph that read one activation share one A,
    fitted jointly over all of them that the calibration covers, sparse or not, so that a GEMM's branch does
    not depend on its neighbours' decisions (``Calibration.shared_factors``); the shared A stays one tensor."""
    out: Factors = {}
    for group in covered_readers(sites, calibration).values():
        if not any(site.name in wanted for site in group):
            continue
        moved: dict[int, torch.Tensor] = {}  # id of a CPU factor -> its copy on the device: A stays shared
        for site, pair in zip(group, calibration.shared_factors([s.name for s in group], rank), strict=True):
            if site.name in wanted:
                dtype = site.dtype if to_dtype else torch.float64
                out[site.name] = tuple(  # type: ignore[assignment]
                    moved.setdefault(id(f), f.to(site.device, dtype)) for f in pair
                )
    return out


def distinct_a(names: Sequence[str], branches: Factors) -> list[torch.Tensor]:
    """The different A tensors of these GEMMs' branches, in order: one per activation where A is shared."""
    seen: dict[int, torch.Tensor] = {}
    for name in names:
        seen.setdefault(id(branches[name][0]), branches[name][0])
    return list(seen.values())


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
        ranks = [a.shape[1] for a in distinct_a([sites[i].name for i in members], branches)]
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
        return f"rank {odd[0]} is not a multiple of {RANK_MULTIPLE} (cuSPARSELt's K must stay a multiple of 32)"
    if not self_check.fast_compress_ok(site.device, site.dtype, low_rank=True):
        return "the Triton kernel with low-rank columns failed its self-check"
    return None


@functools.cache
def _warn_unfused(why: str) -> None:
    log.warning("lynx: low_rank: branches stay two GEMMs and an add in the graph: %s", why)


def fused_factors(sites: Sequence[GemmSite], decisions: Sequence[Decision], branches: Factors) -> Factors:
    """For each GEMM whose branch is fused: its compression group's A, (K, R), the group's distinct A side by
    side (one tensor per group; one A where the fit shares it), and its own B padded to (R, N), zeros at the
    rows of the other A's columns."""
    out: Factors = {}
    for members in activation_groups(sites, decisions).values():
        names = [sites[i].name for i in members if decisions[i].low_rank_columns]
        if not names:
            continue
        parts = distinct_a(names, branches)
        a = torch.cat(parts, dim=1)
        starts, offset = {}, 0
        for part in parts:
            starts[id(part)], offset = offset, offset + part.shape[1]
        for name in names:
            a_own, b = branches[name]
            padded = b.new_zeros((a.shape[1], b.shape[1]))
            start = starts[id(a_own)]
            padded[start : start + b.shape[0]] = b
            out[name] = (a, padded)
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
    shared = len(distinct_a(list(branches), branches))
    return (
        f"low_rank={config.low_rank}: {len(branches)} GEMMs add (x A) B with {shared} different A (GEMMs that read "
        f"one activation share one), {how}, from {calibration.source}"
    )


def forms_note(decisions: Sequence[Decision], branches: Factors) -> str:
    """The report's note on the branches' forms: how many are fused into their sparse GEMM."""
    fused = sum(d.low_rank_columns > 0 for d in decisions)
    return (
        f"low_rank: {fused} of {len(branches)} branches fused into the sparse GEMM (extra K columns), "
        f"{len(branches) - fused} as two GEMMs and an add in the graph (reasons per GEMM)"
    )
