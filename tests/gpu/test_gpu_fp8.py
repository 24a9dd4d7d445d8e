"""precision="fp8" on a GPU with fp8 sparse tensor cores (sm90+): the fused kernel against live
cuSPARSELt bit for bit, the fp8 GEMM against the reference path, a whole zoo model."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel

import lynx_compile
from lynx_compile import PruneSite, ops, zoo
from lynx_compile.calibration import balanced_order
from lynx_compile.codegen import cusparselt, self_check
from lynx_compile.codegen.cusparselt_layout import compressed_shape, padded_rows, probe_matrix, same_compressed
from lynx_compile.codegen.prune_quantise_compress import prune_quantise_compress, row_amax
from lynx_compile.semantics import FP8, fp8_linear, prune_2to4, quantise_fp8_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cusparselt.fp8_supported()[0], reason="needs sm90+ and cuSPARSELt"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k, rows", [(64, 128, 64), (200, 544, 256), (1000, 3072, 1024), (4096, 12288, 4096)])
def test_kernel_is_bit_exact_with_cslt_compress_of_the_quantised_pruning(dtype, m, k, rows):
    x = probe_matrix(m, k, dtype, seed=k).cuda()
    got, scale = prune_quantise_compress(x, rows)
    q, want_scale = quantise_fp8_rows(prune_2to4(F.pad(x, (0, 0, 0, rows - m))))
    want = torch._cslt_compress(q)
    assert same_compressed(got, want, rows, k)
    assert torch.equal(scale.nan_to_num(), want_scale[:m].nan_to_num())
    assert torch.equal(scale.isnan(), want_scale[:m].isnan())


@pytest.mark.parametrize("m, k", [(4608, 3072), (4096, 12288), (200, 544)])
def test_kernel_permuting_its_tiles_is_bit_exact_with_cslt_compress_of_the_gathered(m, k):
    """Option permute_channels with fp8: every tile the autotuner picks permutes what it loaded (``tl.gather``
    on the GPU), and its bytes and scales are those of the gathered activation."""
    x = probe_matrix(m, k, torch.bfloat16, seed=m + k).cuda()
    order = balanced_order(torch.rand(k)).cuda()
    rows = padded_rows(m)
    got, scale = prune_quantise_compress(x, rows, order=order)
    q, want_scale = quantise_fp8_rows(prune_2to4(F.pad(x[:, order], (0, 0, 0, rows - m))))
    assert same_compressed(got, torch._cslt_compress(q), rows, k)
    assert torch.equal(scale.nan_to_num(), want_scale[:m].nan_to_num())
    assert torch.equal(scale.isnan(), want_scale[:m].isnan())


def _doubled_with_amax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x * 2  # a producer for Inductor to fuse the amax into
    return h, row_amax(h)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_amax_a_compiled_graph_computes_gives_cusparselts_bytes(dtype):
    """The row amax as the graph computes it (an Inductor reduction with x's producer; rows over 32 binades,
    a NaN row, an inf row, a zero row): eager's values, and through the kernel cuSPARSELt's bytes."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 3072, generator=g) * 2.0 ** torch.randint(-20, 12, (1000, 1), generator=g).float()
    x[3, 5], x[4, 6], x[5] = float("nan"), float("inf"), 0.0
    x = x.to(dtype).cuda()
    torch._dynamo.reset()
    h, amax = torch.compile(_doubled_with_amax)(x)
    eager = row_amax(h)
    assert torch.equal(amax.isnan(), eager.isnan()) and torch.equal(amax.nan_to_num(), eager.nan_to_num())
    got, scale = prune_quantise_compress(h, 1024, amax=amax)
    q, want_scale = quantise_fp8_rows(prune_2to4(F.pad(h, (0, 0, 0, 24))))
    assert same_compressed(got, torch._cslt_compress(q), 1024, 3072)
    assert torch.equal(scale.nan_to_num(), want_scale[:1000].nan_to_num())
    assert torch.equal(scale.isnan(), want_scale[:1000].isnan())


@pytest.mark.parametrize("ordered", [False, True], ids=["plain", "ordered"])
def test_self_check_passes(ordered):
    self_check._CHECKED.clear()
    assert self_check.fast_compress_ok("cuda", torch.bfloat16, fp8=True, ordered=ordered)


