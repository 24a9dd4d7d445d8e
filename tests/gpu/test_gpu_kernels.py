"""The fast path against live cuSPARSELt on a GPU: compressor layout, sparse GEMM, caches, self-check."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.calibration import balanced_order
from lynx_compile.codegen import cusparselt, self_check, tuning
from lynx_compile.codegen import prune_compress as prune_compress_module
from lynx_compile.codegen.cusparselt_layout import (
    CSLT_MULTIPLE,
    compress_reference,
    compressed_shape,
    probe_matrix,
    same_compressed,
)
from lynx_compile.codegen.prune_compress import prune_compress, prune_compress_with_norms
from lynx_compile.semantics import (
    BIAS_COLUMNS,
    norm_partials,
    prune_2to4,
    round_up,
    with_bias_column,
    with_ones_column,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cusparselt.sparse_tensor_cores_available()[0], reason="needs sm80+ and cuSPARSELt"),
]
DTYPES = (torch.bfloat16, torch.float16)


def padded_rows(m: int) -> int:
    """cuSPARSELt's minimum padding, prune_compress's default."""
    return round_up(m, CSLT_MULTIPLE)


def live_compress(x: torch.Tensor) -> torch.Tensor:
    """What the fused kernel must reproduce: cuSPARSELt's compressor after the reference pruning."""
    return torch._cslt_compress(prune_2to4(F.pad(x, (0, 0, 0, padded_rows(x.shape[0]) - x.shape[0]))))


def with_specials(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Sprinkle NaN, +-inf, +-0 and exact ties over a large GPU tensor (1 % each)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    u = torch.rand(x.shape, generator=g, device=x.device)
    for i, value in enumerate((float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, -1.0)):
        x = torch.where((u >= 0.01 * i) & (u < 0.01 * (i + 1)), value, x)
    return x


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 700), k16=st.integers(1, 80), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**20))
def test_kernel_matches_cusparselt(m: int, k16: int, dtype: torch.dtype, seed: int) -> None:
    x = probe_matrix(m, 16 * k16, dtype, seed=seed).cuda()
    expected = live_compress(x)
    got = prune_compress(x)
    assert same_compressed(got, expected, padded_rows(m), 16 * k16)
    assert same_compressed(
        compress_reference(prune_2to4(F.pad(x, (0, 0, 0, padded_rows(m) - m)))), expected, padded_rows(m), 16 * k16
    )


