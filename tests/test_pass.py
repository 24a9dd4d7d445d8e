"""The lynx pass on toy models: what it matches, what it leaves, and that compiled == eager-pruned."""

import functools
import logging
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import rel

import lynx_compile
from lynx_compile import backend, prune_2to4, prune_2to4_compensated

OPTS = {"min_rows": 16}


class Toy(nn.Module):
    """Every GEMM pattern the pass knows, plus attention matmuls it must leave alone.

    ``self.pruned`` names the GEMMs whose input the eager reference prunes (empty: the dense model).
    """

    def __init__(self, d: int = 32, dtype_mlp: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.x_embedder = nn.Linear(d, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)).to(dtype_mlp)
        self.w_out = nn.Parameter(torch.randn(d, d) / d**0.5)  # stored (K, N): x @ w_out
        self.w_t = nn.Parameter(torch.randn(d, d) / d**0.5)  # stored (N, K): x @ w_t.T
        self.register_buffer("w_buf", torch.randn(d, d) / d**0.5)
        self.b_mm = nn.Parameter(torch.randn(d))
        self.time = nn.Linear(d, d)  # M = batch: stays dense by min_rows
        self.proj_out = nn.Linear(d, d)
        self.pruned: set[str] = set()
        self.compensated = False

    def pre(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.pruned:
            return x
        return prune_2to4_compensated(x) if self.compensated else prune_2to4(x)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(self.pre("x_embedder", x))
        h = h + self.time(self.pre("time", t))[:, None, :]
        q, k, v = self.qkv(self.pre("qkv", h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / 8, dim=-1) @ v
        h = h + att @ self.w_out if "w_out" not in self.pruned else h + self.pre("w_out", att) @ self.w_out
        h = h + torch.matmul(self.pre("w_t", h), self.w_t.t())
        h = h + torch.addmm(self.b_mm, self.pre("b_mm", h).reshape(-1, h.shape[-1]), self.w_buf.T).view_as(h)
        y = self.ff[0](self.pre("ff.0", h.to(self.ff[0].weight.dtype)))
        y = self.ff[2](self.pre("ff.2", self.ff[1](y)))
        h = h + y.to(h.dtype)
        return self.proj_out(self.pre("proj_out", h))


def toy_inputs(batch: int = 2, tokens: int = 24, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, d, generator=g), torch.randn(batch, d, generator=g)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = Toy().eval()
    with torch.no_grad():
        compiled = torch.compile(model, backend="lynx", options=OPTS)
        x, t = toy_inputs()
        out = compiled(x, t)
    return model, compiled, out, lynx_compile.reports()[-1]


def test_finds_every_weight_gemm_and_names_them(toy):
    _, _, _, report = toy
    names = [layer.name for layer in report.layers]
    assert names == ["x_embedder", "time", "qkv", "w_out", "w_t", "w_buf", "ff.0", "ff.2", "proj_out"]
    sparse = {layer.name for layer in report.layers if layer.sparse}
    assert sparse == {"qkv", "w_out", "w_t", "w_buf", "ff.0", "ff.2"}
    assert "min_rows" in report.layer("time").reason
    assert "embed" in report.layer("x_embedder").reason
    assert report.layer("proj_out").path == "dense"
    assert all(layer.path == "reference" for layer in report.layers if layer.sparse)
    assert report.layer("ff.2").k == 64 and report.layer("ff.2").m == 48 and report.layer("ff.2").n == 32


def toy_reference(model: Toy, pruned: set[str], *args, compensated: bool = False) -> torch.Tensor:
    model.pruned, model.compensated = pruned, compensated
    try:
        with torch.no_grad():
            return model(*args)
    finally:
        model.pruned, model.compensated = set(), False


SPARSE = {"qkv", "w_out", "w_t", "b_mm", "ff.0", "ff.2"}  # b_mm's weight is the buffer w_buf


def test_compiled_equals_eager_pruned_and_differs_from_dense(toy):
    model, _, out, _ = toy
    x, t = toy_inputs()
    assert rel(out, toy_reference(model, SPARSE, x, t)) < 1e-5
    assert rel(out, toy_reference(model, set(), x, t)) > 1e-2


@pytest.mark.slow
def test_changed_batch_and_resolution_recompile_correctly(toy):
    model, compiled, _, _ = toy
    for batch, tokens in ((3, 24), (2, 40)):
        x, t = toy_inputs(batch, tokens, seed=batch + tokens)
        with torch.no_grad():
            out = compiled(x, t)
        assert rel(out, toy_reference(model, SPARSE, x, t)) < 1e-5


def test_include_exclude_min_rows_are_respected():
    model = Toy().eval()
    x, t = toy_inputs()
    r = lynx_compile.inspect(model, x, t, options={"min_rows": 16, "exclude": ["ff.*"], "include": ["*", "x_embedder"]})
    sparse = {layer.name for layer in r.layers if layer.sparse}
    assert sparse == {"x_embedder", "qkv", "w_out", "w_t", "w_buf"}
    assert "exclude='ff.*'" in r.layer("ff.0").reason
    r = lynx_compile.inspect(model, x, t, options={"min_rows": 49})
    assert not any(layer.sparse for layer in r.layers)
    assert all("< min_rows=49" in layer.reason for layer in r.layers if layer.name not in ("x_embedder", "proj_out"))


def test_inspect_reports_errors_and_totals():
    model = Toy().eval()
    x, t = toy_inputs()
    r = lynx_compile.inspect(model, x, t, options=OPTS)
    for layer in r.layers:
        assert 0 < layer.rel_err < 1 and 0 < layer.energy_pruned < 0.5
    assert r.total_flops == sum(2 * layer.m * layer.k * layer.n for layer in r.layers)
    assert 0 < r.sparse_share < 1
    data = r.to_dict()
    assert data["totals"]["sparse_gemms"] == 6 and len(data["layers"]) == 9
    text = str(r)
    assert "ff.0" in text and "6/9 GEMMs sparse" in text


def test_inspect_error_is_the_layer_error():
    """rel_err is ||linear(prune(x)) - linear(x)|| / ||linear(x)|| on the layer's dense input."""
    lin = nn.Linear(16, 8)
    x = torch.randn(64, 16)
    r = lynx_compile.inspect(lin, x, options={"min_rows": 1, "default_exclude": []})
    with torch.no_grad():
        want = rel(lin(prune_2to4(x)), lin(x))
    energy = ((x - prune_2to4(x)).square().sum() / x.square().sum()).item()
    (layer,) = r.layers
    assert layer.rel_err == pytest.approx(want, rel=1e-4)
    assert layer.energy_pruned == pytest.approx(energy, rel=1e-4)


@pytest.mark.slow
def test_compensation_matches_the_documented_formula():
    model = Toy().eval()
    x, t = toy_inputs()
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options={**OPTS, "compensate": True})(x, t)
    assert rel(out, toy_reference(model, SPARSE, x, t, compensated=True)) < 1e-5
    assert rel(out, toy_reference(model, SPARSE, x, t)) > 1e-4


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        torch._dynamo.graph_break()
        return self.b(torch.relu(h))


def test_graph_breaks_each_graph_is_sparsified():
    model = Broken().eval()
    x = torch.randn(4, 8, 32)
    before = len(lynx_compile.reports())
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options=OPTS)(x)
        want = model.b(prune_2to4(torch.relu(model.a(prune_2to4(x)))))
    new = lynx_compile.reports()[before:]
    assert [layer.name for r in new for layer in r.layers] == ["a", "b"]
    assert rel(out, want) < 1e-5


