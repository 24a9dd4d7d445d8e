"""Option ``refit``: the closed-form weight refit ``W G^T`` (``lynx_compile.refit``), its calibration moments, and
the compiled model computing ``P(x) (W G^T)^T + b`` on every path."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import rel
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_channel_order import outlier_activations
from test_emulated_fast_path import Block, _emulated, _inputs
from test_low_rank import Qkv

import lynx_compile
from lynx_compile import Calibration
from lynx_compile.calibration import CalibrationMismatch
from lynx_compile.codegen import self_check
from lynx_compile.refit import refit_map
from lynx_compile.semantics import prune_2to4, prune_2to4_in_order, refit_weight

OPTIONS = {"min_rows": 16}


def correlated_activations(n: int, k: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Rows from 16 latent factors, as a DiT's channels move together: what pruning drops is then partly predictable
    from what it keeps (independent channels give the refit nothing to fit)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(16, k, generator=torch.Generator().manual_seed(1234))
    return [torch.randn(2, 64, 16, generator=g) @ mix + 0.1 * torch.randn(2, 64, k, generator=g) for _ in range(n)]


@settings(max_examples=30, deadline=None)
@given(k4=st.integers(1, 6), extra=st.integers(8, 60), seed=st.integers(0, 2**16))
def test_the_fit_recovers_a_planted_map(k4: int, extra: int, seed: int) -> None:
    """Rows whose dropped part is exactly P(x) R: the fit returns I + R (the ridge GCV picks is tiny there), where
    the kept values determine R (every channel kept in enough rows)."""
    k = 4 * k4
    g = torch.Generator().manual_seed(seed)
    p = prune_2to4(torch.randn(k + extra, k, generator=g, dtype=torch.float64))
    assume(torch.linalg.cond(p.T @ p) < 1e4)
    r = torch.randn(k, k, generator=g, dtype=torch.float64)
    e = p @ r
    got = refit_map(p.T @ p, p.T @ e, p.shape[0], e.square().sum().item())
    torch.testing.assert_close(got, torch.eye(k, dtype=torch.float64) + r, rtol=1e-3, atol=1e-3 * r.abs().max().item())


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 80), k4=st.integers(1, 8), seed=st.integers(0, 2**16), outliers=st.booleans())
def test_the_refit_never_adds_error_on_its_own_rows(rows: int, k4: int, seed: int, outliers: bool) -> None:
    """The ridge solution's residual is at most that of R = 0: on the calibration rows ||P(x) G - x|| <= ||x - P(x)||,
    whatever the rows (few for K, heavy channels)."""
    k = 4 * k4
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64)
    if outliers:
        x[:, : k // 4] *= 30
    p = prune_2to4(x)
    e = x - p
    got = refit_map(p.T @ p, p.T @ e, rows, e.square().sum().item())
    assert (p @ got - x).square().sum() <= e.square().sum() * (1 + 1e-9) + 1e-12


@pytest.fixture(scope="module")
def qkv_and_calibration() -> tuple[Qkv, Calibration, list[torch.Tensor]]:
    torch.manual_seed(0)
    model, xs = Qkv().eval(), correlated_activations(n=4)
    calibration = lynx_compile.calibrate(model, xs, options={**OPTIONS, "refit": True}, progress=False)
    return model, calibration, xs


def test_calibrate_collects_the_refit_moments_and_gemms_on_one_activation_share_g(qkv_and_calibration) -> None:
    model, calibration, xs = qkv_and_calibration
    assert calibration.refit and calibration.options == {"compensate": False, "permute_channels": False}
    x = torch.cat([x.reshape(-1, 64) for x in xs]).double()
    p = prune_2to4(x)
    s = calibration.stats["q"]
    torch.testing.assert_close(s.spp, p.T @ p, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(s.spe, p.T @ (x - p), rtol=1e-9, atol=1e-6)
    assert s.ee == pytest.approx((x - p).square().sum().item(), rel=1e-9)
    assert calibration.refit_map("q") is calibration.refit_map("k") is calibration.refit_map("v")
    plain = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    assert not plain.refit and plain.stats["q"].spp is None


def test_the_compiled_model_runs_the_refitted_weights_and_prunes_closer_to_dense(qkv_and_calibration) -> None:
    """Reference path (CPU): ``P(x) (W G^T)^T + b`` per GEMM, one G for q, k and v; on other inputs than the
    calibration's, nearer the dense model than plain pruning; the report says so and counts the weight copies."""
    model, calibration, _ = qkv_and_calibration
    x = correlated_activations(n=1, seed=1)[0]
    g = calibration.refit_map("q")
    with torch.no_grad():
        torch.compiler.reset()
        got = torch.compile(model, backend="lynx", options={**OPTIONS, "refit": True, "calibration": calibration})(x)
        report = lynx_compile.reports()[-1]
        torch.compiler.reset()
        plain = torch.compile(model, backend="lynx", options=OPTIONS)(x)
        q, k, v = (F.linear(prune_2to4(x), refit_weight(m.weight, g), m.bias) for m in (model.q, model.k, model.v))
        dense = model(x)
    torch.testing.assert_close(got, q * k.sigmoid() + v, rtol=1e-5, atol=1e-5)
    assert rel(got, dense) < 0.8 * rel(plain, dense)
    assert all(layer.sparse for layer in report.layers)
    assert any("refit: 3 sparse GEMMs (1 activations)" in note for note in report.notes)
    assert any("3 weight copies" in note for note in report.notes)


