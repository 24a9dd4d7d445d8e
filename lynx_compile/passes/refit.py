"""Option ``refit``: the map G (K x K) each sparse GEMM's weight is refitted with, ``W' = W G^T``
(``lynx_compile.refit``; the copies are made by ``FoldedWeights``, every measurement prunes with them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..calibration import CalibrationMismatch, resolve
from ..config import LynxConfig
from . import calibrated
from .calibrated import covered_readers
from .decision import Decision
from .gemms import GemmSite

Maps = dict[str, torch.Tensor]  # GEMM name -> G (float64, its device), one tensor per activation


def maps(sites: Sequence[GemmSite], config: LynxConfig) -> Maps:
    """G of every GEMM the calibration covers (its K x N); none without option ``refit``. Raises
    ``CalibrationMismatch`` for a calibration made without the refit moments."""
    if not config.refit:
        return {}
    assert config.calibration is not None  # LynxConfig refuses refit without it
    calibration = resolve(config.calibration)
    if not calibration.refit:
        raise CalibrationMismatch(
            f"lynx option refit: calibration {calibration.source} has no refit moments: calibrate with "
            "options={'refit': True} (`lynx-compile calibrate -o refit=true`)"
        )
    out: Maps = {}
    for group in covered_readers(sites, calibration).values():
        moved: dict[int, torch.Tensor] = {}  # id of a CPU map -> its copy on the device: shared maps stay shared
        for site in group:
            g = calibration.refit_map(site.name)
            out[site.name] = moved.setdefault(id(g), g.to(site.device))
    return out


def check(sites: Sequence[GemmSite], decisions: Sequence[Decision], config: LynxConfig) -> None:
    """``CalibrationMismatch`` unless the calibration covers every sparse GEMM, and prunes as they do."""
    if config.refit:
        calibrated.check_sparse(sites, decisions, config, same_pruning=True)


def note(found: Maps, config: LynxConfig) -> str:
    """The report's line on option ``refit``."""
    return calibrated.note("refit", found, config, "run with their weights refitted to their pruned inputs, from")