def test_mixed_fp32_and_bf16_and_dtype_option():
    model = Toy(dtype_mlp=torch.bfloat16).eval()
    x, t = toy_inputs()
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options={**OPTS, "dtypes": ["float32"]})(x, t)
    report = lynx_compile.reports()[-1]
    assert report.layer("ff.0").dtype == "bfloat16" and not report.layer("ff.0").sparse
    assert "dtype bfloat16 not in option dtypes" in report.layer("ff.0").reason
    assert rel(out, toy_reference(model, SPARSE - {"ff.0", "ff.2"}, x, t)) < 1e-3


def test_autograd_graphs_fall_back_to_dense_with_a_warning(caplog):
    lin = nn.Sequential(nn.Linear(32, 32))
    x = torch.randn(64, 32)
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        out = torch.compile(lin, backend="lynx", options=OPTS)(x)
    assert "inference-only" in caplog.text
    report = lynx_compile.reports()[-1]
    assert not report.layers[0].sparse and "autograd" in report.layers[0].reason
    torch.testing.assert_close(out, lin(x))


def test_cpu_reference_path_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(backend, "_LOGGED_REFERENCE", set())
    with caplog.at_level(logging.WARNING, logger="lynx_compile"), torch.no_grad():
        for n in (32, 16):
            torch.compile(nn.Linear(32, n).eval(), backend="lynx", options={"min_rows": 1})(torch.randn(8, 32))
    assert caplog.text.count("run on the reference path") == 1
    assert "cpu has no sparse tensor cores" in caplog.text


