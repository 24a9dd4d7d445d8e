"""What the options fitted from a calibration share (``low_rank``, ``permute_channels``, ``refit``): which GEMMs it
covers, grouped by activation, the check that it covers every sparse one, and the report's line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..calibration import PRUNING_OPTIONS, Calibration, resolve
from ..config import LynxConfig
from .decision import Decision
from .gemms import GemmSite


def covered_readers(sites: Sequence[GemmSite], calibration: Calibration) -> dict[object, list[GemmSite]]:
    """The GEMMs the calibration covers (its K x N), grouped by the activation they read."""
    readers: dict[object, list[GemmSite]] = {}
    for site in sites:
        stats = calibration.stats.get(site.name)
        if stats is not None and (stats.k, stats.n) == (site.k, site.n):
            readers.setdefault(site.x, []).append(site)
    return readers


def check_sparse(
    sites: Sequence[GemmSite],
    decisions: Sequence[Decision],
    config: LynxConfig,
    same_pruning: bool = False,
) -> None:
    """``CalibrationMismatch`` unless the calibration covers every sparse GEMM (its K x N), and with
    ``same_pruning`` assumed the pruning options (``PRUNING_OPTIONS``) ``config`` has."""
    assert config.calibration is not None
    sparse = [s for s, d in zip(sites, decisions, strict=True) if d.sparse]
    options = {o: getattr(config, o) for o in PRUNING_OPTIONS} if same_pruning else None
    resolve(config.calibration).check([(s.name, s.k, s.n) for s in sparse], options)


def note(option: str, found: Mapping[str, object], config: LynxConfig, does: str) -> str:
    """The report's line on ``option``: how many sparse GEMMs and activations (one object per activation in
    ``found``, by GEMM name) ``does`` what, from which calibration."""
    assert config.calibration is not None
    activations = len({id(value) for value in found.values()})
    return (
        f"{option}: {len(found)} sparse GEMMs ({activations} activations) {does} {resolve(config.calibration).source}"
    )
