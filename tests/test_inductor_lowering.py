"""The Inductor lowering of lynx::compress_2to4 (a Triton template), checked on a CPU-only machine.

On a GPU, tests/gpu compare the template's bytes with the standalone kernel and with cuSPARSELt.
Here Inductor's Triton code generation runs for CPU tensors (``cpu_backend="triton"``) with
Triton's device query stubbed out; the generated module comes from Inductor's own ``output_code``
log. Then:
- the structure: the template renders, a pointwise producer becomes its prologue (one kernel,
  the activation computed on the tile and never written dense), a norm's output is loaded;
- the bytes: the compiled function, its kernels run by Triton's interpreter (``TRITON_INTERPRET=1``,
  set by conftest), equals the reference layout bit for bit. The producer is exact (a scaling by
  powers of two), so compiled and eager activations are the same tensor.
"""

import contextlib
import logging
import os
import re

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given

import lynx_compile  # noqa: F401  (registers the ops and the lowering)
from lynx_compile import PruneSite, ops, prune_2to4
from lynx_compile.codegen import inductor_lowering
from lynx_compile.codegen.cusparselt_layout import compress_reference, padded_rows, significant_numel
from lynx_compile.semantics import FP8, norm_partials, quantise_fp8_rows, scale_from_partials


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.code: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.endswith(".__output_code"):  # torch._logging's artifact logger for output_code
            self.code.append(record.getMessage())


@contextlib.contextmanager
def _triton_on_cpu():
    """Inductor generates Triton for CPU tensors, templates included; yields the output code seen."""
    import torch.utils._triton as torch_triton

    capture = _Capture()
    logger = logging.getLogger("torch._inductor")
    patch = pytest.MonkeyPatch()
    patch.setattr(torch_triton, "triton_backend", lambda: None)
    patch.setattr(torch_triton, "triton_hash_with_backend", lambda: "no-gpu")
    patch.setattr(inductor_lowering, "TEMPLATE_DEVICES", ("cuda", "cpu"))
    torch._logging.set_logs(output_code=True)  # (re)configures torch's loggers: add the handler after
    logger.addHandler(capture)
    try:
        with torch._inductor.config.patch(cpu_backend="triton", compile_threads=1, force_disable_caches=True):
            yield capture.code
    finally:
        torch._logging.set_logs()
        logger.removeHandler(capture)
        patch.undo()


def _generated(fn, *args) -> str:
    """Inductor's generated module for ``fn(*args)`` (running it may fail: no GPU to build for)."""
    torch._dynamo.reset()
    # Triton's interpreter runs some kernels (tests below), not all (libdevice)
    with _triton_on_cpu() as code, contextlib.suppress(Exception):
        torch.compile(fn, dynamic=False)(*args)
    torch._dynamo.reset()
    assert code, "Inductor logged no output code"
    return "\n".join(code)


def _kernels(code: str) -> dict[str, str]:
    """Kernel name -> its parameter list."""
    return dict(re.findall(r"^def (triton_\w+)\(([^)]*)\)", code, flags=re.M))


def test_gelu_becomes_the_template_prologue() -> None:
    def mlp_act(h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = F.gelu(h + b, approximate="tanh")
        return torch.ops.lynx.compress_2to4(a, padded_rows(a.shape[0]), PruneSite.FUSED.value)

    m, k = 200, 512  # rows padded to 256 inside the kernel
    code = _generated(mlp_act, torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, dtype=torch.bfloat16))
    kernels = _kernels(code)
    assert len(kernels) == 1, kernels  # bias + GELU + prune + compress: one kernel
    ((name, params),) = kernels.items()
    assert name.startswith("triton_tem_") and "gelu" in name, name
    assert "arg_X" not in params  # X is computed by the prologue, not loaded
    assert "libdevice.tanh" in code  # ... here, on the tile
    assert "= torch.ops.lynx.compress_2to4" not in code  # lowered, never called as the custom op


