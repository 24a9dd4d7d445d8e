"""Properties of the fp8 semantics (option ``precision="fp8"``): power-of-two row scales, saturating
round-to-nearest-even e4m3, NaN/inf rows, zero rows; checked against oracles that do not use torch's cast."""

import itertools
import math

import hypothesis.strategies as st
import torch
from hypothesis import given

from lynx_compile.semantics import (
    FP8,
    FP8_MAX,
    FP8_NAN_BITS,
    fp8_epilogue,
    fp8_linear,
    fp8_scale_exponent,
    prune_2to4,
    quantise_fp8_rows,
)

# Every finite e4m3 value with its bits, for an oracle that does not use torch's cast
_BITS = torch.arange(256, dtype=torch.int32).to(torch.uint8)
_VALUES = _BITS.view(FP8).float()
_FINITE = torch.isfinite(_VALUES)
TABLE = sorted((v, b) for v, b in zip(_VALUES[_FINITE].tolist(), _BITS[_FINITE].tolist(), strict=True))


def nearest_e4m3(v: float) -> float:
    """Round-to-nearest-even onto the e4m3 grid, saturating at +-448, by search."""
    v = max(-FP8_MAX, min(FP8_MAX, v))
    best = min(TABLE, key=lambda t: (abs(t[0] - v), t[1] & 1))  # a tie goes to the even mantissa
    return best[0]


@st.composite
def rows(draw):
    """(M, K) 16-bit or float32 activations: wide ranges of magnitude, exact ties, zeros, specials."""
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
    m, k = draw(st.integers(1, 4)), 4 * draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(m, k, generator=g) * 2.0 ** draw(st.integers(-20, 20))
    if draw(st.booleans()):  # midpoints of the e4m3 grid once scaled: exact ties
        mids = torch.tensor([(a[0] + b[0]) / 2 for a, b in itertools.pairwise(TABLE)])
        x = mids[torch.randint(0, len(mids), (m, k), generator=g)] * 2.0 ** draw(st.integers(-8, 8))
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf")])
    p = draw(st.sampled_from([0.0, 0.05, 0.3]))
    x = torch.where(torch.rand(m, k, generator=g) < p, special[torch.randint(0, 5, (m, k), generator=g)], x)
    x[torch.rand(m, generator=g) < 0.2] = 0.0  # whole rows of zeros
    return x.to(dtype)


@given(rows())
def test_scale_is_the_smallest_power_of_two_that_fits(x):
    _q, scale = quantise_fp8_rows(x)
    amax = x.float().abs().amax(-1)
    for a, s in zip(amax.tolist(), scale.tolist(), strict=True):
        if not math.isfinite(a):
            assert math.isnan(s)
            continue
        e = math.log2(s)
        assert e == int(e) and -126 <= e <= 127
        assert a / s <= FP8_MAX and (e == -126 or a / (s / 2) > FP8_MAX)


@given(rows())
def test_values_round_to_nearest_even_and_saturate(x):
    q, scale = quantise_fp8_rows(x)
    assert q.dtype == FP8 and q.shape == x.shape and scale.shape == x.shape[:-1]
    xf = x.float()
    for r in range(x.shape[0]):
        if not math.isfinite(scale[r].item()):
            continue
        for v, got, bits in zip(xf[r].tolist(), q[r].float().tolist(), q[r].view(torch.uint8).tolist(), strict=True):
            v = math.copysign(0.0, v) if abs(v) < 2.0**-126 else v
            expected = nearest_e4m3(v / scale[r].item())
            assert got == expected, (v, scale[r].item(), got, expected)
            if got == 0:
                assert (bits >> 7) == (math.copysign(1.0, v) < 0)  # the sign of a zero survives


@given(rows())
def test_nan_elements_quantise_to_0x7f_and_nonfinite_rows_give_nan(x):
    q, scale = quantise_fp8_rows(x)
    bits = q.view(torch.uint8)
    assert bool((bits[torch.isnan(x)] == FP8_NAN_BITS).all())
    bad = ~torch.isfinite(x.float()).all(-1)
    assert torch.equal(torch.isnan(scale), bad)
    w = torch.randn(3, x.shape[1])
    wq, ws = quantise_fp8_rows(w)
    y = fp8_linear(x, wq, ws)
    assert bool(torch.isnan(y[bad]).all()) and not bool(torch.isnan(y[~bad]).any())


def test_edge_rows():
    x = torch.tensor(
        [
            [0.0, -0.0, 0.0, 0.0],
            [448.0, 449.0, 1.0, -1.0],
            [1e-40, -1e-40, 0.0, 0.0],
            [3e38, 1.0, 0.0, 0.0],
            [1.75, 1.7500001, 0.0, 0.0],
        ]
    )
    q, scale = quantise_fp8_rows(x)
    assert scale.tolist() == [2.0**-126, 2.0, 2.0**-126, 2.0**120, 2.0**-7]  # 1.7500001 * 2^8 > 448
    assert q[0].view(torch.uint8).tolist() == [0x00, 0x80, 0x00, 0x00]
    assert q[2].view(torch.uint8).tolist() == [0x00, 0x80, 0x00, 0x00]  # float32 subnormals: zeros of their sign
    assert q[1].float().tolist() == [224.0, 224.0, 0.5, -0.5]  # 449 / 2 rounds to 224
    assert fp8_scale_exponent(torch.tensor([448.0, 449.0, 0.0, float("inf")])).tolist() == [0, 1, -126, 0]


@given(rows())
def test_reference_linear_is_dequantised_gemm(x):
    x = prune_2to4(x.bfloat16())
    w = torch.randn(5, x.shape[1]).bfloat16()
    wq, ws = quantise_fp8_rows(w)
    xq, xs = quantise_fp8_rows(x)
    expected = ((xq.float() * xs[:, None]) @ (wq.float() * ws[:, None]).t()).bfloat16()
    ok = torch.isfinite(xs)
    assert torch.equal(fp8_linear(x, wq, ws)[ok], expected[ok])


def test_epilogue_of_a_bf16_accumulator_equals_the_float32_one():
    """Power-of-two scales commute with rounding: a GEMM that writes bf16 loses nothing."""
    acc = torch.randn(64, 32) * 100
    rs, cs = 2.0 ** torch.randint(-20, 20, (64,)).float(), 2.0 ** torch.randint(-20, 20, (32,)).float()
    assert torch.equal(fp8_epilogue(acc.bfloat16(), rs, cs, torch.bfloat16), fp8_epilogue(acc, rs, cs, torch.bfloat16))
