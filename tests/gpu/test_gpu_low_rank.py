"""Option low_rank on a GPU with sparse tensor cores: the fused kernel's bytes against live cuSPARSELt, and the
branch on the fast path (fused into the sparse GEMM) against the reference path's."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel
from hypothesis import given, settings
from hypothesis import strategies as st

import lynx_compile
from lynx_compile import prune_2to4, zoo
from lynx_compile.codegen import cusparselt, self_check, tuning
from lynx_compile.codegen.cusparselt_layout import probe_matrix, same_compressed
from lynx_compile.codegen.prune_compress import tile_configs
from lynx_compile.codegen.prune_compress_low_rank import prune_compress_low_rank
from lynx_compile.semantics import low_rank_u, round_up, with_low_rank_columns, with_ones_column

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cusparselt.sparse_tensor_cores_available()[0], reason="needs sm80+ and cuSPARSELt"),
]


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 700),
    k16=st.integers(1, 80),
    rank=st.sampled_from([16, 32, 48, 64, 128]),
    ones_column=st.booleans(),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**20),
)
def test_low_rank_kernel_matches_cusparselt(m, k16, rank, ones_column, dtype, seed):
    """Bytes: ``torch._cslt_compress`` of ``[P(x) | spread(u)]`` (autotuned tile) bit for bit; u: the
    reference path's ``x @ a``. x: the probe matrix (ties, +-0, NaN, +-inf, subnormals)."""
    k = 16 * k16
    x = probe_matrix(m, k, dtype, seed=seed).cuda()
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(k, rank, generator=g) / 16).to("cuda", dtype)
    rows = round_up(m, 16)
    got, u = prune_compress_low_rank(x, a, rows, ones_column)
    operand = with_low_rank_columns(x, u)
    operand = with_ones_column(operand) if ones_column else operand
    expected = torch._cslt_compress(prune_2to4(F.pad(operand, (0, 0, 0, rows - m))))
    assert same_compressed(got, expected, rows, operand.shape[1])
    torch.testing.assert_close(u, x @ a, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("config", tile_configs(), ids=lambda c: f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_K']}")
def test_every_tile_matches_cusparselt_at_a_dit_shape(config):
    """Each tile the autotuner may pick, at 4096 x 3072 with r = 32 (FLUX's q/k/v input)."""
    x = (torch.randn(4096, 3072, device="cuda") * 2).bfloat16()
    a = (torch.randn(3072, 32, device="cuda") / 64).bfloat16()
    got, u = prune_compress_low_rank(x, a, 4096, config=config)
    expected = torch._cslt_compress(prune_2to4(with_low_rank_columns(x, u)))
    assert same_compressed(got, expected, 4096, 3072 + 64)
    torch.testing.assert_close(u.float(), low_rank_u(x, a).float(), rtol=2**-6, atol=1e-3)  # cuBLAS rounds once


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_self_check_passes(dtype):
    self_check._CHECKED.clear()
    assert self_check.fast_compress_ok("cuda", dtype, low_rank=True)


def _compiled(model, options, *args, **kwargs):
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    out = torch.compile(model, backend="lynx", options=options)(*args, **kwargs)
    layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
    torch._dynamo.reset()
    return out, layers


def test_one_layer_fast_path_equals_the_formula():
    """One nn.Linear, bf16: cuSPARSELt + branch vs prune(x) W^T + b + (x A) B in eager bf16, at rounding level."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 256, device="cuda", dtype=torch.bfloat16)
    scale = torch.ones(512, device="cuda")
    scale[::9] = 6.0
    xs = [(torch.randn(4, 256, 512, device="cuda") * scale).bfloat16() for _ in range(2)]
    with torch.no_grad():
        calibration = lynx_compile.calibrate(layer, xs, options={"min_rows": 16}, progress=False)
        opts = {"min_rows": 16, "cost_model": False, "low_rank": 32, "calibration": calibration}
        fast, layers = _compiled(layer, opts, xs[0])
        ref, _ = _compiled(layer, {**opts, "path": "reference"}, xs[0])
        (name,) = calibration.names
        a, b = (f.to("cuda", torch.bfloat16) for f in calibration.factors(name, 32))
        want = F.linear(prune_2to4(xs[0]), layer.weight, layer.bias) + (xs[0] @ a) @ b
        naive = F.linear(prune_2to4(xs[0]), layer.weight, layer.bias)
        dense = layer(xs[0])
    assert [(x.path, x.low_rank) for x in layers] == [("cusparselt", 32)]
    assert "low-rank branch fused into the sparse GEMM (K + 64)" in layers[0].reason
    assert rel(fast, want) < 1e-2 and rel(ref, want) < 1e-2
    assert rel(fast, dense) < rel(naive, dense)


@pytest.mark.parametrize("fold_bias", [False, True])
def test_flux_fast_path_with_the_branch_matches_the_reference_path(fold_bias):
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        calibration = lynx_compile.calibrate(
            built.model, [built.example_kwargs], options={"min_rows": 16}, progress=False
        )
        opts = {"min_rows": 16, "cost_model": False, "low_rank": 16, "calibration": calibration}
        fast, layers = _compiled(built.model, {**opts, "fold_bias": fold_bias}, **built.example_kwargs)
        ref, _ = _compiled(built.model, {**opts, "path": "reference"}, **built.example_kwargs)
        plain, _ = _compiled(
            built.model, {"min_rows": 16, "cost_model": False, "path": "reference"}, **built.example_kwargs
        )
        dense = built()
    fast, ref, plain, dense = (zoo.sample(t) for t in (fast, ref, plain, dense))
    sparse = [x for x in layers if x.sparse]
    assert sparse and all(x.path == "cusparselt" and x.low_rank == 16 for x in sparse)
    assert all("low-rank branch fused into the sparse GEMM" in x.reason for x in sparse)
    assert not fold_bias or any(x.bias_folded for x in sparse)
    print(
        f"\nflux low_rank=16 fold_bias={fold_bias}: fast vs ref {rel(fast, ref):.4f}, "
        f"ref vs dense {rel(ref, dense):.4f}, no branch vs dense {rel(plain, dense):.4f}"
    )
    assert rel(fast, ref) < max(5e-2, rel(ref, dense) / 4)


def test_the_cost_model_times_the_branch_as_it_runs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused: the compression that also computes x A costs more than the plain one, the GEMM 2R columns
    longer at least about as much; unfused: x A and u B on cuBLAS. All cached like the plain costs."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_MEMORY", {})
    plain = tuning.measure_costs(4096, 3072, 3072, torch.bfloat16, alg_id=0)
    fused = tuning.measure_costs(4096, 3072, 3072, torch.bfloat16, alg_id=0, low_rank=32)
    branch = tuning.measure_branch(4096, 3072, 3072, 32, torch.bfloat16)
    assert fused.prune_ms > plain.prune_ms and fused.sparse_gemm_ms > 0.9 * plain.sparse_gemm_ms
    assert branch.dense_ms == 0 and 0 < branch.prune_ms < plain.dense_ms and 0 < branch.sparse_gemm_ms < plain.dense_ms
    monkeypatch.setattr(tuning, "_MEMORY", {})
    monkeypatch.setattr(tuning, "queued_ms", lambda *a, **k: pytest.fail("measured again"))
    assert tuning.measure_costs(4096, 3072, 3072, torch.bfloat16, alg_id=0, low_rank=32) == fused
    assert tuning.measure_branch(4096, 3072, 3072, 32, torch.bfloat16) == branch
