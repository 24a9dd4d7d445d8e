"""Low-rank compensation: the closed-form fit of a rank-r branch ``x A B`` that predicts the pruning error.

A pruned layer computes ``P(x) W^T + b`` (P: 2:4 pruning, with norm compensation if on) where the dense
one computes ``x W^T + b``; the difference is ``t = (x - P(x)) W^T``. Over calibration rows x, the branch
minimises ``E||x A B - t||^2`` with A (K x r), B (r x N), from two moments only, ``Sxx = sum x x^T`` and
``Sxt = sum x t^T``: reduced-rank regression (docs/design.md, "Low-rank compensation").

    M   = (Sxx + lam I)^-1 Sxt                    the full-rank least-squares map (ridge lam)
    L   = cholesky(Sxx + lam I)                   any L L^T = Sxx + lam I
    U S V^T = svd(L^T M)                          E||x M' - t||^2 = const + ||L^T (M' - M)||_F^2
    A = M V_r,  B = V_r^T                         the best rank-r M' (Eckart-Young)
"""

from __future__ import annotations

import torch

# Ridge, relative to the mean eigenvalue of Sxx: keeps the solve well posed for channels that are
# (nearly) never active, and is far below the energy of any channel that matters.
RIDGE = 1e-6


def fit(sxx: torch.Tensor, sxt: torch.Tensor, rank: int, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """A (K x r) and B (r x N), in float64, minimising ``sum ||x A B - t||^2`` over the rows whose moments are
    ``sxx`` (K x K) and ``sxt`` (K x N). ``rank`` above min(K, N) is clipped to it."""
    if sxx.dim() != 2 or sxx.shape[0] != sxx.shape[1] or sxt.dim() != 2 or sxt.shape[0] != sxx.shape[0]:
        raise ValueError(f"fit needs Sxx (K x K) and Sxt (K x N), got {tuple(sxx.shape)} and {tuple(sxt.shape)}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    sxx, sxt = sxx.double(), sxt.double()
    k = sxx.shape[0]
    lam = ridge * max(sxx.diagonal().mean().item(), torch.finfo(torch.float64).tiny)
    chol = torch.linalg.cholesky(sxx + lam * torch.eye(k, dtype=sxx.dtype, device=sxx.device))
    m = torch.cholesky_solve(sxt, chol)
    _, _, vh = torch.linalg.svd(chol.mT @ m, full_matrices=False)
    v = vh[: min(rank, vh.shape[0])].mT  # N x r
    return m @ v, v.mT.contiguous()


def residual(sxx: torch.Tensor, sxt: torch.Tensor, tt: float, a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum ||x A B - t||^2`` from the moments (``tt = sum ||t||^2``): the fit's error on its own rows."""
    ab = a.double() @ b.double()
    return tt - 2 * (ab * sxt.double()).sum().item() + (ab * (sxx.double() @ ab)).sum().item()


def branch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(x A) B``: two GEMMs in x's dtype (A, B stored in it), the form every path computes."""
    return (x @ a) @ b
