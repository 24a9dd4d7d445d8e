"""The fused Triton prune+compress kernel and the reference compressor, bit for bit, on the CPU.

Ground truth is ``tests/data/cslt_fixtures.pt``: cuSPARSELt's own output for fixed inputs, recorded
on an H100 by ``tools/record_cslt_fixtures.py``. Without a GPU the kernel runs in Triton's
interpreter, which must be switched on before the kernel module is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.codegen.cusparselt_layout import (
    CSLT_MULTIPLE,
    compress_reference,
    compressed_shape,
    decompress_reference,
    probe_matrix,
    same_compressed,
)
from lynx_compile.codegen.prune_compress import (
    launch,
    prune_compress,
    prune_compress_with_norms,
    tile_configs,
)
from lynx_compile.semantics import (
    NORM_CHUNK,
    norm_partials,
    prune_2to4,
    round_up,
    with_bias_column,
    with_ones_column,
)

FIXTURES = torch.load(Path(__file__).parent / "data" / "cslt_fixtures.pt", weights_only=False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.bfloat16, torch.float16)


def min_rows(m: int) -> int:
    """cuSPARSELt's minimum padding, which the fixtures were recorded with and prune_compress defaults to."""
    return round_up(m, CSLT_MULTIPLE)


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, min_rows(x.shape[0]) - x.shape[0]))


def canonical(x: torch.Tensor) -> torch.Tensor:
    """Bit patterns with -0.0 read as 0.0 (compression drops the sign of a zero it does not keep)."""
    return torch.where(x == 0, torch.zeros((), dtype=x.dtype), x).view(torch.int16)


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=lambda c: c["name"])
def test_reference_matches_cusparselt(case: dict) -> None:
    x = pad_rows(case["x"])
    assert same_compressed(compress_reference(prune_2to4(x)), case["c"], *x.shape)


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=lambda c: c["name"])
def test_kernel_matches_cusparselt(case: dict) -> None:
    x, expected = case["x"], case["c"]
    got = prune_compress(x.to(DEVICE)).cpu()
    assert same_compressed(got, expected, min_rows(x.shape[0]), x.shape[1])


def test_compressed_shape_matches_cusparselt() -> None:
    dtypes = {str(d): d for d in DTYPES}
    for row in FIXTURES["shapes"]:
        assert compressed_shape(row["m"], row["k"], dtypes[row["dtype"]]) == tuple(row["shape"]), row


def test_cusparselt_bias_is_per_row() -> None:
    """Recorded fact that keeps bias out of sparse_mm: the epilogue adds one value per token."""
    assert FIXTURES["bias_per_row_rel_err"] < 1e-2


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 70), k16=st.integers(1, 9), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_kernel_matches_reference(m: int, k16: int, dtype: torch.dtype, seed: int) -> None:
    x = probe_matrix(m, 16 * k16, dtype, seed=seed)
    got = prune_compress(x.to(DEVICE)).cpu()
    expected = compress_reference(prune_2to4(pad_rows(x)))
    # Both zero the bytes cuSPARSELt leaves unwritten, so the whole tensors agree.
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 70), k16=st.integers(1, 9), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_ones_column_compresses_x_with_a_ones_column(m: int, k16: int, dtype: torch.dtype, seed: int) -> None:
    """The activation side of a folded bias: [x | 1 | 0...] compressed, the extra columns never in memory."""
    x = probe_matrix(m, 16 * k16, dtype, seed=seed)
    got = prune_compress(x.to(DEVICE), ones_column=True).cpu()
    expected = compress_reference(prune_2to4(pad_rows(with_ones_column(x))))
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


def test_ones_column_is_already_2to4_and_carries_the_bias() -> None:
    x, w, b = torch.randn(5, 32), torch.randn(8, 32), torch.randn(8)
    xo = with_ones_column(prune_2to4(x))
    assert torch.equal(prune_2to4(xo), xo)
    w_folded = with_bias_column(w, b)
    torch.testing.assert_close(xo @ w_folded.T, F.linear(prune_2to4(x), w, b))


