"""Properties of the reference 2:4 pruning and of norm compensation (the semantics every path keeps)."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from lynx_compile import compensation_scale, prune_2to4, prune_2to4_compensated
from lynx_compile.semantics import norm_partials, scale_from_partials

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPECIALS = [0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")]


@st.composite
def activations(draw, max_groups: int = 8):
    """Tensors with any leading dims, ties (few distinct values) and NaN/inf sprinkled in."""
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
    k = 4 * draw(st.integers(1, max_groups))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, k)
    x = torch.randn(shape, generator=g)
    if draw(st.booleans()):  # ties: a handful of magnitudes only
        x = torch.randint(-2, 3, shape, generator=g).float()
    special = torch.tensor(SPECIALS)[torch.randint(0, len(SPECIALS), shape, generator=g)]
    x = torch.where(torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.1, 0.5])), special, x)
    return x.to(dtype)


def _key(v: torch.Tensor) -> torch.Tensor:
    """Magnitude with NaN as the largest (ties with inf)."""
    m = v.abs().float()
    return torch.where(torch.isnan(v), float("inf"), m)


def _expected_keep(group: list[float]) -> set[int]:
    """Top-2 by (magnitude desc, index asc), by plain sorting: an independent oracle."""
    keys = [(math.inf if math.isnan(v) else abs(v)) for v in group]
    order = sorted(range(4), key=lambda i: (-keys[i], i))
    return set(order[:2])


@given(activations())
def test_keeps_exactly_the_top2_of_each_group(x):
    y = prune_2to4(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    xg, yg = x.reshape(-1, 4).float(), y.reshape(-1, 4).float()
    for xs, ys in zip(xg.tolist(), yg.tolist()):
        keep = _expected_keep(xs)
        for i in range(4):
            if i in keep:
                assert (ys[i] == xs[i]) or (math.isnan(ys[i]) and math.isnan(xs[i]))
            else:
                assert ys[i] == 0.0 and math.copysign(1.0, ys[i]) == 1.0  # pruned to +0


@given(activations())
def test_at_most_two_nonzeros_per_group(x):
    nonzero = (prune_2to4(x).reshape(-1, 4) != 0).sum(-1)
    assert int(nonzero.max()) <= 2


@given(activations())
def test_idempotent(x):
    once = prune_2to4(x)
    assert (
        torch.equal(prune_2to4(once).view(torch.uint8), once.view(torch.uint8))
        if x.dtype != torch.float32
        else torch.equal(prune_2to4(once).view(torch.int32), once.view(torch.int32))
    )


@given(activations())
def test_kept_magnitudes_dominate_pruned(x):
    g = x.reshape(-1, 4)
    y = prune_2to4(x).reshape(-1, 4)
    kept = (y != 0) | (y.isnan())
    key = _key(g)
    min_kept = torch.where(kept, key, float("inf")).min(-1).values
    max_pruned = torch.where(~kept & (g != 0), key, -1.0).max(-1).values
    assert bool((max_pruned <= min_kept).all())


def test_tie_and_nan_rules():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor(
        [[1.0, -1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, nan, 5.0, inf, 1.0, 0.0, 0.0, 0.0, 0.0, -inf, 2.0, nan, 7.0]]
    )
    y = prune_2to4(x)
    expected = torch.tensor([[1.0, -1.0, 0, 0, 0, 3.0, 3.0, 0, nan, 0, inf, 0, 0, 0, 0, 0, -inf, 0, nan, 0]])
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(expected))


def test_rejects_bad_last_dim():
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2to4(torch.randn(3, 6))


def test_compensation_documented_numbers():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], [0.0] * 8, [2.0, 0, 0, 0, 0, 0, 0, 0]])
    p = prune_2to4(x)
    s = compensation_scale(x, p)
    assert s[0].item() == pytest.approx(math.sqrt(29 / 27))
    assert s[1].item() == 1.0  # all-zero row
    assert s[2].item() == 1.0  # nothing pruned
    y = prune_2to4_compensated(x)
    assert y[0].norm().item() == pytest.approx(x[0].norm().item(), rel=1e-6)
    assert torch.equal(y[1], x[1])


def test_compensation_keeps_nan_and_inf_rows_as_dense():
    x = torch.tensor([[float("inf"), 1.0, 1.0, 1.0], [float("nan"), 1.0, 2.0, 3.0]])
    s = compensation_scale(x, prune_2to4(x))
    assert torch.equal(s, torch.ones(2))


@given(activations())
def test_compensated_rows_have_the_unpruned_norm(x):
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    y = prune_2to4_compensated(x)
    pruned = prune_2to4(x)
    rows = pruned.reshape(-1, x.shape[-1]).norm(dim=-1) > 0
    n_in = x.reshape(-1, x.shape[-1]).norm(dim=-1)[rows]
    n_out = y.reshape(-1, x.shape[-1]).norm(dim=-1)[rows]
    torch.testing.assert_close(n_out, n_in, rtol=1e-5, atol=1e-6)


@given(activations(max_groups=80))
def test_scale_from_chunked_sums_is_the_compensation_scale(x):
    """The fast path's scale comes from the prune kernel's per-128-column sums (``norm_partials``):
    the same numbers as ``compensation_scale`` up to float32 summation order, the guards included."""
    x2 = x.reshape(-1, x.shape[-1])
    expected = compensation_scale(x2, prune_2to4(x2))
    torch.testing.assert_close(scale_from_partials(norm_partials(x2)), expected, rtol=1e-5, atol=0)