def test_norm_output_is_loaded_by_the_template() -> None:
    """Inductor puts the adaLN tail into the norm's reduction kernel; the template reads its output."""

    def adaln(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale) + scale
        return torch.ops.lynx.compress_2to4(h, padded_rows(h.shape[0]), PruneSite.FUSED.value)

    code = _generated(adaln, torch.randn(128, 256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16))
    kernels = _kernels(code)
    templates = [name for name in kernels if name.startswith("triton_tem_")]
    assert len(kernels) == 2 and len(templates) == 1, kernels
    assert "arg_X" in kernels[templates[0]]  # a plain load of the norm kernel's output


def _producer(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # b holds signed powers of two: exact in any precision. (Triton's interpreter truncates float32
    # -> bfloat16 where the GPU rounds to nearest, so a producer that rounds would differ here.)
    return x * b


def _fused(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.lynx.compress_2to4(_producer(x, b), padded_rows(x.shape[0]), PruneSite.FUSED.value)


_COMPILED: dict[tuple, object] = {}


def _run_compiled(fn, x: torch.Tensor, b: torch.Tensor):
    """``fn`` compiled through a template, run by Triton's interpreter (one compile per function and shape)."""
    key = (fn, *x.shape, x.dtype)
    with _triton_on_cpu() as code:
        first = key not in _COMPILED
        if first:
            _COMPILED[key] = torch.compile(fn, dynamic=False)
        out = _COMPILED[key](x, b)
        assert not first or "def triton_tem_" in "\n".join(code), "the template did not run"
    return out


SHAPES = [(64, 64, torch.bfloat16), (100, 96, torch.float16), (130, 256, torch.bfloat16)]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs Triton's interpreter (CPU machines)")
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1), ties=st.booleans(), specials=st.booleans())
def test_template_bytes_equal_the_reference_layout(shape, seed, ties, specials) -> None:
    m, k, dtype = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    sign = torch.randint(0, 2, (k,), generator=g).mul(2).sub(1)
    b = (2.0 ** torch.randint(-2, 3, (k,), generator=g) * sign).to(dtype)
    if ties:  # equal magnitudes with both signs, and all-zero groups
        x = x.abs().round().clamp(max=2) * torch.randint(0, 2, (m, k), generator=g).mul(2).sub(1).to(dtype)
    if specials:
        x[0, :4] = float("inf")
        x[m // 2, 4:8] = float("nan")
        x[m - 1, :] = 0  # a row of zeros
    got = _run_compiled(_fused, x, b)
    h = _producer(x, b)
    want = compress_reference(prune_2to4(F.pad(h, (0, 0, 0, padded_rows(m) - m)))).reshape(-1).view(torch.int64)
    n = significant_numel(padded_rows(m), k, dtype) * dtype.itemsize // 8
    # NaN payloads may differ between the interpreter's and eager's arithmetic: compare NaN as NaN
    got16, want16 = (torch.nan_to_num(t[:n].view(dtype), nan=7.0).view(torch.int16) for t in (got, want))
    assert torch.equal(got16, want16)


def test_ineligible_shapes_fall_back_to_the_op() -> None:
    """K not a multiple of 32, or rows not whole metadata tiles, or fp32: the custom op's kernel runs."""
    from torch._inductor.lowering import lowerings

    assert torch.ops.lynx.compress_2to4.default in lowerings
    assert inductor_lowering.eligible(128, 64, torch.bfloat16)
    assert not inductor_lowering.eligible(128, 48, torch.bfloat16)
    assert not inductor_lowering.eligible(100, 64, torch.bfloat16)
    assert not inductor_lowering.eligible(128, 64, torch.float32)


def _fused_norms(x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.lynx.compress_2to4_norms(_producer(x, b), padded_rows(x.shape[0]), PruneSite.FUSED.value)


def test_compensation_gets_the_producer_as_prologue_too() -> None:
    """compensate with fuse_producers: one kernel prunes, compresses and sums the norms, the GELU computed
    on its tile; the per-row scale is a small reduction of the sums after it."""

    def mlp_act(h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.gelu(h + b, approximate="tanh")
        compressed, norms = torch.ops.lynx.compress_2to4_norms(a, padded_rows(a.shape[0]), PruneSite.FUSED.value)
        return compressed, scale_from_partials(norms)

    code = _generated(mlp_act, torch.randn(200, 512, dtype=torch.bfloat16), torch.randn(512, dtype=torch.bfloat16))
    kernels = _kernels(code)
    templates = [name for name in kernels if name.startswith("triton_tem_")]
    assert len(templates) == 1 and "gelu" in templates[0], kernels
    assert "arg_X" not in kernels[templates[0]] and "libdevice.tanh" in code  # the prologue, on the tile
    (scale,) = (params for name, params in kernels.items() if name not in templates)
    assert scale.count("in_ptr") == 1, kernels  # the scale reads the template's sums alone, not h and b
    assert "= torch.ops.lynx.compress_2to4_norms" not in code


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs Triton's interpreter (CPU machines)")
@given(shape=st.sampled_from([(64, 128, torch.bfloat16), (100, 384, torch.float16)]), seed=st.integers(0, 2**31 - 1))
def test_template_norms_equal_the_reference(shape, seed) -> None:
    """The compensated template: the bytes of the plain one, and norm_partials(x) up to float32 summation order."""
    m, k, dtype = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = (2.0 ** torch.randint(-2, 3, (k,), generator=g)).to(dtype)
    got, norms = _run_compiled(_fused_norms, x, b)
    h = _producer(x, b)
    want = compress_reference(prune_2to4(F.pad(h, (0, 0, 0, padded_rows(m) - m)))).reshape(-1).view(torch.int64)
    n = significant_numel(padded_rows(m), k, dtype) * dtype.itemsize // 8
    assert torch.equal(got[:n], want[:n])
    torch.testing.assert_close(norms, norm_partials(h), rtol=1e-5, atol=1e-5)


def test_fp8_template_takes_the_producer_and_its_amax() -> None:
    """precision="fp8" with fuse_producers: bias + GELU, the row amax, prune, quantise and compress in one
    kernel; no amax reduction of its own (it would read the producer's output a second time)."""

    def mlp_act(h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.gelu(h + b, approximate="tanh")
        return ops.compress_activation_fp8(a, PruneSite.FUSED.value)

    code = _generated(mlp_act, torch.randn(200, 512, dtype=torch.bfloat16), torch.randn(512, dtype=torch.bfloat16))
    kernels = _kernels(code)
    assert len(kernels) == 1, kernels
    ((name, params),) = kernels.items()
    assert name.startswith("triton_tem_") and "gelu" in name, name
    assert "arg_X" not in params and "libdevice.tanh" in code
    assert "= torch.ops.lynx.compress_fp8" not in code


def _fused_fp8(x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.compress_activation_fp8(_producer(x, b), PruneSite.FUSED.value)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs Triton's interpreter (CPU machines)")
@given(
    shape=st.sampled_from([(64, 64, torch.bfloat16), (100, 96, torch.float16), (70, 1056, torch.bfloat16)]),
    seed=st.integers(0, 2**31 - 1),
    specials=st.booleans(),
)
def test_fp8_template_equals_the_emulation(shape, seed, specials) -> None:
    """The fp8 template's bytes and row scales: ``compress_reference(quantise_fp8_rows(prune_2to4(x)))`` bit
    for bit, with rows of zeros, NaN and inf, and rows of a power-of-two block with masked columns (K = 1056:
    2048 columns, 4 rows per program)."""
    m, k, dtype = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 2.0 ** torch.randint(-20, 12, (m, 1), generator=g)).to(dtype)
    b = (2.0 ** torch.randint(-2, 3, (k,), generator=g)).to(dtype)
    if specials:
        x[0, 3] = float("inf")
        x[m // 2, 7] = float("nan")
        x[m - 1, :] = 0
    got, scale = _run_compiled(_fused_fp8, x, b)
    rows = padded_rows(m)
    q, want_scale = quantise_fp8_rows(prune_2to4(F.pad(_producer(x, b), (0, 0, 0, rows - m))))
    want = compress_reference(q).reshape(-1).view(torch.uint8)
    n = significant_numel(rows, k, FP8)
    assert torch.equal(got.view(torch.uint8)[:n], want[:n])
    assert torch.equal(scale.isnan(), want_scale[:m].isnan())
    assert torch.equal(scale.nan_to_num(), want_scale[:m].nan_to_num())