@pytest.mark.parametrize("config", tile_configs(), ids=str)
def test_every_tuning_config_is_exact(config) -> None:
    """Autotuning may pick any config on a GPU: each must give the same bytes (ragged M and K)."""
    x = probe_matrix(70, 208, torch.float16, seed=13)
    got = launch(x.to(DEVICE), 80, config).cpu()
    expected = compress_reference(prune_2to4(F.pad(x, (0, 0, 0, 10))))
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 70), k16=st.integers(1, 20), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_kernel_sums_norms_for_compensation(m: int, k16: int, dtype: torch.dtype, seed: int) -> None:
    """With norms the kernel writes the same bytes, and per-row sums of squares of x and of the pruned
    x per 128 columns (ragged last chunk; ties, NaN, inf, subnormals from the probe matrix)."""
    x = probe_matrix(m, 16 * k16, dtype, seed=seed)
    got, norms = prune_compress_with_norms(x.to(DEVICE))
    assert torch.equal(got.cpu().view(torch.int16), prune_compress(x).view(torch.int16))
    assert norms.shape == (2, m, -(-16 * k16 // NORM_CHUNK))
    torch.testing.assert_close(norms.cpu(), norm_partials(x), rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("config", tile_configs(), ids=str)
def test_every_tuning_config_sums_the_same_norms(config) -> None:
    x = probe_matrix(70, 656, torch.bfloat16, seed=5)
    norms = torch.empty(2, 70, 6, device=DEVICE)
    got = launch(x.to(DEVICE), 80, config, norms=norms).cpu()
    assert torch.equal(got.view(torch.int16), launch(x.to(DEVICE), 80, config).cpu().view(torch.int16))
    torch.testing.assert_close(norms.cpu(), norm_partials(x), rtol=1e-5, atol=0, equal_nan=True)


def test_kernel_pads_to_requested_rows() -> None:
    x = probe_matrix(70, 96, torch.bfloat16, seed=11)
    got = prune_compress(x.to(DEVICE), rows=128).cpu()
    expected = compress_reference(prune_2to4(F.pad(x, (0, 0, 0, 128 - 70))))
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


@settings(max_examples=40, deadline=None)
@given(m16=st.integers(1, 9), k16=st.integers(1, 9), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_decompress_inverts_compress(m16: int, k16: int, dtype: torch.dtype, seed: int) -> None:
    xp = prune_2to4(probe_matrix(16 * m16, 16 * k16, dtype, seed=seed))
    c = compress_reference(xp)
    assert c.shape == compressed_shape(*xp.shape, dtype)
    assert torch.equal(canonical(decompress_reference(c, *xp.shape)), canonical(xp))


def test_layout_is_periodic_in_tiles() -> None:
    """Each 64 x 32 block's metadata is the single-tile layout, at byte (tile row * tiles per row +
    tile column) * 256: the structure that makes any size (checked live up to 16384 x 15360 by the
    GPU tests) follow from the small shapes recorded here."""
    m, k = 192, 160  # 3 x 5 tiles
    xp = prune_2to4(probe_matrix(m, k, torch.float16, seed=5))
    meta = compress_reference(xp).view(-1).view(torch.uint8)[m * k :]
    for tr in range(m // 64):
        for tc in range(k // 32):
            tile = compress_reference(xp[64 * tr : 64 * tr + 64, 32 * tc : 32 * tc + 32].contiguous())
            start = (tr * (k // 32) + tc) * 256
            assert torch.equal(meta[start : start + 256], tile.view(-1).view(torch.uint8)[64 * 32 : 64 * 32 + 256])


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(16, 32), "supports"),
        (torch.zeros(16, 32, dtype=torch.int8), "supports"),
        (torch.zeros(16, 24, dtype=torch.bfloat16), "K % 16"),
        (torch.zeros(0, 32, dtype=torch.bfloat16), "M >= 1"),
        (torch.zeros(2, 16, 32, dtype=torch.bfloat16), "2-D"),
        (torch.zeros(32, 16, dtype=torch.bfloat16).t(), "contiguous"),
    ],
)
def test_kernel_rejects_bad_input(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune_compress(x)


@pytest.mark.parametrize("rows", [8, 40])
def test_kernel_rejects_bad_rows(rows: int) -> None:
    with pytest.raises(ValueError, match="multiple of 16 and at least"):
        prune_compress(torch.zeros(17, 32, dtype=torch.bfloat16), rows=rows)


def test_reference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        compress_reference(torch.zeros(24, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="not 2:4"):
        compress_reference(torch.ones(16, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="layout known"):
        compressed_shape(16, 16, torch.float32)
