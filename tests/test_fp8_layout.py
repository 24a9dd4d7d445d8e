"""cuSPARSELt's float8_e4m3fn compressed layout (``cusparselt_layout``), against its recorded output.

``tests/data/cslt_fp8_fixtures.pt``: ``torch._cslt_compress`` of 2:4 e4m3 matrices on an H100
(torch 2.11, cuSPARSELt 0.8): random patterns with finite values of either sign, and a matrix of
special groups (zeros, -0.0, NaN 0x7F/0xFF, subnormals, one or no nonzero), every byte written; and
which (m, k) it accepts with the shape it returns (-1: refused).
"""

from pathlib import Path

import pytest
import torch

from lynx_compile.codegen.cusparselt_layout import (
    compress_reference,
    compressed_shape,
    decompress_reference,
    significant_numel,
)
from lynx_compile.semantics import FP8

FIXTURES = torch.load(Path(__file__).parent / "data" / "cslt_fp8_fixtures.pt", weights_only=True)


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=lambda c: f"{c['m']}x{c['k']}")
def test_compress_reference_matches_cusparselt_bytes(case):
    x = case["x"].view(FP8)
    got = compress_reference(x)
    assert got.dtype == FP8 and got.numel() == case["c"].numel() == significant_numel(case["m"], case["k"], FP8)
    assert torch.equal(got.reshape(-1).view(torch.uint8), case["c"])


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=lambda c: f"{c['m']}x{c['k']}")
def test_decompress_inverts_compress(case):
    x = case["x"].view(FP8)
    c = compress_reference(x)
    back = decompress_reference(c, case["m"], case["k"])
    assert torch.equal(back.float(), x.float()) or torch.allclose(back.float(), x.float(), equal_nan=True)
    assert torch.equal(compress_reference(back).view(torch.uint8), c.view(torch.uint8))  # only a dropped -0.0 differs


def test_shapes_cusparselt_accepts_and_returns():
    for m, k, cols in FIXTURES["shapes"].tolist():
        if cols < 0:
            assert m % 32 or k % 32, (m, k)
            with pytest.raises(ValueError, match="multiples of 32"):
                compressed_shape(m, k, FP8)
        else:
            assert compressed_shape(m, k, FP8) == (m, cols)
