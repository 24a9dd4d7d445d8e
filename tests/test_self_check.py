"""The layout self-check on CPU, per kernel variant: cuSPARSELt's compressor is ``compress_reference``
(the layout the GPU fixtures pin down), the kernel runs under Triton's interpreter."""

import logging
import types

import pytest
import torch

from lynx_compile.codegen import cusparselt, self_check
from lynx_compile.codegen.cusparselt_layout import compress_reference
from lynx_compile.config import LynxConfig
from lynx_compile.passes import legality
from lynx_compile.semantics import norm_partials, quantise_fp8_rows, with_ones_column

VARIANTS = [
    {},
    {"ones_column": True},
    {"norms": True},
    {"fp8": True},
    {"ordered": True},
    {"ordered": True, "norms": True},
    {"ordered": True, "fp8": True},
]


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(torch, "_cslt_compress", compress_reference, raising=False)
    monkeypatch.setattr(self_check, "_CHECKED", {})
    return monkeypatch


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=["plain", "ones_column", "norms", "fp8", "ordered", "ordered_norms", "ordered_fp8"]
)
def test_every_variant_passes_against_the_reference_layout(emulated, variant, caplog):
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        assert self_check.fast_compress_ok("cpu", torch.bfloat16, **variant)
    assert not caplog.records


@pytest.mark.parametrize(
    "variant, broken",
    [
        ({"ones_column": True}, (cusparselt, "with_ones_column", lambda x: 2 * with_ones_column(x))),
        ({"norms": True}, (self_check, "norm_partials", lambda x: norm_partials(x) * (1 + 1e-4))),
        ({"fp8": True}, (cusparselt, "quantise_fp8_rows", lambda x: (lambda q, s: (q, 2 * s))(*quantise_fp8_rows(x)))),
    ],
)
def test_a_variant_that_differs_fails_alone_and_warns_once(emulated, variant, broken, caplog):
    """Where only one variant disagrees (here the expectation is made wrong), only it falls back."""
    emulated.setattr(*broken)
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        assert not self_check.fast_compress_ok("cpu", torch.bfloat16, **variant)
        assert not self_check.fast_compress_ok("cpu", torch.bfloat16, **variant)  # cached: no second check
    [record] = caplog.records
    expected = {"ones_column": "with a ones column", "norms": "with norm sums", "fp8": "fp8 quantisation"}
    assert expected[next(iter(variant))] in record.getMessage()
    assert self_check.fast_compress_ok("cpu", torch.bfloat16)


def test_a_kernel_that_cannot_run_fails_its_check(emulated, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("no kernel for this GPU")

    emulated.setattr(self_check, "launch", refuse)
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        assert not self_check.fast_compress_ok("cpu", torch.float16, norms=True)
    assert "no kernel for this GPU" in caplog.records[0].getMessage()


def test_compensated_gemms_take_the_exact_path_where_the_norms_kernel_failed(monkeypatch):
    monkeypatch.setattr(cusparselt, "sparse_tensor_cores_available", lambda device=None: (True, ""))
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *args, norms=False, **kw: not norms)
    site = types.SimpleNamespace(
        name="blocks.0.ff",
        m=4096,
        k=3072,
        n=3072,
        dtype=torch.bfloat16,
        device=torch.device("cuda"),
        dynamic_m=False,
        x=None,
    )
    plain, compensated = (legality.can_sparsify(site, LynxConfig(compensate=c)) for c in (False, True))
    assert (plain.path, plain.prune) == ("cusparselt", "triton")
    assert (compensated.path, compensated.prune) == ("cusparselt-compat", "cslt")
    assert "Triton kernel with norm sums self-check failed" in compensated.reason
