"""The Inductor lowering of lynx::compress_2to4: cuSPARSELt's bytes, fused into the producer's kernel.

Runs on the CPU (Inductor's C++ backend generates the same IR the GPU gets as Triton). Producers
here round exactly (adds, relu, scaling by 2), so compiled and eager activations are bit-identical
and the compressed bytes can be compared bit for bit with the reference layout.
"""

import re

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch._inductor.utils import run_and_get_code

import lynx_compile  # noqa: F401  (registers the ops and the lowering)
from lynx_compile import prune_2to4
from lynx_compile.codegen.cusparselt_layout import compress_reference, significant_numel
from lynx_compile.ops import padded_rows


def _producer(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.relu(x + b) * 2  # one rounding, eager or fused: relu and *2 commute with it


def _fused(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.lynx.compress_2to4(_producer(x, b), padded_rows(x.shape[0]), "inductor")


def _expected(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    h = _producer(x, b)
    return compress_reference(prune_2to4(F.pad(h, (0, 0, 0, padded_rows(h.shape[0]) - h.shape[0]))))


def _significant(c: torch.Tensor, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    return c.reshape(-1).view(torch.int16)[: significant_numel(padded_rows(m), k, dtype)]


SHAPES = [(64, 64, torch.bfloat16), (100, 96, torch.float16), (130, 160, torch.bfloat16)]
_COMPILED = {}


def _compiled(shape):
    if shape not in _COMPILED:
        _COMPILED[shape] = torch.compile(_fused, dynamic=False)
    return _COMPILED[shape]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}-{str(s[2])[6:]}")
@given(seed=st.integers(0, 2**31 - 1), ties=st.booleans(), specials=st.booleans())
def test_fused_bytes_equal_the_reference_layout(shape, seed, ties, specials):
    m, k, dtype = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if ties:  # few distinct magnitudes: exact ties everywhere
        x = torch.randint(-3, 4, (m, k), generator=g).float() / 2
    if specials:  # +-inf and -0.0 (NaN payloads are not preserved by Inductor's casts: see below)
        pick = torch.rand(m, k, generator=g)
        x = torch.where(pick < 0.05, float("inf"), torch.where(pick < 0.1, float("-inf"), x))
        x = torch.where((pick > 0.9) & (pick < 0.95), -0.0, x)
    b = torch.where(torch.rand(k, generator=g) < 0.5, 0.0, torch.randn(k, generator=g))
    x, b = x.to(dtype), b.to(dtype)
    got = _significant(_compiled(shape)(x, b).view(dtype), m, k, dtype)
    want = _significant(_expected(x, b), m, k, dtype)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {got.numel()} elements differ"


def test_nan_stays_nan():
    """A NaN activation is kept and stays a NaN; its payload bits may change in the fused cast."""
    m, k, dtype = SHAPES[0]
    x = torch.randn(m, k, dtype=dtype)
    x[3, 8:12] = float("nan")
    x[5, 0] = float("nan")
    b = torch.zeros(k, dtype=dtype)
    got = _compiled(SHAPES[0])(x, b).view(dtype).reshape(-1)
    want = _expected(x, b).reshape(-1)
    n = significant_numel(padded_rows(m), k, dtype)
    assert torch.equal(got[:n].isnan(), want[:n].isnan())
    assert torch.equal(torch.nan_to_num(got[:n]).view(torch.int16), torch.nan_to_num(want[:n]).view(torch.int16))


def test_mlp_producer_and_compression_are_one_kernel():
    """fc1 + bias + GELU + prune + compress: the extern GEMM and one generated kernel, no more.

    The C++ backend puts both loop nests of the lowering (values + nibbles, then the metadata
    tiles) into one function; on the GPU they are two Triton kernels (tests/gpu).
    """
    w1 = torch.randn(128, 64, dtype=torch.bfloat16)
    b1 = torch.randn(128, dtype=torch.bfloat16)

    def mlp_up(x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.linear(x, w1, b1))
        return torch.ops.lynx.compress_2to4(h, padded_rows(x.shape[0]), "inductor")

    x = torch.randn(64, 64, dtype=torch.bfloat16)
    _, (code,) = run_and_get_code(torch.compile(mlp_up, dynamic=False), x)
    kernels = set(re.findall(r"^(cpp_fused_\w+) = async_compile", code, flags=re.M))
    assert len(kernels) == 1, kernels
    (kernel,) = kernels
    assert "gelu" in kernel and "compress_2to4" in kernel  # the activation and its compression together
    assert "lynx.compress_2to4" not in code  # lowered, not called as an extern kernel


def test_ineligible_shapes_fall_back_to_the_op():
    """K not a multiple of 32 is not lowered: the custom op's own kernel runs (here: not called)."""
    from torch._inductor.lowering import lowerings

    assert torch.ops.lynx.compress_2to4.default in lowerings
    from lynx_compile.codegen.inductor_lowering import eligible

    assert eligible(128, 64, torch.bfloat16)
    assert not eligible(128, 48, torch.bfloat16) and not eligible(100, 64, torch.bfloat16)
    assert not eligible(128, 64, torch.float32)