def test_fp8_linear_matches_the_reference_path():
    torch._dynamo.reset()
    lin = torch.nn.Linear(3072, 3072).cuda().bfloat16()
    x = torch.randn(2, 1024, 3072, device="cuda", dtype=torch.bfloat16)
    opts = {"precision": "fp8", "cost_model": False}
    n = len(lynx_compile.reports())
    with torch.no_grad():
        fast = torch.compile(lin, backend="lynx", options=opts)(x)
        wq, ws = quantise_fp8_rows(lin.weight)
        ref = fp8_linear(prune_2to4(x), wq, ws) + lin.bias
        bf16 = F.linear(prune_2to4(x), lin.weight, lin.bias)
    [report] = lynx_compile.reports()[n:]
    assert report.layers[0].path == "cusparselt" and report.layers[0].precision == "fp8"
    print(f"\nfp8 fast vs fp8 reference {rel(fast, ref):.2e}; fp8 vs bf16 pruned {rel(fast, bf16):.3f}")
    assert rel(fast, ref) < 5e-3  # accumulation order and one bf16 rounding of the accumulator
    assert rel(fast, bf16) < 0.1


def test_flux_fp8_end_to_end():
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    opts = {"min_rows": 16, "cost_model": False, "precision": "fp8"}
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    with torch.no_grad():
        fast = zoo.sample(torch.compile(built.model, backend="lynx", options=opts)(**built.example_kwargs))
        layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
        torch._dynamo.reset()
        ref = zoo.sample(
            torch.compile(built.model, backend="lynx", options={**opts, "path": "reference"})(**built.example_kwargs)
        )
        dense = built()
    sparse = [layer for layer in layers if layer.sparse]
    assert sparse and all(layer.precision == "fp8" and layer.path == "cusparselt" for layer in sparse)
    print(f"\nflux fp8: fast vs reference {rel(fast, ref):.4f}, vs dense {rel(fast, dense):.4f}")
    assert rel(fast, ref) < max(5e-2, rel(ref, dense) / 4)


def _gelu_fp8(h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.compress_activation_fp8(F.gelu(h + b, approximate="tanh"), PruneSite.FUSED.value)


@pytest.mark.parametrize("m, k", [(1000, 3072), (4096, 12288), (300, 15360)])
def test_fp8_template_with_its_gelu_prologue_gives_cusparselts_bytes(m, k):
    """The fp8 template (fuse_producers) with bias + GELU as its prologue: cuSPARSELt's compression of the
    quantised pruning of the GELU as the compiled graph computes it (rows over 40 binades, a NaN, an inf)."""
    g = torch.Generator().manual_seed(k)
    h = torch.randn(m, k, generator=g) * 2.0 ** torch.randint(-20, 20, (m, 1), generator=g).float()
    h[3, 5], h[4, 6] = float("nan"), float("inf")
    h, b = h.bfloat16().cuda(), torch.randn(k, generator=g).bfloat16().cuda()
    torch._dynamo.reset()
    got, scale = torch.compile(_gelu_fp8)(h, b)
    x = torch.compile(lambda h, b: F.gelu(h + b, approximate="tanh"))(h, b)  # the producer, rounded as compiled
    rows = padded_rows(m)
    q, want_scale = quantise_fp8_rows(prune_2to4(F.pad(x, (0, 0, 0, rows - m))))
    assert same_compressed(got.view(FP8).view(compressed_shape(rows, k, FP8)), torch._cslt_compress(q), rows, k)
    assert torch.equal(scale.nan_to_num(), want_scale[:m].nan_to_num())
    assert torch.equal(scale.isnan(), want_scale[:m].isnan())


def test_fp8_mlp_prunes_inside_the_gelu_kernel():
    """fuse_producers with fp8: fc2's input goes through the fp8 template (the report says fused), and the
    model agrees with the standalone kernel's and, as the zoo model does, with the reference path (fc1's bf16
    accumulator moves some of fc2's e4m3 roundings by one step of 6-12%: 0.033 on the H100, 2026-12-07)."""
    torch._dynamo.reset()
    mlp = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(4096, 1024)
    )
    mlp = mlp.cuda().bfloat16()
    x = torch.randn(2048, 1024, device="cuda", dtype=torch.bfloat16)
    opts = {"precision": "fp8", "cost_model": False, "default_exclude": (), "fuse_producers": True}
    n = len(lynx_compile.reports())
    with torch.no_grad():
        fast = torch.compile(mlp, backend="lynx", options=opts)(x).clone()  # CUDA graphs reuse their outputs
        report = lynx_compile.reports()[n]
        torch._dynamo.reset()
        standalone = torch.compile(mlp, backend="lynx", options={**opts, "fuse_producers": False})(x).clone()
        ref = torch.compile(mlp, backend="lynx", options={**opts, "path": "reference"})(x).clone()
        dense = mlp(x)
    assert [layer.prune for layer in report.layers] == ["triton", "fused"], report.layers
    assert rel(fast, standalone) < 1e-2
    assert rel(fast, ref) < max(5e-2, rel(ref, dense) / 4)
