"""Norm compensation costs no pass over the GEMM's output: its per-row scale (computed from the sums of squares
the prune+compress kernel writes) is a pointwise op on the output that Inductor fuses with the bias add and
the consumer, so the scaled graph has no more kernels over the output than the unscaled one."""

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from lynx_compile.ops import _scaled, per_row
from lynx_compile.semantics import norm_partials, scale_from_partials


def _epilogue(x, w, b, norms, scaled):
    out = torch.mm(x, w.t())  # an extern kernel, as lynx::sparse_mm is to Inductor
    if scaled:  # as ops.compress_activation_compensated gives it
        out = _scaled(out, per_row(scale_from_partials(norms)))
    return torch.nn.functional.gelu(out + b)


def _concatenated(x, w, b, norms, scaled):
    """FLUX's single-stream block: the MLP's GELU concatenated with the attention output (here x), and the
    concatenation read by a GEMM (in lynx, proj_out's prune kernel), which needs it in memory."""
    y = torch.cat([x, _epilogue(x, w, b, norms, scaled)], -1)
    return torch.mm(y, y.t())


def _kernels(device, scaled, model=_epilogue):
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(device) for s in ((256, 512), (384, 512), (384,)))
    torch._dynamo.reset()
    out, (code,) = run_and_get_code(torch.compile(lambda *a: model(*a, scaled)), x, w, b, norm_partials(x))
    torch.testing.assert_close(out, model(x, w, b, norm_partials(x), scaled), rtol=1e-4, atol=1e-4)
    return re.findall(r"^(cpp_fused_\w+|triton_\w+) = ", code, re.M), code


def test_the_scale_fuses_into_the_bias_add_and_consumer_on_cpu():
    plain, _ = _kernels("cpu", False)
    scaled, _ = _kernels("cpu", True)
    assert len(scaled) == len(plain) == 1  # one kernel after the GEMM, scale, bias and GELU in it
    assert "gelu" in scaled[0] and "sqrt" in scaled[0]


def test_the_scale_is_computed_once_per_row() -> None:
    """ops.per_row: the scale gets an (M,) buffer of its own, so the output's kernel loads one float per row
    instead of recomputing the sums and guards for every element."""
    _, code = _kernels("cpu", True)
    assert re.search(r"empty_strided_cpu\(\(256, \), \(1, \), torch\.float32\)", code), code


@pytest.mark.gpu
def test_the_scale_reads_the_output_once_on_the_gpu():
    plain, _ = _kernels("cuda", False)
    scaled, code = _kernels("cuda", True)
    # at most one more kernel: the per-row reduction of the (2, M, K/128) partial sums, which never reads the output
    assert len(plain) <= len(scaled) <= len(plain) + 1, code
    assert sum("gelu" in k for k in scaled) == 1, code


@pytest.mark.gpu
def test_a_scaled_output_still_fuses_into_a_concatenation_on_the_gpu():
    """Without ops.per_row the scaled GELU, which reads a reduction, was written by a kernel of its own and
    copied into the concatenation by another (Inductor's cat refuses to inline a reduction's reader)."""
    plain, _ = _kernels("cuda", False, _concatenated)
    scaled, code = _kernels("cuda", True, _concatenated)
    assert len(scaled) <= len(plain) + 1, code  # + the scale's one reduction kernel, which never reads the output
    assert sum("gelu" in k for k in scaled) == 1, code
