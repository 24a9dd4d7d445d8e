"""The fused prune + fp8 quantise + compress kernel, bit for bit against the CPU emulation (the
reference semantics, then the e4m3 layout that ``tests/test_fp8_layout.py`` pins on cuSPARSELt's
recorded bytes). On a CPU the kernel runs in Triton's interpreter."""

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from lynx_compile.codegen.cusparselt_layout import compress_reference, probe_matrix, same_compressed, significant_numel
from lynx_compile.codegen.prune_quantise_compress import prune_quantise_compress, row_amax, tile_configs
from lynx_compile.semantics import prune_2to4, quantise_fp8_rows


def emulated(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, scale = quantise_fp8_rows(prune_2to4(F.pad(x, (0, 0, 0, rows - x.shape[0]))))
    return compress_reference(q), scale[: x.shape[0]]


def assert_same(x: torch.Tensor, rows: int, config=None, amax=None) -> None:
    got, scale = prune_quantise_compress(x, rows, config, amax)
    want, want_scale = emulated(x, rows)
    assert got.shape == want.shape and got.dtype == want.dtype
    n = significant_numel(rows, x.shape[1], want.dtype)  # the rest is unspecified, and the kernel leaves it
    bad = (got.view(torch.uint8).view(-1)[:n] != want.view(torch.uint8).view(-1)[:n]).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} bytes differ, first at {bad[:4].tolist()}"
    assert torch.equal(scale.isnan(), want_scale.isnan())
    assert torch.equal(scale.nan_to_num(), want_scale.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k, rows", [(64, 128, 64), (50, 96, 64), (130, 544, 192)])
def test_kernel_matches_emulation_on_adversarial_inputs(dtype, m, k, rows):
    assert_same(probe_matrix(m, k, dtype, seed=m + k), rows)


@pytest.mark.parametrize("config", tile_configs(), ids=lambda c: f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_K']}")
def test_every_tile_matches_emulation(config):
    """The autotuner may pick any tile on the GPU: each writes the same bytes (the self-check runs them all too)."""
    assert_same(probe_matrix(70, 576, torch.bfloat16, seed=3), 96, config)


def test_row_scale_from_unpruned_amax():
    """The scale comes from x's own amax: pruning keeps it, and keeps a row non-finite (a NaN is pruned only
    beside two infs). Rows: a NaN pruned by two infs; a group whose largest is pruned by nothing; all zeros."""
    x = torch.zeros(3, 32, dtype=torch.bfloat16)
    x[0, :4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0])
    x[1, :4] = torch.tensor([0.5, -300.0, 2.0, 1.0])
    assert_same(x, 32)
    _, scale = prune_quantise_compress(x, 32)
    assert scale[0].isnan() and scale[1] == 1.0 and scale[2] == 2.0**-126


def test_non_finite_rows_have_nan_scales():
    """An inf, a NaN, both, and a NaN among finite values: each row's scale is NaN, as the semantics say."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    x[0, 5], x[1, 9], x[2, 40], x[2, 41], x[3, 63] = (
        float("inf"),
        float("nan"),
        -float("inf"),
        float("nan"),
        float("nan"),
    )
    assert_same(x, 32)
    assert prune_quantise_compress(x, 32)[1].isnan().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_amax_is_the_max_magnitude_with_nan_and_inf(dtype):
    x = probe_matrix(40, 96, dtype, seed=1)
    amax = row_amax(x)
    assert amax.dtype == dtype and torch.equal(amax.isnan(), x.isnan().any(-1))
    assert torch.equal(amax.nan_to_num(), x.abs().amax(-1).nan_to_num())  # inf where a row has inf but no NaN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_passed_amax_gives_the_same_bytes(dtype):
    """The graph passes the amax it computed (``ops.compress_activation_fp8``): the same bytes and scales as
    the kernel's own, also from a strided amax."""
    x = probe_matrix(70, 128, dtype, seed=2)
    want = prune_quantise_compress(x, 96)
    strided = torch.stack([x.abs().amax(-1), torch.zeros(70, dtype=dtype)], -1)[:, 0]
    for amax in (row_amax(x), strided):
        got = prune_quantise_compress(x, 96, amax=amax)
        assert same_compressed(got[0], want[0], 96, 128)
        assert torch.equal(got[1].nan_to_num(), want[1].nan_to_num()) and torch.equal(got[1].isnan(), want[1].isnan())
    assert_same(x, 96, amax=row_amax(x))


@settings(max_examples=6)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(-30, 30), st.sampled_from([torch.bfloat16, torch.float16]))
def test_kernel_matches_emulation_across_magnitudes(m, k32, exponent, dtype):
    """Rows scaled over many binades (fp16 saturates to inf at the top: NaN rows), ties included."""
    g = torch.Generator().manual_seed(m * 31 + k32)
    x = torch.randn(m, 32 * k32, generator=g) * 2.0 ** torch.randint(-8, 8, (m, 1), generator=g).float()
    x = torch.where(torch.rand(m, 32 * k32, generator=g) < 0.3, (x * 4).round() / 4, x) * 2.0**exponent
    assert_same(x.to(dtype), ((m + 31) // 32) * 32)


@settings(max_examples=20)
@given(
    st.lists(st.sampled_from(["0", "-0", "under", "half", "sub", "normal", "-normal"]), min_size=128, max_size=128),
    st.sampled_from([torch.bfloat16, torch.float16]),
)
def test_kept_values_that_round_to_zero_change_the_stored_indices(kinds, dtype):
    """Groups whose kept values quantise to +-0 (below half of e4m3's smallest subnormal), to the tie at half
    of it, to subnormals or to normals, beside +-0: the kernel quantises only the two values it would store
    for the 16-bit group and then re-picks the indices as cuSPARSELt does for the quantised group."""
    value = {"0": 0.0, "-0": -0.0, "under": 2.0**-12, "half": 2.0**-10, "sub": 3 * 2.0**-9, "normal": 0.75}
    value["-normal"] = -0.75
    x = torch.tensor([[value[k] for k in kinds]] * 2, dtype=torch.float32)
    x[:, 0] = 448.0  # the row's amax: scale 1, so e4m3's subnormals are at 2^-9
    x[1] = -x[1]
    assert_same(x.to(dtype), 32)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="K % 32"):
        prune_quantise_compress(torch.zeros(32, 48, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="supports"):
        prune_quantise_compress(torch.zeros(32, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        prune_quantise_compress(torch.zeros(32, 64, dtype=torch.bfloat16), rows=48)
    x = torch.zeros(32, 64, dtype=torch.bfloat16)
    for amax in (
        torch.zeros(31, dtype=x.dtype),
        torch.zeros(32, 1, dtype=x.dtype),
        torch.zeros(32),
        x[0, :32].to("meta"),
    ):
        with pytest.raises(ValueError, match="amax of shape"):
            prune_quantise_compress(x, amax=amax)
