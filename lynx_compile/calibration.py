"""``Calibration``: per-GEMM statistics of a dense model's activations, what the low-rank fit needs.

For each GEMM ``y = x W^T + b`` (K in, N out), over every calibration row x: ``Sxx = sum x x^T`` (K x K),
``Sxt = sum x t^T`` (K x N) with ``t = (x - P(x)) W^T`` the pruned layer's output error (P: 2:4 pruning, with
norm compensation when the calibration assumed it, its groups in the channel order of option
``permute_channels`` when it assumed that), ``sum ||t||^2`` and the number of rows. Accumulated in float64,
streaming: memory is K x (K + N) per GEMM whatever the number of rows. The file keeps the statistics, not
factors, so that any rank can be fitted at compile time (``lowrank.fit``); factors only where
``lynx_compile.distill`` refined them for a rank: those cannot be recomputed from the statistics. A calibration
made for option ``refit`` also keeps ``Spp = sum P P^T`` and ``Spe = sum P e^T`` (K x K, e = x - P(x)) and
``sum ||e||^2``: 2 K x K more per GEMM (``lynx_compile.refit``).

File: ``PATH`` (safetensors, ``<name>/sxx`` and ``<name>/sxt`` per GEMM, ``<name>/a<r>`` and ``<name>/b<r>``
per distilled GEMM and rank, ``<name>/order`` per GEMM of a calibration made with ``permute_channels``,
``<name>/spp`` and ``<name>/spe`` with ``refit``) and ``PATH.json`` beside it (format version, GEMM names with
K, N, rows, ``sum ||t||^2`` and with ``refit`` ``sum ||e||^2``, the model dtype, the pruning options assumed,
and per distilled rank its steps, learning rate and losses).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import lowrank
from . import refit as weight_refit
from .semantics import GROUP, ORDER_BLOCK, check_order, pruning

# 4: the moments of option refit; 3: channel orders (option permute_channels); 2: distilled factors; 1: statistics
# only. Each is written only when the file has what needs it, so that a plain calibration stays readable by
# older lynx_compile versions.
FORMAT = 4
# The options of LynxConfig that change t = (x - P(x)) W^T: a calibration made under other values
# fits the wrong error. Files of formats 1 and 2 predate permute_channels: they assumed it off.
PRUNING_OPTIONS = ("compensate", "permute_channels")
_BEFORE = {"permute_channels": False}


def balanced_order(energy: torch.Tensor) -> torch.Tensor:
    """A channel order (option ``permute_channels``) from the channels' energies E[x_k^2], (K,), within each
    block of ORDER_BLOCK columns (the last one may be shorter): sorted by energy, the block's larger half goes two
    to a group of 4 and its smaller half fills the groups, the two largest with the two smallest. 2:4 pruning
    then mostly drops small channels, where in the model's own order a group can hold several large ones (a
    DiT's outlier channels) and must drop one (docs/design.md, "Channel order"). Ties keep the lower channel
    first."""
    k = energy.numel()
    if k % GROUP:
        raise ValueError(f"a channel order needs K divisible by {GROUP}, got {k}")
    energy = energy.cpu()
    blocks = []
    for start in range(0, k, ORDER_BLOCK):
        block = energy[start : start + ORDER_BLOCK]
        by_energy = start + torch.argsort(block, descending=True, stable=True)
        half = block.numel() // 2
        large, small = by_energy[:half], by_energy[half:].flip(0)
        blocks.append(torch.stack([large[0::2], large[1::2], small[0::2], small[1::2]], dim=1).reshape(-1))
    return torch.cat(blocks)


class CalibrationMismatch(ValueError):
    """A calibration does not fit the model or the options it is used with."""


@dataclasses.dataclass
class GemmStatistics:
    """The streaming moments of one GEMM (float64, on the device of the activations that fed them). With
    ``refit`` (made by ``empty(..., refit=True)``) also those of option ``refit``: ``Spp = sum P P^T`` and
    ``Spe = sum P e^T`` (K x K), e = x - P(x), and ``sum ||e||^2``."""

    sxx: torch.Tensor  # (K, K)
    sxt: torch.Tensor  # (K, N)
    rows: int = 0
    tt: float = 0.0  # sum ||t||^2: the pruning error's energy without the branch
    spp: torch.Tensor | None = None  # (K, K), option refit
    spe: torch.Tensor | None = None  # (K, K), option refit
    ee: float = 0.0  # sum ||e||^2, option refit

    @classmethod
    def empty(cls, k: int, n: int, device: torch.device | str = "cpu", refit: bool = False) -> GemmStatistics:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        return cls(zeros(k, k), zeros(k, n), spp=zeros(k, k) if refit else None, spe=zeros(k, k) if refit else None)

    @property
    def k(self) -> int:
        return self.sxx.shape[0]

    @property
    def n(self) -> int:
        return self.sxt.shape[1]

    @property
    def refit(self) -> bool:
        """Whether it has the moments of option ``refit``."""
        return self.spp is not None

    def add(self, x: torch.Tensor, weight: torch.Tensor, compensate: bool, order: torch.Tensor | None = None) -> None:
        """Add the rows of ``x`` (any leading dims, K last; the GEMM's activation as the model computes it) for
        the weight ``weight`` (N, K). P(x) is computed in x's own dtype, as the pruned layer computes it, its
        groups in ``order`` (``permute_channels``)."""
        x = x.reshape(-1, x.shape[-1])
        pruned = pruning(compensate, order)(x).double()
        x64 = x.double()
        e = x64 - pruned
        t = e @ weight.double().mT
        self.sxx += x64.mT @ x64
        self.sxt += x64.mT @ t
        self.rows += x.shape[0]
        self.tt += t.square().sum().item()
        if self.spp is not None and self.spe is not None:
            self.spp += pruned.mT @ pruned
            self.spe += pruned.mT @ e
            self.ee += e.square().sum().item()


class Calibration:
    """Statistics per GEMM name (the names of the lynx pass), the model dtype and the pruning options they
    assume. ``factors(name, r)`` fits (and caches) the rank-r branch of one GEMM."""

    def __init__(
        self,
        stats: Mapping[str, GemmStatistics],
        *,
        options: Mapping[str, Any],
        dtype: str,
        source: str = "memory",
        orders: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        missing = [o for o in PRUNING_OPTIONS if o not in options]
        if missing:
            raise ValueError(f"a calibration needs the pruning options {list(PRUNING_OPTIONS)}; missing {missing}")
        self.stats = dict(stats)
        self.options = {o: options[o] for o in PRUNING_OPTIONS}
        self.dtype = dtype
        self.source = source  # where it came from: for error messages and the report
        # the channel orders its statistics were collected in (made with permute_channels), by GEMM name
        self.orders = {name: order.cpu() for name, order in (orders or {}).items()}
        self._fits: dict[tuple[str | tuple[str, ...], int], tuple[torch.Tensor, torch.Tensor]] = {}  # by name(s)
        self._refits: dict[str, torch.Tensor] = {}  # name -> G of option refit
        # (name, rank) -> (A, B) refined by lynx_compile.distill; rank -> its record (steps, lr, loss_before/after)
        self.refined: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.distilled: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        distilled = "".join(f", rank {r} distilled ({d['steps']} steps)" for r, d in sorted(self.distilled.items()))
        return f"Calibration({len(self.stats)} GEMMs, {self.rows} rows, {self.options}{distilled}, from {self.source})"

    @property
    def names(self) -> list[str]:
        return list(self.stats)

    @property
    def rows(self) -> int:
        """Rows of the GEMM that saw the most (the others: fewer, when some calls skipped them)."""
        return max((s.rows for s in self.stats.values()), default=0)

    def channel_order(self, names: Sequence[str]) -> torch.Tensor:
        """The channel order (CPU, int64) of the activation that the GEMMs ``names`` read (option
        ``permute_channels``): the one its statistics were collected in, else ``balanced_order`` of its energies
        (the diagonal of Sxx; GEMMs that read one activation have the same)."""
        stored = next((self.orders[n] for n in names if n in self.orders), None)
        return stored if stored is not None else balanced_order(self.stats[names[0]].sxx.diagonal())

    def factors(self, name: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A (K x r) and B (r x N), float64 on the CPU: the distilled factors where ``distill`` refined this GEMM
        at this rank, else ``closed_form``."""
        return self.refined.get((name, rank)) or self.closed_form(name, rank)

    def closed_form(self, name: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``lowrank.fit`` of this GEMM's statistics (cached), run on their device: a calibration made on the
        GPU fits there, where a K = 15360 fit takes seconds, not minutes."""
        key = (name, rank)
        if key not in self._fits:
            s = self.stats[name]
            a, b = lowrank.fit(s.sxx, s.sxt, rank, s.rows, s.tt)
            self._fits[key] = (a.cpu(), b.cpu())
        return self._fits[key]

    @property
    def refit(self) -> bool:
        """Whether it has the moments of option ``refit`` (made with ``calibrate(..., options={"refit": True})``)."""
        return bool(self.stats) and all(s.refit for s in self.stats.values())

    def refit_map(self, name: str) -> torch.Tensor:
        """Option ``refit``: this GEMM's ``G`` (K x K, float64 on the CPU; ``lynx_compile.refit``), cached; GEMMs
        with the same moments (those reading one activation) share one tensor."""
        s = self.stats[name]
        if s.spp is None or s.spe is None:
            raise CalibrationMismatch(
                f"calibration {self.source} has no refit statistics: calibrate with options={{'refit': True}} "
                "(`lynx-compile calibrate -o refit=true`)"
            )
        for other, g in self._refits.items():
            o = self.stats[other]
            if o.rows == s.rows and o.ee == s.ee and torch.equal(o.spp, s.spp) and torch.equal(o.spe, s.spe):
                self._refits[name] = g
                break
        else:
            self._refits[name] = weight_refit.refit_map(s.spp, s.spe, s.rows, s.ee).cpu()
        return self._refits[name]

    def shared_factors(self, names: Sequence[str], rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``factors`` of GEMMs that read one activation (q, k, v), with one A for all: ``lowrank.fit`` of their
        errors side by side (``Sxt`` concatenated along N) gives A (K x r) and B = [B_1 | B_2 | ...]; each GEMM
        gets (A, B_i), the same A tensor. A fused branch then costs 2r more columns of K for the group, not 2r
        per GEMM, and on the yardstick the joint rank-r A leaves as much error as separate ones (within 1%,
        docs/design.md, "Low-rank compensation"). Each GEMM's own ``factors`` where that cannot hold: one
        name, distilled factors (trained per GEMM), or statistics that show different activations."""
        # distilled factors first: a ``with_distilled`` copy shares the cache of joint fits
        if len(names) == 1 or any((name, rank) in self.refined for name in names):
            return [self.factors(name, rank) for name in names]
        stats = [self.stats[name] for name in names]
        key = (tuple(names), rank)
        if key not in self._fits:  # the K x K comparison once per group, not at every compile or inspected call
            first = stats[0]
            if not all(s.rows == first.rows and torch.equal(s.sxx, first.sxx) for s in stats[1:]):
                return [self.factors(name, rank) for name in names]
            a, b = lowrank.fit(
                first.sxx, torch.cat([s.sxt for s in stats], dim=1), rank, first.rows, sum(s.tt for s in stats)
            )
            self._fits[key] = (a.cpu(), b.cpu())
        a, b = self._fits[key]
        return [(a, part) for part in b.split([s.n for s in stats], dim=1)]

    def with_distilled(
        self, rank: int, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], record: Mapping[str, Any]
    ) -> Calibration:
        """A copy whose ``factors(name, rank)`` are ``factors`` for their GEMMs (other GEMMs and ranks as here;
        an earlier distillation at ``rank`` is replaced), with ``record`` kept as rank's ``distilled`` entry."""
        unknown = [name for name in factors if name not in self.stats]
        if unknown:
            raise CalibrationMismatch(f"distilled factors for GEMMs without statistics in {self.source}: {unknown}")
        shapes = {
            name: (tuple(a.shape), tuple(b.shape))
            for name, (a, b) in factors.items()
            if a.dim() != 2
            or b.dim() != 2
            or (a.shape[0], b.shape[1]) != (self.stats[name].k, self.stats[name].n)
            or not a.shape[1] == b.shape[0] <= rank
        }
        if shapes:
            raise CalibrationMismatch(
                f"distilled rank-{rank} factors of {self.source} do not fit their GEMMs' K x N (A, B shapes): {shapes}"
            )
        out = Calibration(self.stats, options=self.options, dtype=self.dtype, source=self.source, orders=self.orders)
        out._fits = self._fits  # the closed forms do not change: share the cache
        out.refined = {key: ab for key, ab in self.refined.items() if key[1] != rank}
        out.refined.update({(name, rank): (a.double().cpu(), b.double().cpu()) for name, (a, b) in factors.items()})
        out.distilled = {**self.distilled, rank: dict(record)}
        return out

    def check(self, gemms: Iterable[tuple[str, int, int]], options: Mapping[str, Any] | None = None) -> None:
        """Raise ``CalibrationMismatch`` unless every ``(name, K, N)`` has statistics of that shape and
        ``options`` (None: not checked) prune as the calibration assumed."""
        options = options or self.options
        differ = {o: (self.options[o], options[o]) for o in PRUNING_OPTIONS if options[o] != self.options[o]}
        if differ:
            raise CalibrationMismatch(
                f"calibration {self.source} assumed "
                + ", ".join(f"{o}={c!r}" for o, (c, _) in differ.items())
                + ", the model is compiled with "
                + ", ".join(f"{o}={u!r}" for o, (_, u) in differ.items())
                + ": calibrate again with the same options"
            )
        gemms = list(gemms)
        missing = [name for name, _, _ in gemms if name not in self.stats]
        if missing:
            raise CalibrationMismatch(
                f"calibration {self.source} has no statistics for the GEMMs {missing} (it has {self.names}): "
                "calibrate this model with the options it is compiled with"
            )
        shapes = [
            (name, (k, n), (self.stats[name].k, self.stats[name].n))
            for name, k, n in gemms
            if (k, n) != (self.stats[name].k, self.stats[name].n)
        ]
        if shapes:
            raise CalibrationMismatch(
                f"calibration {self.source} was made for other shapes: "
                + ", ".join(f"{name} is K x N = {m} in the model, {c} in the calibration" for name, m, c in shapes)
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors) and ``path.json``; returns the JSON path."""
        path = Path(path)
        tensors = {}
        for name, s in self.stats.items():
            tensors[f"{name}/sxx"], tensors[f"{name}/sxt"] = s.sxx.cpu().contiguous(), s.sxt.cpu().contiguous()
            if s.spp is not None and s.spe is not None:
                tensors[f"{name}/spp"], tensors[f"{name}/spe"] = s.spp.cpu().contiguous(), s.spe.cpu().contiguous()
        for (name, rank), (a, b) in self.refined.items():
            tensors[f"{name}/a{rank}"], tensors[f"{name}/b{rank}"] = a.contiguous(), b.contiguous()
        for name, order in self.orders.items():
            tensors[f"{name}/order"] = order.contiguous()
        save_file(tensors, path)
        meta: dict[str, Any] = {
            "format": 4 if self.refit else 3 if self.orders else 2 if self.distilled else 1,
            "dtype": self.dtype,
            "options": self.options,
            "gemms": {
                name: {"k": s.k, "n": s.n, "rows": s.rows, "tt": s.tt, **({"ee": s.ee} if s.refit else {})}
                for name, s in self.stats.items()
            },
        }
        if self.distilled:
            meta["distilled"] = [{"rank": rank, **record} for rank, record in sorted(self.distilled.items())]
        sidecar = _sidecar(path)
        sidecar.write_text(json.dumps(meta, indent=1) + "\n")
        return sidecar

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        path = Path(path)
        sidecar = _sidecar(path)
        if not path.is_file() or not sidecar.is_file():
            raise FileNotFoundError(
                f"calibration {path}: needs {path} and {sidecar} (lynx_compile.calibrate(...)"
                ".save(path) or `lynx-compile calibrate`)"
            )
        meta = json.loads(sidecar.read_text())
        version = meta.get("format")
        if not isinstance(version, int) or not 1 <= version <= FORMAT:
            newer = isinstance(version, int) and version > FORMAT
            raise CalibrationMismatch(
                f"calibration {path} has format {version}, this lynx_compile reads formats 1 to {FORMAT}: "
                + ("it was written by a newer lynx_compile (upgrade this one)" if newer else "calibrate again")
            )
        tensors = load_file(path)
        stats = {}
        for name, g in meta["gemms"].items():
            sxx, sxt = tensors[f"{name}/sxx"], tensors[f"{name}/sxt"]
            if sxx.shape != (g["k"], g["k"]) or sxt.shape != (g["k"], g["n"]):
                raise CalibrationMismatch(
                    f"calibration {path}: {name}'s tensors {tuple(sxx.shape)}, "
                    f"{tuple(sxt.shape)} disagree with its K={g['k']}, N={g['n']}"
                )
            spp, spe = tensors.get(f"{name}/spp"), tensors.get(f"{name}/spe")
            if (spp is None) != (spe is None) or (spp is not None and (spp.shape, spe.shape) != ((g["k"],) * 2,) * 2):
                raise CalibrationMismatch(
                    f"calibration {path}: {name}'s refit moments are incomplete or not K x K (K={g['k']})"
                )
            stats[name] = GemmStatistics(sxx, sxt, g["rows"], g["tt"], spp, spe, g.get("ee", 0.0))
        orders = {name: tensors[f"{name}/order"] for name in stats if f"{name}/order" in tensors}
        for name, order in orders.items():
            try:
                check_order(order, stats[name].k)
            except ValueError as e:
                raise CalibrationMismatch(f"calibration {path}: {name}: {e}") from None
        calibration = cls(
            stats, options={**_BEFORE, **meta["options"]}, dtype=meta["dtype"], source=str(path), orders=orders
        )
        for record in meta.get("distilled", []):
            rank = record["rank"]
            refined = {
                name: (tensors[f"{name}/a{rank}"], tensors[f"{name}/b{rank}"])
                for name in stats
                if f"{name}/a{rank}" in tensors
            }
            calibration = calibration.with_distilled(rank, refined, {k: v for k, v in record.items() if k != "rank"})
        return calibration


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


_LOADED: dict[tuple[str, int, int], Calibration] = {}


def resolve(calibration: str | os.PathLike | Calibration) -> Calibration:
    """The object itself, or the file loaded (once per path and modification)."""
    if isinstance(calibration, Calibration):
        return calibration
    path = Path(calibration).resolve()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    if key not in _LOADED:
        _LOADED[key] = Calibration.load(path)
    return _LOADED[key]
