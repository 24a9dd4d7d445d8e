"""Does one A shared by the GEMMs that read one activation (q, k, v) predict their pruning errors as well as one
A per GEMM? See the README beside this file. Run from the repository's root:
``PYTHONPATH=. python benchmarks/studies/shared_low_rank_cpu/shared_low_rank.py [CAPTIONS]``.

Two calibrations of the trained yardstick on disjoint captions: the factors are fitted on the first, and the
error they leave is measured on the second's moments (``lowrank.residual``), as a share of the pruning error's
energy. Per rank r and group: separate rank-r fits, a shared A of rank r, a shared A of rank n x r (the same
branch columns as n separate ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from benchmarks.quality.__main__ import CALIBRATION_NOISE_SEED, CALIBRATION_SEED
from lynx_compile import Calibration, calibrate, lowrank, yardstick

HELD_OUT_SEED = 999  # captions of the held-out calibration (scenes), and its noise seeds from 200000
HELD_OUT_NOISE_SEED = 200_000
RANKS = (16, 32)


def captions(n: int, seed: int) -> list[str]:
    return [yardstick.caption(s) for s in yardstick.sample_scenes(n, torch.Generator().manual_seed(seed))]


def groups(calibration: Calibration) -> list[list[str]]:
    """The GEMMs whose statistics show one activation (equal Sxx), two or more to a group."""
    out: list[list[str]] = []
    for name in calibration.names:
        sxx = calibration.stats[name].sxx
        match = next((g for g in out if torch.equal(calibration.stats[g[0]].sxx, sxx)), None)
        if match is None:
            out.append([name])
        else:
            match.append(name)
    return [g for g in out if len(g) > 1]


def left(calibration: Calibration, names: list[str], pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The error the factors leave on ``calibration``'s rows, summed over the group."""
    return sum(
        lowrank.residual(calibration.stats[n].sxx, calibration.stats[n].sxt, calibration.stats[n].tt, a, b)
        for n, (a, b) in zip(names, pairs, strict=True)
    )


def main(n: int = 16) -> None:
    pipe = yardstick.load_pipeline(device=torch.device("cpu"), dtype=torch.float32)
    fit_on = calibrate(pipe, captions(n, CALIBRATION_SEED), steps=28, seed=CALIBRATION_NOISE_SEED)
    held_out = calibrate(pipe, captions(n, HELD_OUT_SEED), steps=28, seed=HELD_OUT_NOISE_SEED)
    rows = []
    for rank in RANKS:
        for names in groups(fit_on):
            energy = sum(held_out.stats[name].tt for name in names)
            fits = {
                "separate": [fit_on.closed_form(name, rank) for name in names],
                "shared": fit_on.shared_factors(names, rank),
                "shared_summed_rank": fit_on.shared_factors(names, rank * len(names)),
            }
            rows.append(
                {"rank": rank, "group": names, "energy": energy}
                | {k: left(held_out, names, f) for k, f in fits.items()}
            )
        total = {
            k: sum(r[k] for r in rows if r["rank"] == rank)
            for k in ("energy", "separate", "shared", "shared_summed_rank")
        }
        print(
            f"rank {rank}: error left, share of the pruning error: "
            + ", ".join(f"{k} {v / total['energy']:.4f}" for k, v in total.items() if k != "energy"),
            flush=True,
        )
    out = Path(__file__).with_name("shared_low_rank.json")
    out.write_text(json.dumps({"captions": n, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