@pytest.mark.parametrize("m, k", [(4096, 3072), (4608, 12288), (4113, 3088), (1000, 5120), (16384, 15360)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_cusparselt_large(m: int, k: int, dtype: torch.dtype) -> None:
    x = with_specials(torch.randn(m, k, device="cuda"), seed=m + k).to(dtype)
    expected = live_compress(x)
    assert same_compressed(prune_compress(x), expected, padded_rows(m), k)
    del x
    assert expected.shape == compressed_shape(padded_rows(m), k, dtype)


@pytest.mark.parametrize("m, k", [(4096, 3072), (4608, 12288), (4113, 3088), (300, 208)])
@pytest.mark.parametrize("norms", [False, True], ids=["plain", "norms"])
def test_kernel_permuting_its_tiles_matches_cusparselt(m: int, k: int, norms: bool) -> None:
    """Option permute_channels: every autotuned tile (and the small inputs' fixed one) permutes what it loaded
    (``tl.gather`` on the GPU, not the interpreter's): the bytes cuSPARSELt makes of the gathered activation."""
    x = with_specials(torch.randn(m, k, device="cuda"), seed=m * k).to(torch.bfloat16)
    order = balanced_order(torch.rand(k)).cuda()
    gathered = x[:, order].contiguous()
    got = prune_compress_with_norms(x, order=order) if norms else (prune_compress(x, order=order), None)
    assert same_compressed(got[0], live_compress(gathered), padded_rows(m), k)
    if norms:
        torch.testing.assert_close(got[1], norm_partials(gathered), rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("m, k", [(4096, 3072), (4113, 3088), (16384, 15360)])
def test_kernel_with_norms_matches_cusparselt(m: int, k: int) -> None:
    """Compensation's variant of the kernel (autotuned on its own): the same bytes, and the sums."""
    x = with_specials(torch.randn(m, k, device="cuda"), seed=m - k).to(torch.bfloat16)
    got, norms = prune_compress_with_norms(x)
    assert same_compressed(got, live_compress(x), padded_rows(m), k)
    torch.testing.assert_close(norms, norm_partials(x), rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("m, k, n", [(256, 512, 384), (1000, 1152, 4608), (4096, 3072, 3072)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_mm_matches_dense(m: int, k: int, n: int, dtype: torch.dtype) -> None:
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    ref = prune_2to4(x).double() @ w.double().t()
    alg = tuning.best_alg(m, k, n, dtype, x.device)
    y = cusparselt.sparse_mm(prune_compress(x), w, alg)[:m]
    assert y.shape == (m, n) and y.dtype == dtype
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("m, k, n", [(1000, 1152, 4608), (4608, 3072, 3072)])
def test_folded_bias_in_the_sparse_gemm(m: int, k: int, n: int) -> None:
    """fold_bias: [x | 1 | 0...] compressed by the kernel == cuSPARSELt's own compression of it, and
    the GEMM with [W | b | 0...] adds nn.Linear's bias."""
    x = with_specials(torch.randn(m, k, device="cuda"), seed=m).to(torch.bfloat16)
    expected = live_compress(with_ones_column(x))
    got = prune_compress(x, ones_column=True)
    assert same_compressed(got, expected, padded_rows(m), k + BIAS_COLUMNS)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=x.dtype) / k**0.5
    b = torch.randn(n, device="cuda", dtype=x.dtype)
    folded = with_bias_column(w, b)
    alg = tuning.best_alg(m, k + BIAS_COLUMNS, n, x.dtype, x.device)
    y = cusparselt.sparse_mm(prune_compress(x, ones_column=True), folded, alg)[:m]
    ref = F.linear(prune_2to4(x).double(), w.double(), b.double())
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


def test_bias_epilogue_is_per_row() -> None:
    """Why bias stays outside sparse_mm: with X sparse, cuSPARSELt adds one bias value per token."""
    m, k, n = 256, 512, 384
    x = prune_2to4(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    bias = torch.randn(m, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ w.double().t() + bias.double()[:, None]
    y = torch._cslt_sparse_mm(torch._cslt_compress(x), w.t(), bias)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize(
    "variant",
    [{}, {"ones_column": True}, {"norms": True}, {"ordered": True}, {"ordered": True, "norms": True}],
    ids=["plain", "ones_column", "norms", "ordered", "ordered_norms"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_self_check_passes(dtype: torch.dtype, variant: dict[str, bool]) -> None:
    assert self_check.fast_compress_ok(torch.device("cuda"), dtype, **variant)


def test_tiles_compile_side_by_side() -> None:
    """``compile_tiles`` compiles every tile for a new specialisation (a row stride that is not a
    multiple of 16), after which the tiles' launches compile nothing and stay exact."""
    kernel = prune_compress_module.prune_compress_kernel
    x = torch.randn(300, 1000, dtype=torch.bfloat16, device="cuda")[:, :528]
    cache = kernel.device_caches[torch.cuda.current_device()][0]
    before = len(cache)
    prune_compress_module.compile_tiles(x, padded_rows(300))
    compiled = len(cache)
    outs = [prune_compress_module.launch(x, padded_rows(300), c) for c in prune_compress_module.tile_configs()]
    assert compiled == before + len(prune_compress_module.tile_configs()) and len(cache) == compiled
    expected = cusparselt.compress_compat(x)
    assert all(same_compressed(out, expected, padded_rows(300), 528) for out in outs)


@pytest.mark.parametrize("part", ["sparse_gemm", "dense", "prune"])
def test_queued_timing_sees_gpu_time(part: str, caplog: pytest.LogCaptureFixture) -> None:
    """Events around calls queued behind a GPU sleep time what CUDA-graph replay times, not the CPU
    time between the calls (cuSPARSELt's ~1 ms a call, against ~0.03 ms of GPU time on this
    shape), and the sleep covers the queueing once the calls are warm; within 10%, or a launch gap."""
    w, xs, cs = tuning.operands(1024, 3072, 3072, torch.bfloat16, torch.device("cuda"), prune_compress)
    call = {
        "sparse_gemm": lambda i: cusparselt.sparse_mm(cs[i % len(cs)], w, 0),
        "dense": lambda i: F.linear(xs[i % len(xs)], w),
        "prune": lambda i: prune_compress(xs[i % len(xs)]),
    }[part]
    call(0)
    with caplog.at_level("DEBUG", logger="lynx_compile"):
        queued = tuning.queued_ms(lambda key, i: call(i), [part], calls=4, rounds=5)[part]
    graph = tuning.cuda_graph_ms(call, calls=20, replays=10)
    print(f"{part}: queued {queued:.4f} ms, graph {graph:.4f} ms")
    assert "outran" not in caplog.text
    assert queued == pytest.approx(graph, rel=0.1, abs=0.002)  # a stream's launch gap: ~1.3 us


def test_alg_search_is_cached_on_disk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # Inductor's cache directory holds lynx's
    monkeypatch.setattr(tuning, "_MEMORY", {})
    alg = tuning.best_alg(300, 1024, 2048, torch.bfloat16, "cuda")
    assert list(json.loads((tmp_path / "lynx" / "alg_timed.json").read_text()).values()) == [alg]

    def no_search(*args: object) -> int:
        raise AssertionError("searched again")

    monkeypatch.setattr(tuning, "_MEMORY", {})  # a new process: disk only
    monkeypatch.setattr(tuning, "search_alg", no_search)
    assert tuning.best_alg(300, 1024, 2048, torch.bfloat16, "cuda") == alg


def test_alg_search_times_every_id_cusparselt_offers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search walks ids from 0 up to the first refused one, which is at cuSPARSELt's ALG_CONFIG_MAX_ID
    or just past it."""
    called: set[int] = set()
    real_mm = cusparselt.sparse_mm

    def sparse_mm(compressed: torch.Tensor, weight: torch.Tensor, alg: int, *args, **kwargs) -> torch.Tensor:
        called.add(alg)
        return real_mm(compressed, weight, alg, *args, **kwargs)

    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is None:
        pytest.skip("this torch does not bind cusparseLtMatmulSearch, which tells the number of ids")
    monkeypatch.setattr(cusparselt, "sparse_mm", sparse_mm)
    alg = tuning.search_alg(512, 1024, 2048, torch.bfloat16, torch.device("cuda"))
    x = torch.randn(512, 1024, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(2048, 1024, dtype=torch.bfloat16, device="cuda")
    max_id = search(torch._cslt_compress(prune_2to4(x)), w.t(), None, None, None, False)[3]
    # ids 0 .. the first refused one (cuSPARSELt 0.8 on an H100 reads 21 and refuses id 21)
    assert called == set(range(len(called))) and max_id <= len(called) - 1 <= max_id + 1 and alg < len(called) - 1


def test_measure_costs_is_cached(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_MEMORY", {})
    costs = tuning.measure_costs(1024, 3072, 3072, torch.bfloat16, alg_id=0)
    assert all(0 < t < 10 for t in (costs.dense_ms, costs.prune_ms, costs.sparse_gemm_ms))
    assert costs.prune_ms < costs.sparse_gemm_ms  # a memory pass vs a 19 GFLOP product
    monkeypatch.setattr(tuning, "_MEMORY", {})
    monkeypatch.setattr(tuning, "queued_ms", lambda *a, **k: pytest.fail("measured again"))
    assert tuning.measure_costs(1024, 3072, 3072, torch.bfloat16, alg_id=0) == costs
