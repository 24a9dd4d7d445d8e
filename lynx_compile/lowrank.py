"""Low-rank compensation: the closed-form fit of a rank-r branch ``x A B`` that predicts the pruning error.

A pruned layer computes ``P(x) W^T + b`` (P: 2:4 pruning, with norm compensation if on) where the dense
one computes ``x W^T + b``; the difference is ``t = (x - P(x)) W^T``. Over calibration rows x, the branch
minimises ``E||x A B - t||^2`` with A (K x r), B (r x N), from two moments only, ``Sxx = sum x x^T`` and
``Sxt = sum x t^T``: reduced-rank regression (docs/design.md, "Low-rank compensation").

    M   = (Sxx + lam I)^-1 Sxt                    the full-rank least-squares map (ridge lam, chosen by ``gcv``)
    L   = Q diag(e + lam)^1/2                     Sxx = Q diag(e) Q^T; any L L^T = Sxx + lam I
    U S V^T = svd(L^T M)                          E||x M' - t||^2 = const + ||L^T (M' - M)||_F^2
    A = M V_r,  B = V_r^T                         the best rank-r M' (Eckart-Young)
"""

from __future__ import annotations

import torch

# Candidate ridges, relative to the mean eigenvalue of Sxx. The fit takes the one whose full-rank map has the
# least generalized cross-validation error (``gcv``): a fixed small ridge overfits when the rows are few for K
# (one calibration call of 4096 tokens at K = 3072) or Sxx is dominated by a few outlier channels, and its
# branch then adds more error on new rows than it removes (docs/design.md, "Low-rank compensation").
RIDGES = tuple(10.0**e for e in range(-6, 3))


def fit(
    sxx: torch.Tensor, sxt: torch.Tensor, rank: int, rows: int, tt: float, ridge: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (K x r) and B (r x N), in float64: the rank-r map nearest the ridge least-squares map M in the norm
    of ``sum ||x M' - t||^2 + lam ||M'||^2``, over the ``rows`` rows whose moments are ``sxx`` (K x K) and
    ``sxt`` (K x N), ``tt = sum ||t||^2`` (exactly the best rank-r map at lam = 0). ``ridge``: lam relative
    to Sxx's mean eigenvalue; default: the one of ``RIDGES`` with the least ``gcv``. ``rank`` above
    min(K, N) is clipped to it."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    q, c, d = _ridge_solution(sxx, sxt, rows, tt, ridge)
    # L = Q diag(d)^1/2 (L L^T = Sxx + lam I): L^T M = diag(d)^-1/2 C, and M = Q diag(d)^-1 C
    _, _, vh = torch.linalg.svd(c / d.sqrt()[:, None], full_matrices=False)
    v = vh[: min(rank, vh.shape[0])].mT  # N x r
    return q @ (c / d[:, None]) @ v, v.mT.contiguous()


def ridge_map(sxx: torch.Tensor, sxt: torch.Tensor, rows: int, tt: float, ridge: float | None = None) -> torch.Tensor:
    """The full-rank ridge least-squares map ``M = (Sxx + lam I)^-1 Sxt`` (K x N, float64), lam as in ``fit``."""
    q, c, d = _ridge_solution(sxx, sxt, rows, tt, ridge)
    return q @ (c / d[:, None])


def _ridge_solution(
    sxx: torch.Tensor, sxt: torch.Tensor, rows: int, tt: float, ridge: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, C = Q^T Sxt, d = e + lam): Sxx = Q diag(e) Q^T, lam relative to e's mean (``RIDGES`` by ``gcv``
    where not given), so that ``M = Q diag(d)^-1 C``."""
    if sxx.dim() != 2 or sxx.shape[0] != sxx.shape[1] or sxt.dim() != 2 or sxt.shape[0] != sxx.shape[0]:
        raise ValueError(f"the fit needs Sxx (K x K) and Sxt (K x N), got {tuple(sxx.shape)} and {tuple(sxt.shape)}")
    evals, q = torch.linalg.eigh(sxx.double())
    evals = evals.clamp(min=0)  # rounding may leave a null direction slightly negative
    c = q.mT @ sxt.double()  # Sxt in Sxx's eigenbasis
    scale = max(evals.mean().item(), torch.finfo(torch.float64).tiny)
    if ridge is None:
        energy = c.square().sum(1)
        ridge = min(RIDGES, key=lambda r: gcv(evals, energy, rows, tt, r * scale))
    return q, c, evals + ridge * scale


def gcv(evals: torch.Tensor, energy: torch.Tensor, rows: int, tt: float, lam: float) -> float:
    """Generalized cross-validation error of the full-rank ridge map ``M = (Sxx + lam I)^-1 Sxt`` from the
    moments alone (``evals``: Sxx's eigenvalues, ``energy``: the squared norms of Sxt's rows in their basis,
    ``(Q^T Sxt)^2`` summed over N): its residual on the rows over (1 - df / rows)^2, df = tr(Sxx (Sxx + lam I)^-1)
    the map's degrees of freedom; inf where df >= rows."""
    d = evals + lam
    df = (evals / d).sum().item()
    if df >= rows:
        return float("inf")
    rss = max(tt - (energy * (2 / d - evals / d**2)).sum().item(), 0.0)
    return rss / (1 - df / rows) ** 2


def residual(sxx: torch.Tensor, sxt: torch.Tensor, tt: float, a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum ||x A B - t||^2`` from the moments (``tt = sum ||t||^2``): the fit's error on its own rows."""
    ab = a.double() @ b.double()
    return tt - 2 * (ab * sxt.double()).sum().item() + (ab * (sxx.double() @ ab)).sum().item()


def branch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(x A) B``: two GEMMs in x's dtype (A, B stored in it), the form every path computes."""
    return (x @ a) @ b
