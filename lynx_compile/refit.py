"""Weight refit (option ``refit``): each sparse GEMM's weight fitted in closed form to the activations it is
pruned to. It costs nothing at inference: the same sparse GEMM, another weight.

The pruned layer computes ``P(x) W^T`` where the dense one computes ``x W^T``, with ``x = P(x) + e``. Pruning
keeps the largest two of every four channels, and what it drops is partly predictable from what it keeps (the
channels move together). Over the calibration rows the ridge regression of the dropped part on the kept part,

    R = argmin sum ||P(x) R - e||^2 + lam ||R||^2 = (Spp + lam I)^-1 Spe      Spp = sum P P^T, Spe = sum P e^T

gives ``G = I + R`` (K x K) with ``P(x) G ~ x``, so ``P(x) (W G^T)^T ~ x W^T``: the GEMM runs with ``W' = W G^T``
(``semantics.refit_weight``). For every output channel, the least-squares weight on P(x) for the layer's own
error ``t = e W^T`` is ``R W^T`` (same ridge): one G is the best refit of any W. So G does not depend on W, holds
when W changes in place (a fused LoRA), and is one per activation (q, k and v share it). Unlike the low-rank
branch ``x A B``, which reads the dense x, the refit sees only P(x); but P(x) is a nonlinear function of x, and
on the yardstick the full-rank refit leaves 27% of the layers' error energy on the calibration rows where the
full-rank branch on x leaves 54% (docs/design.md, "Weight refit").
"""

from __future__ import annotations

import torch

from . import lowrank


def refit_map(spp: torch.Tensor, spe: torch.Tensor, rows: int, ee: float) -> torch.Tensor:
    """``G = I + R`` (K x K, float64) from the moments of ``rows`` rows (``ee = sum ||e||^2``), the ridge chosen
    by generalized cross-validation as for the low-rank fit (``lowrank.ridge_map``)."""
    r = lowrank.ridge_map(spp, spe, rows, ee)
    return r + torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
