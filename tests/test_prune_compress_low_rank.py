"""The prune+compress kernel with a fused low-rank branch's columns, under Triton's interpreter.

Its bytes must be cuSPARSELt's compression of ``[P(x) | spread_2to4(u)]`` (``cusparselt_layout``'s emulation of
``torch._cslt_compress``), u the ``x @ a`` it returns; its first K columns those ``prune_compress`` writes; the
op's fake kernel the real one's size.
"""

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch._subclasses.fake_tensor import FakeTensorMode

from lynx_compile import ops
from lynx_compile.codegen import self_check
from lynx_compile.codegen.cusparselt_layout import (
    _unpack_metadata,
    compress_reference,
    metadata_nbytes,
    probe_matrix,
    same_compressed,
)
from lynx_compile.codegen.prune_compress import prune_compress, tile_configs
from lynx_compile.codegen.prune_compress_low_rank import prune_compress_low_rank
from lynx_compile.semantics import BIAS_COLUMNS, prune_2to4, with_low_rank_columns, with_ones_column


def _values_and_nibbles(c: torch.Tensor, rows: int, k: int, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k columns' kept values (rows, k/2) and metadata nibbles (rows, k/4) of a compressed
    (rows, k_total) operand."""
    raw = c.reshape(-1).view(torch.uint8)
    values = raw[: rows * k_total].view(torch.int16).reshape(rows, k_total // 2)[:, : k // 2]
    meta = raw[rows * k_total : rows * k_total + metadata_nbytes(rows, k_total, c.dtype)]
    return values, _unpack_metadata(meta, rows, k_total, c.dtype)[:, : k // 4]


@given(
    m=st.integers(1, 70),
    k16=st.integers(1, 12),
    rank=st.sampled_from([16, 32, 48]),
    extra_rows=st.integers(0, 2),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    special=st.sampled_from(["normal", "probe", "zeros"]),
    ones_column=st.booleans(),
    config=st.sampled_from(tile_configs()),
    seed=st.integers(0, 2**16),
)
def test_bytes_are_cusparselt_compression_of_x_and_spread_u(
    m, k16, rank, extra_rows, dtype, special, ones_column, config, seed
):
    g = torch.Generator().manual_seed(seed)
    k = 16 * k16
    if special == "probe":  # ties, +-0, NaN, +-inf, subnormals, rows of zeros and of NaN
        x = probe_matrix(m, k, dtype, seed=seed)
    else:
        x = torch.randn(m, k, generator=g).to(dtype)
        if special == "zeros":  # groups and whole rows of zeros: u exactly 0 takes cuSPARSELt's index choice
            x[::3] = 0
            x[:, 1::2] = 0
    a = (torch.randn(k, rank, generator=g) / 4).to(dtype)
    a[:, : rank // 4] = 0  # some columns of u exactly 0
    rows = -(-m // 16) * 16 + 16 * extra_rows
    got, u = prune_compress_low_rank(x, a, rows, ones_column, config)

    operand = with_low_rank_columns(x, u)
    operand = with_ones_column(operand) if ones_column else operand
    k_total = operand.shape[1]
    assert k_total == k + 2 * rank + (BIAS_COLUMNS if ones_column else 0)
    expected = compress_reference(prune_2to4(F.pad(operand, (0, 0, 0, rows - m))))
    assert same_compressed(got, expected, rows, k_total)
    # the first K columns: what the plain kernel writes
    plain = _values_and_nibbles(prune_compress(x, rows), rows, k, k)
    for got_part, plain_part in zip(_values_and_nibbles(got, rows, k, k_total), plain, strict=True):
        assert torch.equal(got_part, plain_part)
    # u: torch's own x @ a, the GEMM the reference path runs
    torch.testing.assert_close(u, x @ a, rtol=0, atol=0, equal_nan=True)


def test_the_self_check_passes_every_tile_on_the_adversarial_matrix(monkeypatch):
    """What the GPU runs at first use, against the emulated cuSPARSELt compressor: every tile, with and
    without a ones column."""
    monkeypatch.setattr(torch, "_cslt_compress", compress_reference, raising=False)
    assert self_check._check_low_rank(probe_matrix(200, 528, torch.bfloat16, seed=1)) == (True, "")


@pytest.mark.parametrize("rank", [8, 24, 0])
def test_a_rank_that_is_not_a_positive_multiple_of_16_is_refused(rank):
    x, a = torch.randn(16, 64, dtype=torch.bfloat16), torch.randn(64, rank, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"multiple of 16"):
        prune_compress_low_rank(x, a)


def test_the_fake_kernel_has_the_real_size():
    x, a = torch.randn(40, 96, dtype=torch.bfloat16), torch.randn(96, 32, dtype=torch.bfloat16)
    for ones_column in (False, True):
        real = torch.ops.lynx.compress_2to4_low_rank(x, a, 64, ones_column)
        with FakeTensorMode() as mode:
            fake = torch.ops.lynx.compress_2to4_low_rank(mode.from_tensor(x), mode.from_tensor(a), 64, ones_column)
        assert real.dtype == fake.dtype == torch.int64 and real.shape == fake.shape
        assert same_compressed(
            real.view(torch.bfloat16),
            ops.compress_activation_low_rank(x, a, ones_column).view(torch.bfloat16),
            64,
            96 + 64 + (BIAS_COLUMNS if ones_column else 0),
        )
