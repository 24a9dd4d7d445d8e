"""PSNR and SSIM on inputs whose answer is known: identical images, a constant shift, symmetry, bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.quality import psnr, ssim


@st.composite
def images(draw: st.DrawFn, low: float = 0.0, high: float = 1.0, min_side: int = 11) -> torch.Tensor:
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(min_side, 24)), draw(st.integers(min_side, 24))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = low + (high - low) * torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    return x.to(draw(st.sampled_from([torch.float32, torch.float64])))


@given(x=images())
def test_psnr_of_identical_images_is_inf(x: torch.Tensor) -> None:
    p = psnr(x, x.clone())
    assert p.shape == (x.shape[0],) and torch.isinf(p).all() and (p > 0).all()


@given(data=st.data(), c=st.floats(1e-3, 0.4))
def test_psnr_of_a_constant_shift(data: st.DataObject, c: float) -> None:
    x = data.draw(images(low=c, high=1 - c)).double()
    sign = data.draw(st.sampled_from([1.0, -1.0]))
    expected = 20 * math.log10(1 / c)
    assert psnr(x, x + sign * c).tolist() == pytest.approx([expected] * x.shape[0], abs=1e-6)


@given(x=images(), scale=st.floats(0.5, 255.0))
def test_psnr_scales_with_data_range(x: torch.Tensor, scale: float) -> None:
    x = x.double()  # float32 pixels times the scale would round
    y = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    assert psnr(x * scale, y * scale, data_range=scale).tolist() == pytest.approx(psnr(x, y).tolist(), abs=1e-6)


@given(x=images())
def test_ssim_of_identical_images_is_one(x: torch.Tensor) -> None:
    s = ssim(x, x.clone())
    assert s.shape == (x.shape[0],) and s.dtype == torch.float64
    assert (s == 1).all()


@settings(max_examples=20)
@given(x=images(), noise=st.floats(1e-3, 1.0))
def test_ssim_is_symmetric_and_at_most_one(x: torch.Tensor, noise: float) -> None:
    y = (x + noise * torch.randn_like(x)).clamp(0, 1)
    s = ssim(x, y)
    assert torch.equal(s, ssim(y, x))
    assert (s <= 1 + 1e-12).all() and (s > -1).all()


def test_ssim_falls_with_noise() -> None:
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    levels = [ssim(x, (x + sigma * torch.randn_like(x)).clamp(0, 1)).mean().item() for sigma in (0.01, 0.1, 0.5)]
    assert 1 > levels[0] > levels[1] > levels[2]


def test_ssim_of_a_constant_shift_on_flat_images() -> None:
    """Flat images: only the luminance term is left, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)."""
    a, b = torch.full((1, 1, 16, 16), 0.3), torch.full((1, 1, 16, 16), 0.5)
    c1 = 0.01**2
    assert ssim(a, b).item() == pytest.approx((2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1), abs=1e-7)


@pytest.mark.parametrize(
    "a, b, error",
    [
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), ValueError),  # not a batch
        (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17), ValueError),  # shapes differ
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 3, 16, 16, dtype=torch.uint8), TypeError),
        ([[0.0]], torch.rand(1, 1, 16, 16), TypeError),
    ],
)
def test_bad_inputs_are_errors(a, b, error) -> None:
    for metric in (psnr, ssim):
        with pytest.raises(error):
            metric(a, b)


def test_ssim_needs_the_window_to_fit_and_a_positive_range() -> None:
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), data_range=0)
