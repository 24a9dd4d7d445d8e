"""Image similarity of a pruned model's samples to the dense model's: PSNR and SSIM.

Both compare two batches image by image, in float64 (so that a known difference gives its known
value to 1e-6), and return one number per image: the caller decides how to aggregate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# SSIM as Wang et al. (2004) define it: an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03,
# only where the window fits inside the image ("valid"), per channel, then averaged.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (n,); ``inf`` where the two images are identical."""
    a, b = _check(a, b, data_range)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 gives +inf


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, (n,): 1 where the two images are identical, at most 1."""
    a, b = _check(a, b, data_range)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    channels = a.shape[1]
    window = _gaussian_window(a.device).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return index.mean(dim=(2, 3)).mean(dim=1)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x.square() / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def _check(a: torch.Tensor, b: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of images (n, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be a batch of images (n, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floating-point pixels in [0, data_range], got {x.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"the two batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return a.to(torch.float64), b.to(device=a.device, dtype=torch.float64)