def test_inspect_and_the_error_budget_measure_the_refitted_layers(qkv_and_calibration) -> None:
    model, calibration, _ = qkv_and_calibration
    x = correlated_activations(n=1, seed=1)[0]
    options = {**OPTIONS, "refit": True, "calibration": calibration}
    refitted = lynx_compile.inspect(model, x, options=options).layer("q")
    plain = lynx_compile.inspect(model, x, options=OPTIONS).layer("q")
    with torch.no_grad():
        w = model.q.weight
        dense = F.linear(x, w, model.q.bias)
        want = rel(F.linear(prune_2to4(x), refit_weight(w, calibration.refit_map("q")), model.q.bias), dense)
    assert refitted.rel_err == pytest.approx(want, rel=1e-4) and refitted.rel_err < plain.rel_err
    # a budget plain pruning misses by far: with the refit more GEMMs fit in it
    budget = {"error_budget": 0.02, "cost_model": False}
    with torch.no_grad():
        counts = []
        for extra in ({}, {"refit": True, "calibration": calibration}):
            torch.compiler.reset()
            torch.compile(model, backend="lynx", options={**OPTIONS, **budget, **extra})(x)
            counts.append(sum(layer.sparse for layer in lynx_compile.reports()[-1].layers))
    assert counts[1] >= counts[0]


def test_refit_with_the_channel_order_refits_for_the_pruning_in_the_order() -> None:
    torch.manual_seed(1)
    model, xs = Qkv().eval(), outlier_activations(n=3)
    calibration = lynx_compile.calibrate(
        model, xs, options={**OPTIONS, "refit": True, "permute_channels": True}, progress=False
    )
    order, x = calibration.orders["q"], xs[0]
    flat = torch.cat([x.reshape(-1, 64) for x in xs]).double()
    p = prune_2to4_in_order(flat, order)
    torch.testing.assert_close(calibration.stats["q"].spp, p.T @ p, rtol=1e-9, atol=1e-6)
    options = {**OPTIONS, "refit": True, "permute_channels": True, "calibration": calibration}
    g = calibration.refit_map("q")
    with torch.no_grad():
        torch.compiler.reset()
        got = torch.compile(model, backend="lynx", options=options)(x)
        q, k, v = (
            F.linear(prune_2to4_in_order(x, order), refit_weight(m.weight, g), m.bias)
            for m in (model.q, model.k, model.v)
        )
    torch.testing.assert_close(got, q * k.sigmoid() + v, rtol=1e-5, atol=1e-5)


