"""Calibration and low-rank compensation: the closed-form fit, the streaming statistics, the calibration file and
its checks, and the compensated layer's numbers on the reference path."""

import json

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch import nn

import lynx_compile
from lynx_compile import Calibration, CalibrationMismatch, LynxConfig, cli, lowrank, yardstick
from lynx_compile.calibration import GemmStatistics
from lynx_compile.passes import profitability
from lynx_compile.passes.decision import Decision
from lynx_compile.semantics import prune_2to4, prune_2to4_compensated


class Mlp(nn.Module):
    def __init__(self, k: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.up = nn.Linear(k, hidden)
        self.down = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def activations(n: int = 4, k: int = 64) -> list[torch.Tensor]:
    """DiT-like rows: a few channels carry most of the energy, so pruning errors are structured."""
    scale = torch.ones(k)
    scale[::7] = 8.0
    return [torch.randn(2, 128, k) * scale for _ in range(n)]


OPTIONS = {"min_rows": 16}


@pytest.fixture(scope="module")
def model_and_calibration() -> tuple[Mlp, Calibration, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = Mlp().eval()
    xs = activations()
    return model, lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False), xs


@given(k=st.integers(2, 24), n=st.integers(1, 24), rank=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_the_fit_recovers_a_planted_low_rank_correction(k: int, n: int, rank: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * k + 8, k, generator=g, dtype=torch.float64)
    planted = torch.randn(k, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, n, generator=g, dtype=torch.float64
    )
    t = x @ planted
    moments = (x.T @ x, x.T @ t, rank, x.shape[0], t.square().sum().item())
    a, b = lowrank.fit(*moments, ridge=0.0)
    r = min(rank, k, n)
    assert a.shape == (k, r) and b.shape == (r, n)
    torch.testing.assert_close(a @ b, planted, rtol=1e-7, atol=1e-7 * planted.abs().max().item())
    # with the ridge cross-validation picks: the same up to the ridge's size (noise-free rows: the smallest)
    a, b = lowrank.fit(*moments)
    torch.testing.assert_close(x @ a @ b, t, rtol=1e-3, atol=1e-4 * t.abs().max().item())


@given(rank=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_the_fit_is_the_best_of_its_rank(rank: int, seed: int) -> None:
    """No other rank-r map does better on the rows (truncated SVD of the least-squares map, random rank-r maps),
    and ``residual`` from the moments is the directly measured error."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 4, 16, dtype=torch.float64)
    t = x @ torch.randn(16, 12, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        200, 12, generator=g, dtype=torch.float64
    )
    sxx, sxt, tt = x.T @ x, x.T @ t, t.square().sum().item()
    a, b = lowrank.fit(sxx, sxt, rank, x.shape[0], tt, ridge=0.0)
    best = (x @ a @ b - t).square().sum().item()
    assert lowrank.residual(sxx, sxt, tt, a, b) == pytest.approx(best, rel=1e-9, abs=1e-9)
    m = torch.linalg.lstsq(x, t).solution
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    naive = (x @ (u[:, :rank] * s[:rank]) @ vh[:rank] - t).square().sum().item()
    assert best <= naive * (1 + 1e-9)
    for _ in range(3):  # nearby rank-r maps do worse
        da, db = torch.randn_like(a, dtype=torch.float64), torch.randn_like(b, dtype=torch.float64)
        near = (a + 0.01 * da.mul(a.norm() / da.norm())) @ (b + 0.01 * db.mul(b.norm() / db.norm()))
        assert best <= (x @ near - t).square().sum().item()


@given(n=st.integers(20, 60), k=st.integers(2, 12), seed=st.integers(0, 2**16), lam=st.floats(1e-3, 10.0))
def test_gcv_from_the_moments_is_the_textbook_formula(n: int, k: int, seed: int, lam: float) -> None:
    """``gcv`` from Sxx's eigenvalues and Sxt equals ||(I - H) T||^2 / (1 - tr H / n)^2 computed on the rows,
    H = X (X^T X + lam I)^-1 X^T the ridge map's hat matrix."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    t = x @ torch.randn(k, 3, generator=g, dtype=torch.float64) + torch.randn(n, 3, generator=g, dtype=torch.float64)
    hat = x @ torch.linalg.solve(x.T @ x + lam * torch.eye(k, dtype=torch.float64), x.T)
    want = ((t - hat @ t).square().sum() / (1 - hat.trace() / n) ** 2).item()
    evals, q = torch.linalg.eigh(x.T @ x)
    got = lowrank.gcv(evals, (q.mT @ (x.T @ t)).square().sum(1), n, t.square().sum().item(), lam)
    assert got == pytest.approx(want, rel=1e-6)


def test_few_rows_do_not_overfit_the_branch() -> None:
    """As many calibration rows as K, a few channels carrying most of the energy: the ridge cross-validation
    picks leaves the branch helping on new rows, where the smallest ridge's branch adds several times the
    pruning error it was fitted to remove."""
    g = torch.Generator().manual_seed(0)
    k, n = 256, 256

    def rows(count: int) -> torch.Tensor:
        x = 0.3 * torch.randn(count, k, generator=g) + torch.randn(count, 16, generator=g) @ torch.randn(
            16, k, generator=g
        )
        x[:, :8] *= 20
        return x.double()

    w = torch.randn(32, k, generator=g, dtype=torch.float64) / k**0.5
    x, fresh = rows(n), rows(4096)
    t, t_fresh = ((v - prune_2to4(v)) @ w.T for v in (x, fresh))
    moments = (x.T @ x, x.T @ t, 8, n, t.square().sum().item())

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((fresh @ a @ b - t_fresh).norm() / t_fresh.norm()).item()

    assert error(*lowrank.fit(*moments)) < 1.0 < 2.0 < error(*lowrank.fit(*moments, ridge=lowrank.RIDGES[0]))


def _shared_statistics(x: torch.Tensor, targets: list[torch.Tensor]) -> Calibration:
    """A calibration of GEMMs g0, g1, ... that read the rows ``x``, with errors ``targets``."""
    stats = {
        f"g{i}": GemmStatistics(x.T @ x, x.T @ t, x.shape[0], t.square().sum().item()) for i, t in enumerate(targets)
    }
    return Calibration(stats, options={"compensate": False, "permute_channels": False}, dtype="float32")


@given(
    k=st.integers(4, 24),
    ns=st.lists(st.integers(1, 12), min_size=2, max_size=4),
    rank=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_the_shared_fit_recovers_a_planted_shared_correction(k: int, ns: list[int], rank: int, seed: int) -> None:
    """GEMMs on one activation whose errors are x A* B*_i: one A, each its own B, and A B_i = A* B*_i."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * k + 8, k, generator=g, dtype=torch.float64)
    a_star = torch.randn(k, rank, generator=g, dtype=torch.float64)
    planted = [a_star @ torch.randn(rank, n, generator=g, dtype=torch.float64) for n in ns]
    calibration = _shared_statistics(x, [x @ m for m in planted])
    r = min(rank, k, sum(ns))
    pairs = calibration.shared_factors([f"g{i}" for i in range(len(ns))], r)
    assert all(a is pairs[0][0] for a, _ in pairs) and pairs[0][0].shape == (k, r)
    for (a, b), m in zip(pairs, planted, strict=True):
        torch.testing.assert_close(a @ b, m, rtol=1e-3, atol=1e-3 * m.abs().max().item())


@given(rank=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_a_shared_a_of_the_summed_rank_does_at_least_as_well_as_separate_ones(rank: int, seed: int) -> None:
    """The branch columns a fused group pays for (2 x the summed rank) buy at least the separate fits' accuracy:
    separate A's side by side are one of the joint fit's candidates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16, dtype=torch.float64)
    targets = [x @ torch.randn(16, 10, generator=g, dtype=torch.float64) for _ in range(3)]
    calibration = _shared_statistics(x, targets)
    names = ["g0", "g1", "g2"]

    def error(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        return sum((x @ a @ b - t).square().sum().item() for (a, b), t in zip(pairs, targets, strict=True))

    separate = error([calibration.factors(name, rank) for name in names])
    assert error(calibration.shared_factors(names, 3 * rank)) <= separate * (1 + 1e-9)


def test_shared_factors_fall_back_to_each_gemm_s_own_where_a_cannot_be_shared() -> None:
    """One name; distilled factors (trained per GEMM); statistics of different activations."""
    g = torch.Generator().manual_seed(0)
    x, other = (torch.randn(64, 8, generator=g, dtype=torch.float64) for _ in range(2))
    targets = [x @ torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    calibration = _shared_statistics(x, targets)
    assert calibration.shared_factors(["g0"], 2) == [calibration.factors("g0", 2)]
    distilled = calibration.with_distilled(2, {"g1": calibration.factors("g1", 2)}, {"steps": 1})
    assert distilled.shared_factors(["g0", "g1"], 2) == [distilled.factors(n, 2) for n in ("g0", "g1")]
    apart = _shared_statistics(x, targets)
    apart.stats["g1"] = GemmStatistics(other.T @ other, other.T @ targets[1], 64, 1.0)
    pairs = apart.shared_factors(["g0", "g1"], 2)
    assert pairs[0][0] is not pairs[1][0]


class Qkv(nn.Module):
    """Three GEMMs on one activation, as attention's q, k and v."""

    def __init__(self, k: int = 64) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(k, k) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) * self.k(x).sigmoid() + self.v(x)


def test_gemms_on_one_activation_share_a_on_the_reference_path(tmp_path) -> None:
    """y_i = P(x) W_i^T + b_i + (x A) B_i with one A (``shared_factors``), x A computed once in the graph."""
    torch.manual_seed(0)
    model, xs = Qkv().eval(), activations()
    calibration = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    x = xs[0]
    with torch.no_grad():
        torch.compiler.reset()
        options = {**OPTIONS, "low_rank": 8, "calibration": calibration, "dump_graphs": str(tmp_path)}
        got = torch.compile(model, backend="lynx", options=options)(x)
        pairs = calibration.shared_factors(["q", "k", "v"], 8)
        a = pairs[0][0].float()
        q, k, v = (
            F.linear(prune_2to4(x), lin.weight, lin.bias) + (x @ a) @ b.float()
            for lin, (_, b) in zip((model.q, model.k, model.v), pairs, strict=True)
        )
    torch.testing.assert_close(got, q * k.sigmoid() + v, rtol=1e-5, atol=1e-5)
    assert "3 GEMMs add (x A) B with 1 different A" in "\n".join(lynx_compile.reports()[-1].notes)
    (after,) = tmp_path.glob("graph_*_after.py")
    assert after.read_text().count("torch.matmul(") == 4  # x A once, then u B_i per GEMM


@given(splits=st.lists(st.integers(1, 40), min_size=1, max_size=5), compensate=st.booleans())
def test_streaming_statistics_equal_the_batch_statistics(splits: list[int], compensate: bool) -> None:
    x = torch.randn(sum(splits), 32) * torch.linspace(0.2, 3, 32)
    weight = torch.randn(24, 32)
    streamed = GemmStatistics.empty(32, 24)
    for chunk in x.split(splits):
        streamed.add(chunk, weight, compensate)
    p = prune_2to4_compensated(x) if compensate else prune_2to4(x)
    x64 = x.double()
    t = (x64 - p.double()) @ weight.double().T
    assert streamed.rows == x.shape[0]
    torch.testing.assert_close(streamed.sxx, x64.T @ x64, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(streamed.sxt, x64.T @ t, rtol=1e-12, atol=1e-10)
    assert streamed.tt == pytest.approx(t.square().sum().item(), rel=1e-12)


def test_calibrate_covers_the_pass_gemms(model_and_calibration) -> None:
    _, calibration, xs = model_and_calibration
    assert calibration.names == ["up", "down"]
    assert calibration.stats["up"].k == 64 and calibration.stats["up"].n == 128
    assert calibration.rows == sum(x.shape[0] * x.shape[1] for x in xs)
    assert calibration.options == {"compensate": False, "permute_channels": False} and calibration.dtype == "float32"


def test_save_load_round_trip(model_and_calibration, tmp_path) -> None:
    _, calibration, _ = model_and_calibration
    path = tmp_path / "calib.safetensors"
    sidecar = calibration.save(path)
    meta = json.loads(sidecar.read_text())
    assert (
        meta["format"] == 1
        and meta["options"] == {"compensate": False, "permute_channels": False}
        and meta["dtype"] == "float32"
    )
    assert meta["gemms"]["down"] == {
        "k": 128,
        "n": 64,
        "rows": calibration.stats["down"].rows,
        "tt": calibration.stats["down"].tt,
    }
    loaded = Calibration.load(path)
    assert loaded.names == calibration.names and loaded.options == calibration.options
    for name in calibration.names:
        assert torch.equal(loaded.stats[name].sxx, calibration.stats[name].sxx)
        assert torch.equal(loaded.stats[name].sxt, calibration.stats[name].sxt)
    for got, want in zip(loaded.factors("up", 8), calibration.factors("up", 8), strict=True):
        assert torch.equal(got, want)


def test_a_compensated_layer_computes_the_documented_formula(model_and_calibration, tmp_path) -> None:
    """Reference path: y = prune(x) W^T + b + (x A) B, A and B in the model dtype, from the file."""
    model, calibration, xs = model_and_calibration
    path = tmp_path / "calib.safetensors"
    calibration.save(path)
    x = xs[0]
    with torch.no_grad():
        torch.compiler.reset()
        got = torch.compile(model, backend="lynx", options={**OPTIONS, "low_rank": 8, "calibration": str(path)})(x)
        a_up, b_up = (f.float() for f in calibration.factors("up", 8))
        a_dn, b_dn = (f.float() for f in calibration.factors("down", 8))
        h = F.gelu(F.linear(prune_2to4(x), model.up.weight, model.up.bias) + (x @ a_up) @ b_up)
        want = F.linear(prune_2to4(h), model.down.weight, model.down.bias) + (h @ a_dn) @ b_dn
        naive = F.linear(
            prune_2to4(F.gelu(F.linear(prune_2to4(x), model.up.weight, model.up.bias))),
            model.down.weight,
            model.down.bias,
        )
        dense = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - dense).norm() < 0.95 * (naive - dense).norm()  # the branch pays off on structured rows
    report = lynx_compile.reports()[-1]
    assert [(layer.name, layer.low_rank) for layer in report.layers] == [("up", 8), ("down", 8)]
    # the report says which form each branch took: here the graph's two GEMMs and add, the semantics
    assert all("low-rank branch unfused: reference path" in layer.reason for layer in report.layers)
    assert "low_rank: 0 of 2 branches fused into the sparse GEMM" in "\n".join(report.notes)


def test_a_gemm_the_branch_makes_unprofitable_stays_dense_without_it(model_and_calibration, monkeypatch) -> None:
    """The cost model charges each branch as it will run (``charge_branches``, timed on the GPU, stubbed here);
    a GEMM it keeps dense runs its plain dense product, with no branch in the graph or the report."""
    model, calibration, xs = model_and_calibration
    asked = {}

    def charge_branches(sites, decisions, ranks, min_speedup, compensate):
        asked.update(ranks)
        kept_dense = Decision.dense("stub: the branch eats the gain")
        return [kept_dense if s.name == "down" else d for s, d in zip(sites, decisions, strict=True)]

    monkeypatch.setattr(profitability, "charge_branches", charge_branches)
    x = xs[0]
    with torch.no_grad():
        torch.compiler.reset()
        options = {**OPTIONS, "low_rank": 8, "calibration": calibration, "cost_model": True}
        got = torch.compile(model, backend="lynx", options=options)(x)
        a_up, b_up = (f.float() for f in calibration.factors("up", 8))
        h = F.gelu(F.linear(prune_2to4(x), model.up.weight, model.up.bias) + (x @ a_up) @ b_up)
        want = model.down(h)
    assert asked == {"up": 8, "down": 8}
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    report = lynx_compile.reports()[-1]
    layers = [(layer.name, layer.sparse, layer.low_rank) for layer in report.layers]
    assert layers == [("up", True, 8), ("down", False, 0)]
    assert report.layer("down").reason == "stub: the branch eats the gain"


def test_inspect_measures_the_error_with_and_without_the_branch(model_and_calibration) -> None:
    model, calibration, xs = model_and_calibration
    torch.compiler.reset()
    report = lynx_compile.inspect(model, xs[0], options={**OPTIONS, "low_rank": 16, "calibration": calibration})
    for layer in report.layers:
        assert layer.low_rank == 16
        assert layer.rel_err_low_rank < layer.rel_err
    assert " r " in str(report).splitlines()[0] + " " and "rel_err_r" in str(report)
    json.loads(report.to_json())  # the Calibration object in the options does not break the JSON


def test_low_rank_needs_a_calibration() -> None:
    with pytest.raises(ValueError, match="low_rank=8 needs option 'calibration'"):
        LynxConfig(low_rank=8)
    with pytest.raises(TypeError, match="'low_rank' must be a non-negative int"):
        LynxConfig(low_rank=-1, calibration="x")
    with pytest.raises(TypeError, match="'calibration' must be None, a path"):
        LynxConfig(low_rank=8, calibration=3)


def _refused(model: nn.Module, x: torch.Tensor, calibration: Calibration, match: str, **options) -> None:
    """Compiling ``model`` fails with a ``CalibrationMismatch`` saying ``match`` (Dynamo wraps backend errors)."""
    torch.compiler.reset()
    with torch.no_grad(), pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=match) as info:
        torch.compile(model, backend="lynx", options={**OPTIONS, "low_rank": 4, "calibration": calibration, **options})(
            x
        )
    assert isinstance(info.value.inner_exception, CalibrationMismatch)


def test_mismatched_names_are_an_error(model_and_calibration) -> None:
    _, calibration, xs = model_and_calibration

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    _refused(Other(), xs[0], calibration, r"no statistics for the GEMMs \['proj'\]")


def test_mismatched_shapes_are_an_error(model_and_calibration) -> None:
    _, calibration, _ = model_and_calibration
    _refused(Mlp(k=32), torch.randn(2, 128, 32), calibration, r"up is K x N = \(32, 128\) in the model, \(64, 128\)")


def test_mismatched_options_are_an_error(model_and_calibration) -> None:
    model, calibration, xs = model_and_calibration
    _refused(
        model,
        xs[0],
        calibration,
        "assumed compensate=False, the model is compiled with compensate=True",
        compensate=True,
    )


def test_a_missing_or_old_file_is_an_error(model_and_calibration, tmp_path) -> None:
    _, calibration, _ = model_and_calibration
    with pytest.raises(FileNotFoundError, match="needs"):
        Calibration.load(tmp_path / "nothing.safetensors")
    path = tmp_path / "old.safetensors"
    sidecar = calibration.save(path)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": 0}))
    with pytest.raises(CalibrationMismatch, match="format 0"):
        Calibration.load(path)


def test_a_pipeline_calibration_sees_every_step_with_the_pass_names() -> None:
    """The real sampling loop: every step, both halves of the guidance batch, the names the pass reports."""
    pipe = yardstick.build_pipeline(seed=0, config_overrides=yardstick.TINY_OVERRIDES)
    captions = [yardstick.caption(s) for s in yardstick.sample_scenes(2, torch.Generator().manual_seed(1))]
    options = {"min_rows": 16}
    calibration = lynx_compile.calibrate(pipe, captions, options=options, steps=2, progress=False)
    torch.compiler.reset()
    before = len(lynx_compile.reports())
    pipe.transformer = torch.compile(
        pipe.transformer, backend="lynx", options={**options, "low_rank": 4, "calibration": calibration}
    )
    with torch.no_grad():
        pipe(captions[:1], num_inference_steps=1, output_type="latent")
    sparse = [layer for report in lynx_compile.reports()[before:] for layer in report.layers if layer.sparse]
    assert sparse and all(layer.low_rank == 4 for layer in sparse)
    assert {layer.name for layer in sparse} == set(calibration.names)
    tokens = (yardstick.IMAGE_SIZE // pipe.transformer.config.patch_size) ** 2
    guidance = 2 if pipe.default_guidance_scale > 1 else 1
    assert calibration.stats["transformer_blocks.0.ff.net.2"].rows == 2 * guidance * len(captions) * tokens


def test_the_cli_calibrates_a_pipeline(tmp_path, capsys) -> None:
    out = tmp_path / "zoo.safetensors"
    assert (
        cli.main(
            [
                "calibrate",
                "--pipeline",
                "zoo:flux",
                "--num-prompts",
                "1",
                "--steps",
                "2",
                "-o",
                "min_rows=16",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    calibration = Calibration.load(out)
    assert calibration.names and all(s.rows > 0 for s in calibration.stats.values())
    assert "transformer_blocks.0.attn.to_q" in calibration.names