def test_the_fallback_warning_reaches_stderr_where_no_logging_is_configured():
    """A user who configured no logging still sees each fallback's warning (Python's last-resort handler);
    the INFO lines stay for TORCH_LOGS=lynx_compile."""
    code = (
        "import torch, torch.nn as nn, lynx_compile\n"
        "with torch.no_grad(): torch.compile(nn.Linear(32, 16), backend='lynx', options={'min_rows': 1})"
        "(torch.randn(8, 32))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("run on the reference path") == 1 and "cpu has no sparse tensor cores" in run.stderr
    assert sum(line.startswith("lynx: ") for line in run.stderr.splitlines()) == 1  # the decisions are INFO


class Qkv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(32, 32) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_q(x) * self.to_k(x) + self.to_v(x)


def test_gemms_sharing_an_input_prune_it_once_and_graphs_are_dumped(tmp_path):
    model = Qkv().eval()
    x = torch.randn(64, 32)
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options={**OPTS, "dump_graphs": str(tmp_path)})(x)
        xp = prune_2to4(x)
        want = model.to_q(xp) * model.to_k(xp) + model.to_v(xp)
    assert rel(out, want) < 1e-5
    (before,) = tmp_path.glob("graph_*_before.py")
    (after,) = tmp_path.glob("graph_*_after.py")
    assert before.read_text().count("torch._C._nn.linear") == 3
    after_code = after.read_text()
    assert after_code.count("prune_2to4(") == 1 and after_code.count("reference_linear(") == 3


class ScaledAttention(nn.Module):
    """A float attribute given to an op: with ``dynamic=True`` Dynamo makes it a symbolic float, fails
    to turn it into a tensor and restarts its analysis (DiT's attention does this), so the backend
    compiles the frame twice and only the second graph runs."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.scale = nn.Linear(32, 32), 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.qkv(x).unflatten(-1, (2, 16)).transpose(1, 2)
        return F.scaled_dot_product_attention(h, h, h, scale=self.scale)


def test_a_compile_dynamo_discards_leaves_no_report():
    compiles, runs = [], []

    def counting(gm, example_inputs):
        compiles.append(gm)
        compiled = backend.lynx_backend(gm, example_inputs, options=OPTS)
        return functools.wraps(compiled)(lambda *args: runs.append(gm) or compiled(*args))

    torch._dynamo.reset()
    before = len(lynx_compile.reports())
    with torch.no_grad():
        torch.compile(ScaledAttention().eval(), backend=counting, dynamic=True)(torch.randn(2, 24, 32))
    assert len(compiles) == 2 and len(set(runs)) == 1  # the analysis restarted: one graph of two ran
    assert len(lynx_compile.reports()) - before == 1
