"""Option precision="fp8" on the CPU (the reference path: the fp8 semantics in torch ops), its
report, its fallbacks, and every zoo architecture's plan."""

import logging
import sys
import types

import pytest
import torch
from helpers import rel
from torch import nn

import lynx_compile
from benchmarks import common, linear
from lynx_compile import ops, zoo
from lynx_compile.codegen import cusparselt, self_check, tuning
from lynx_compile.codegen.cusparselt_layout import compressed_shape, decompress_reference
from lynx_compile.codegen.prune_quantise_compress import row_amax
from lynx_compile.passes import legality
from lynx_compile.passes.decision import Decision
from lynx_compile.report import GemmPath, PruneSite
from lynx_compile.semantics import FP8 as FP8_DTYPE
from lynx_compile.semantics import compensation_scale, fp8_linear, prune_2to4, prune_2to4_in_order, quantise_fp8_rows

FP8 = {"min_rows": 16, "precision": "fp8"}


class MLP(nn.Module):
    def __init__(self, k: int = 64, n: int = 128) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(k, n), nn.Linear(n, k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _expected(model: MLP, x: torch.Tensor, orders: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The fp8 semantics of the MLP, each GEMM's activation pruned in its channel order of ``orders``, if any."""
    orders = orders or {}

    def layer(lin: nn.Linear, h: torch.Tensor, name: str) -> torch.Tensor:
        wq, ws = quantise_fp8_rows(lin.weight)
        out = fp8_linear(prune_2to4_in_order(h, orders.get(name)), wq, ws)
        return out if lin.bias is None else out + lin.bias

    return layer(model.down, torch.nn.functional.gelu(layer(model.up, x, "up")), "down")


def test_fp8_reference_path_equals_the_semantics():
    torch._dynamo.reset()
    lin = nn.Linear(64, 128, bias=False).bfloat16()
    x = torch.randn(2, 32, 64, dtype=torch.bfloat16)
    n = len(lynx_compile.reports())
    with torch.no_grad():
        out = torch.compile(lin, backend="lynx", options=FP8)(x)
        wq, ws = quantise_fp8_rows(lin.weight)
        assert torch.equal(out, fp8_linear(prune_2to4(x), wq, ws))  # bit for bit
    [report] = lynx_compile.reports()[n:]
    assert [layer.precision for layer in report.layers] == ["fp8"]
    assert "fp8 (emulated)" in report.layers[0].reason


class SharedInput(nn.Module):
    """q and k of one activation, each into an RMSNorm, as in an attention block with qk-norm."""

    def __init__(self, k: int = 256) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(k, k), nn.Linear(k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = (torch.nn.functional.rms_norm(lin(x), (lin.out_features,)) for lin in (self.q, self.k))
        return q * k


def test_gemms_sharing_an_activation_share_its_quantisation():
    """Regression: each GEMM quantising the shared activation on its own made Inductor's CPU code
    return NaN (torch 2.13); quantised once, the output is finite and the semantics' up to rounding."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SharedInput().bfloat16()
    x = torch.randn(2, 512, 256, dtype=torch.bfloat16)
    n = len(lynx_compile.reports())
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options=FP8)(x)

        def norm(lin: nn.Linear) -> torch.Tensor:
            wq, ws = quantise_fp8_rows(lin.weight)
            return torch.nn.functional.rms_norm(fp8_linear(prune_2to4(x), wq, ws) + lin.bias, (256,))

        expected = norm(model.q) * norm(model.k)
    assert torch.isfinite(out).all()
    assert rel(out, expected) < 1e-2
    [report] = lynx_compile.reports()[n:]
    assert [layer.precision for layer in report.layers] == ["fp8", "fp8"]


def test_fp8_mlp_is_close_to_the_semantics_and_to_bf16():
    torch._dynamo.reset()
    model = MLP().bfloat16()
    x = torch.randn(2, 32, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options=FP8)(x)
        # Inductor adds the bias to the float32 epilogue before rounding: the second layer's input
        # differs from eager's by a rounding, which can flip its picks
        assert rel(out, _expected(model, x)) < 5e-2
        torch._dynamo.reset()
        bf16 = torch.compile(model, backend="lynx", options={"min_rows": 16})(x)
    assert 1e-3 < rel(out, bf16) < 0.2  # fp8 is not bf16 (3 mantissa bits, both operands), but close to it


def test_weight_changes_reach_the_quantised_copy():
    torch._dynamo.reset()
    model = MLP().bfloat16()
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    f = torch.compile(model, backend="lynx", options=FP8)
    with torch.no_grad():
        f(x)
        before = _expected(model, x)
        model.up.weight.mul_(2)
        assert rel(f(x), _expected(model, x)) < 5e-2 < rel(before, _expected(model, x))


def test_float32_model_keeps_its_precision_with_a_logged_reason(caplog):
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    with caplog.at_level(logging.WARNING, logger="lynx_compile"), torch.no_grad():
        torch.compile(MLP(), backend="lynx", options=FP8)(torch.randn(64, 64))
    [report] = lynx_compile.reports()[n:]
    assert all(layer.precision == "float32" and layer.sparse for layer in report.layers)
    assert "needs a 16-bit activation" in report.layers[0].reason
    assert "needs a 16-bit activation" in report.to_json()
    assert "precision" in str(report).splitlines()[0]


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_every_zoo_architecture_plans_fp8(name):
    built = zoo.build(name, batch=2, dtype=torch.bfloat16)
    with torch.no_grad():
        report = lynx_compile.inspect(built.model, options={**FP8, "min_rows": 32}, **built.example_kwargs)
    sparse = [layer for layer in report.layers if layer.sparse]
    assert sparse and all(layer.precision == "fp8" for layer in sparse)
    assert all(layer.precision == layer.dtype for layer in report.layers if not layer.sparse)


def _emulated_sparse_mm(operand, weight, alg_id, out_dtype=None):
    """cuSPARSELt's e4m3 GEMM on a CPU: the decompressed operand times the weight, in float32."""
    k = weight.shape[1]
    m = next(m for m in range(32, 1 << 14, 32) if compressed_shape(m, k, FP8_DTYPE) == tuple(operand.shape))
    return (decompress_reference(operand, m, k).float() @ weight.float().t()).to(out_dtype)


def _emulate_fast_path(monkeypatch) -> None:
    """Every GEMM on the fp8 cuSPARSELt path, on a CPU: cuSPARSELt emulated, the kernel in the interpreter."""
    monkeypatch.setattr(cusparselt, "sparse_mm", _emulated_sparse_mm)
    monkeypatch.setattr(cusparselt, "fp8_supported", lambda device=None: (True, "emulated"))
    monkeypatch.setattr(tuning, "best_alg", lambda *shape: 0)
    fast = Decision(True, GemmPath.CUSPARSELT, "block GEMM (emulated)", prune=PruneSite.TRITON)
    monkeypatch.setattr(legality, "_sparse_path", lambda site, config: fast)
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *a, **kw: True)
    torch._dynamo.reset()


@pytest.mark.parametrize("compensate", [False, True], ids=["plain", "compensated"])
def test_emulated_fp8_fast_path_equals_the_reference(monkeypatch, compensate):
    """The fast path's graph (custom ops, fake kernels, the Triton kernel in the interpreter, the
    epilogue Inductor fuses) on a CPU, cuSPARSELt emulated: the same numbers as the semantics; with norm
    compensation too, whose scale is computed in the graph (``ops.per_row``)."""
    _emulate_fast_path(monkeypatch)
    lin = nn.Linear(64, 128).bfloat16()
    x = torch.randn(2, 40, 64, dtype=torch.bfloat16)
    n = len(lynx_compile.reports())
    options = {**FP8, "cost_model": False, "cudagraphs": False, "compensate": compensate}
    with torch.no_grad():
        out = torch.compile(lin, backend="lynx", options=options)(x)
        wq, ws = quantise_fp8_rows(lin.weight)
        pruned = prune_2to4(x)
        want = fp8_linear(pruned, wq, ws, compensation_scale(x, pruned) if compensate else None) + lin.bias
    [report] = lynx_compile.reports()[n:]
    assert report.layers[0].path == GemmPath.CUSPARSELT and report.layers[0].precision == "fp8"
    # the emulated GEMM rounds its float32 accumulator to bf16 before the epilogue (as the GPU's does);
    # power-of-two scales make that exact, the bias add rounds once more
    assert rel(out, want) < 1e-2
    assert torch.equal(out.isnan(), want.isnan())


def test_the_row_amax_is_computed_in_the_graph_before_the_compression(monkeypatch):
    """``compress_fp8`` takes x's row amax from the graph (``amax(abs(x))`` after Inductor's decompositions),
    where Inductor can fuse it into x's producer (here the bias add and GELU after the first GEMM); the amax
    it computes is eager's, NaN and inf rows included."""
    _emulate_fast_path(monkeypatch)
    graphs, passed = [], []
    kernel = ops.prune_quantise_compress
    monkeypatch.setattr(
        ops,
        "prune_quantise_compress",
        lambda x, *a, **kw: passed.append((kw["amax"].clone(), row_amax(x))) or kernel(x, *a, **kw),
    )
    model = MLP().bfloat16()
    x = torch.randn(2, 40, 64, dtype=torch.bfloat16)
    x[0, 3, 7], x[1, 5, 2] = float("nan"), float("inf")
    with torch.no_grad(), torch._inductor.config.patch(post_grad_custom_post_pass=graphs.append):
        out = torch.compile(model, backend="lynx", options={**FP8, "cost_model": False, "cudagraphs": False})(x)
    [graph] = graphs
    compressions = [node for node in graph.nodes if node.target == torch.ops.lynx.compress_fp8.default]
    assert len(compressions) == 2
    for node in compressions:
        activation, amax = node.args[:2]
        assert amax.target == torch.ops.aten.amax.default and amax.args[1] == [-1]
        assert amax.args[0].target == torch.ops.aten.abs.default and amax.args[0].args[0] is activation
    assert compressions[1].args[0].op == "call_function"  # the GELU's output, computed in this graph
    for amax, eager in passed:  # compared when passed: Inductor reuses the buffers
        assert torch.equal(amax.isnan(), eager.isnan()) and torch.equal(amax.nan_to_num(), eager.nan_to_num())
    assert passed[0][0].isnan().sum() == passed[0][0].isinf().sum() == 1
    want = _expected(model, x)
    assert torch.equal(out.isnan(), want.isnan()) and out.isnan().any()
    assert rel(out.nan_to_num(), want.nan_to_num()) < 5e-2  # as in test_fp8_mlp_is_close_to_the_semantics_and_to_bf16


def test_linear_benchmark_without_torchao_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails
    common._say_once.cache_clear()
    assert linear.torchao_fp8_linear(torch.zeros(32, 32), torch.zeros(32)) is None
    assert "torchao not importable" in capsys.readouterr().out


def _fake_torchao(monkeypatch) -> dict:
    """torchao.quantization stubbed: quantize_ records its config and zeroes the weights it quantises."""
    seen = {}

    def quantize_(module, config):
        seen["config"] = config
        module.weight.data.zero_()

    class Config:
        def __init__(self, granularity, set_inductor_config=True, activation_value_lb=None):
            self.set_inductor_config = set_inductor_config
            self.activation_value_lb = activation_value_lb

    fake = types.SimpleNamespace(
        Float8DynamicActivationFloat8WeightConfig=Config, PerRow=lambda: "per-row", quantize_=quantize_
    )
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake)
    return seen


def test_torchao_baseline_leaves_inductor_settings_alone(monkeypatch):
    """torchao's config by default turns on coordinate-descent tuning for every later compile of the
    process (FLUX's compile ran past 5 minutes): the baseline must ask it not to, and copy the module."""
    seen = _fake_torchao(monkeypatch)
    original = nn.Linear(8, 8)
    weight = original.weight.detach().clone()
    copied = common.torchao_fp8(original)
    assert copied is not original and torch.equal(original.weight, weight)
    assert seen["config"].set_inductor_config is False
    assert seen["config"].activation_value_lb is None  # the speed baselines run torchao's defaults


def test_quality_torchao_row_bounds_the_amax_of_all_zero_rows(monkeypatch):
    """The yardstick's unconditional pooled embedding is an all-zero row: torchao's default scale for it is 0
    and its quantised row NaN, so the quality benchmark bounds the amax from below (and changes nothing else)."""
    from benchmarks.quality.__main__ import CONFIGS

    seen = _fake_torchao(monkeypatch)
    CONFIGS["torchao_fp8"].transform(nn.Linear(8, 8))
    assert 0 < seen["config"].activation_value_lb <= 1e-12


def test_linear_benchmark_compiles_the_quantised_copy(monkeypatch):
    """The per-layer torchao column times torchao's quantised linear, not the bf16 one it was copied from."""
    _fake_torchao(monkeypatch)
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    compiled = linear.torchao_fp8_linear(torch.ones(8, 8), torch.zeros(8))
    assert torch.equal(compiled.weight, torch.zeros(8, 8))