def test_the_emulated_fast_path_multiplies_the_refitted_weight_copies(monkeypatch) -> None:
    """Block on the emulated cuSPARSELt path (Triton prune+compress under the interpreter): its output is the eager
    model pruned with every weight refitted, to bf16 rounding; an in-place weight update reaches the copies (G does
    not depend on W)."""
    monkeypatch.setattr(self_check, "_CHECKED", {})
    with torch.random.fork_rng(devices=[]):  # Block's weights as _emulated makes them
        torch.manual_seed(0)
        block = Block().to(torch.bfloat16)
    calibration = lynx_compile.calibrate(
        block, [_inputs(seed=s) for s in range(3)], options={**OPTIONS, "refit": True}, progress=False
    )
    options = {"cost_model": False, "cudagraphs": False, "min_rows": 16, "refit": True, "calibration": calibration}
    model, compiled, reports = _emulated(options, monkeypatch)
    names = ("to_q", "to_k", "to_v", "to_out", "fc1", "fc2")

    def refitted_eager(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        saved = {n: getattr(model, n).weight.detach().clone() for n in names}
        hooks = [getattr(model, n).register_forward_pre_hook(lambda mod, args: (prune_2to4(args[0]),)) for n in names]
        try:
            with torch.no_grad():
                for n in names:
                    getattr(model, n).weight.copy_(refit_weight(saved[n], calibration.refit_map(n)))
                return model(x, scale)
        finally:
            for hook in hooks:
                hook.remove()
            with torch.no_grad():
                for n in names:
                    getattr(model, n).weight.copy_(saved[n])

    x, scale = _inputs(seed=5)
    with torch.no_grad():
        out = compiled(x, scale)
        want, dense = refitted_eager(x, scale), model(x, scale)
        assert {layer.name for r in reports for layer in r.layers if layer.sparse} == set(names)
        assert rel(out, dense) > 2e-2  # pruning ran
        assert rel(out, want) < 2e-2
        model.fc2.weight.mul_(0.5)  # in place: the compiled copy follows, refitted with the same G
        out, want = compiled(x, scale), refitted_eager(x, scale)
    assert rel(out, want) < 2e-2


def test_refit_needs_a_calibration_with_its_moments_and_not_low_rank(qkv_and_calibration, tmp_path) -> None:
    model, calibration, xs = qkv_and_calibration
    with pytest.raises(ValueError, match="refit needs option 'calibration'"):
        lynx_compile.LynxConfig(refit=True)
    with pytest.raises(ValueError, match="'refit' and 'low_rank' cannot be combined"):
        lynx_compile.LynxConfig(refit=True, low_rank=8, calibration=calibration)
    with pytest.raises(TypeError, match="'refit' must be a bool"):
        lynx_compile.calibrate(model, xs, options={"refit": 1}, progress=False)
    plain = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    with torch.no_grad():
        torch.compiler.reset()
        with pytest.raises(Exception, match="no refit moments"):
            torch.compile(model, backend="lynx", options={**OPTIONS, "refit": True, "calibration": plain})(xs[0])


def test_the_refit_moments_survive_save_and_load_and_a_broken_file_is_refused(qkv_and_calibration, tmp_path) -> None:
    _, calibration, _ = qkv_and_calibration
    path = tmp_path / "refit.safetensors"
    sidecar = calibration.save(path)
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == 4 and meta["gemms"]["q"]["ee"] == calibration.stats["q"].ee
    loaded = Calibration.load(path)
    assert loaded.refit and torch.equal(loaded.refit_map("v"), calibration.refit_map("v"))
    tensors = load_file(path)
    del tensors["k/spe"]
    save_file(tensors, path)
    with pytest.raises(CalibrationMismatch, match="k's refit moments are incomplete"):
        Calibration.load(path)
