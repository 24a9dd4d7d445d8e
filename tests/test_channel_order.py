"""Option ``permute_channels``: the channel order, the pruning it defines on every path, and its calibration."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import rel
from hypothesis import given, settings
from hypothesis import strategies as st
from test_emulated_fast_path import Block, _emulated, _inputs
from test_fp8_pass import MLP, _emulate_fast_path, _expected
from test_low_rank import Qkv

import lynx_compile
from lynx_compile import Calibration, ops
from lynx_compile.calibration import CalibrationMismatch, balanced_order
from lynx_compile.codegen import self_check
from lynx_compile.codegen.cusparselt_layout import FP8_MULTIPLE, compress_reference, probe_matrix, same_compressed
from lynx_compile.codegen.prune_compress import prune_compress, prune_compress_with_norms
from lynx_compile.codegen.prune_quantise_compress import prune_quantise_compress, tile_configs
from lynx_compile.passes import channel_order
from lynx_compile.passes.decision import Decision
from lynx_compile.report import GemmPath, PruneSite
from lynx_compile.semantics import (
    ORDER_BLOCK,
    prune_2to4,
    prune_2to4_in_order,
    round_up,
)

OPTIONS = {"min_rows": 16}


@given(groups=st.integers(1, 40), seed=st.integers(0, 2**16), ties=st.booleans())
def test_the_balanced_order_puts_two_of_each_block_s_larger_half_in_every_group(
    groups: int, seed: int, ties: bool
) -> None:
    k = 4 * groups
    g = torch.Generator().manual_seed(seed)
    energy = torch.randint(0, 3, (k,), generator=g).double() if ties else torch.rand(k, generator=g).double()
    order = balanced_order(energy)
    assert torch.equal(order.sort().values, torch.arange(k))
    for start in range(0, k, ORDER_BLOCK):  # within blocks: the kernel's tiles gather from their own columns
        block = order[start : start + ORDER_BLOCK]
        assert torch.equal(block.sort().values, torch.arange(start, start + block.numel()))
        own = energy[start : start + block.numel()]
        larger = {start + i for i in torch.argsort(own, descending=True, stable=True)[: block.numel() // 2].tolist()}
        assert all(sum(int(c) in larger for c in group) == 2 for group in block.reshape(-1, 4))
    assert torch.equal(balanced_order(energy), order)  # deterministic, ties included


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), k16=st.integers(1, 40), seed=st.integers(0, 2**16), norms=st.booleans())
def test_the_kernel_gathering_the_order_equals_the_kernel_on_the_gathered_activation(
    m: int, k16: int, seed: int, norms: bool
) -> None:
    """Bit for bit, metadata and padding included; the norm sums too (same chunks: orders stay in blocks)."""
    g = torch.Generator().manual_seed(seed)
    k = 16 * k16
    x = (torch.randn(m, k, generator=g) * torch.rand(k, generator=g) * 4).to(torch.bfloat16)
    order = balanced_order(torch.rand(k, generator=g))
    gathered = x[:, order].contiguous()
    if norms:
        got, got_sums = prune_compress_with_norms(x, order=order)
        want, want_sums = prune_compress_with_norms(gathered)
        torch.testing.assert_close(got_sums, want_sums, rtol=1e-6, atol=0)
    else:
        got, want = prune_compress(x, order=order.int()), prune_compress(gathered)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(1, 70),
    k32=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    tile=st.sampled_from(tile_configs(ordered=True)),
)
def test_the_fp8_kernel_gathering_the_order_equals_it_on_the_gathered_activation(m, k32, seed, tile) -> None:
    """The fp8 kernel permutes its tiles as the 16-bit one does: the same bytes and row scales as on x[:, order],
    with NaN, inf and ties in x (``probe_matrix``), for every tile the autotuner may pick."""
    k = 32 * k32
    x = probe_matrix(m, k, torch.bfloat16, seed=seed)
    order = balanced_order(torch.rand(k, generator=torch.Generator().manual_seed(seed)))
    got, got_scale = prune_quantise_compress(x, None, tile, order=order)
    want, want_scale = prune_quantise_compress(x[:, order].contiguous(), None, tile)
    assert same_compressed(got, want, round_up(m, FP8_MULTIPLE), k)  # the bytes cuSPARSELt reads
    assert torch.equal(got_scale.nan_to_num(), want_scale.nan_to_num())
    assert torch.equal(got_scale.isnan(), want_scale.isnan())


def test_the_kernel_refuses_an_order_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"order must be a \(32,\) int32/int64 tensor"):
        prune_compress(torch.zeros(16, 32, dtype=torch.bfloat16), order=torch.arange(16))


def test_a_channel_order_needs_whole_groups() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        balanced_order(torch.ones(6))


@given(rows=st.integers(1, 6), groups=st.integers(1, 8), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_pruning_in_an_order_is_pruning_the_permuted_activation(rows: int, groups: int, n: int, seed: int) -> None:
    """``prune_2to4_in_order(x, o) @ W.T == prune_2to4(x[:, o]) @ W[:, o].T``: what the fast path computes.
    Small integers make ties, which the order must not resolve differently."""
    g = torch.Generator().manual_seed(seed)
    k = 4 * groups
    x = torch.randint(-3, 4, (rows, k), generator=g).float()
    w = torch.randn(n, k, generator=g)
    order = torch.randperm(k, generator=g)
    got = prune_2to4_in_order(x, order)
    assert torch.equal(got[:, order], prune_2to4(x[:, order]))
    torch.testing.assert_close(got @ w.T, prune_2to4(x[:, order]) @ w[:, order].T)
    assert torch.equal(prune_2to4_in_order(x, None), prune_2to4(x))


def outlier_activations(n: int = 3, k: int = 64) -> list[torch.Tensor]:
    """DiT-like rows whose large channels sit next to each other: in the model's order 2:4 pruning drops some."""
    scale = torch.ones(k)
    scale[:12] = 8.0
    return [torch.randn(2, 64, k) * scale for _ in range(n)]


@pytest.fixture(scope="module")
def qkv_and_calibration() -> tuple[Qkv, Calibration, list[torch.Tensor]]:
    torch.manual_seed(0)
    model, xs = Qkv().eval(), outlier_activations()
    calibration = lynx_compile.calibrate(model, xs, options={**OPTIONS, "permute_channels": True}, progress=False)
    return model, calibration, xs


def test_calibrate_orders_each_activation_by_its_energies(qkv_and_calibration) -> None:
    _, calibration, xs = qkv_and_calibration
    assert calibration.options == {"compensate": False, "permute_channels": True}
    energy = sum(x.reshape(-1, 64).double().square().sum(0) for x in xs)
    order = balanced_order(energy)
    assert all(torch.equal(calibration.orders[name], order) for name in ("q", "k", "v"))
    # the statistics are those of the pruning in that order
    x = torch.cat([x.reshape(-1, 64) for x in xs]).double()
    t = (x - prune_2to4_in_order(x, order)) @ qkv_and_calibration[0].q.weight.detach().double().T
    torch.testing.assert_close(calibration.stats["q"].sxt, x.T @ t, rtol=1e-9, atol=1e-6)


def test_the_compiled_model_prunes_in_the_order_once_per_activation(qkv_and_calibration, tmp_path) -> None:
    model, calibration, xs = qkv_and_calibration
    x = xs[0]
    order = calibration.orders["q"]
    options = {**OPTIONS, "permute_channels": True, "calibration": calibration, "dump_graphs": str(tmp_path)}
    with torch.no_grad():
        torch.compiler.reset()
        got = torch.compile(model, backend="lynx", options=options)(x)
        q, k, v = (F.linear(prune_2to4(x[..., order]), m.weight[:, order], m.bias) for m in (model.q, model.k, model.v))
        torch.compiler.reset()
        plain = torch.compile(model, backend="lynx", options=OPTIONS)(x)
        dense = model(x)
    torch.testing.assert_close(got, q * k.sigmoid() + v, rtol=1e-5, atol=1e-5)
    assert rel(got, dense) < 0.7 * rel(plain, dense)  # the order pays off where large channels are neighbours
    (after,) = tmp_path.glob("graph_*_after.py")
    assert after.read_text().count("torch.index_select(") == 1  # one gather for the three GEMMs
    report = lynx_compile.reports()[-2]
    assert all("channels permuted (in the graph)" in layer.reason for layer in report.layers)  # reference path
    assert any("permute_channels: 3 sparse GEMMs (1 activations)" in note for note in report.notes)


def test_inspect_and_the_error_budget_measure_the_pruning_in_the_order(qkv_and_calibration) -> None:
    model, calibration, xs = qkv_and_calibration
    x = xs[0]
    options = {**OPTIONS, "permute_channels": True, "calibration": calibration}
    ordered = lynx_compile.inspect(model, x, options=options).layer("q")
    plain = lynx_compile.inspect(model, x, options=OPTIONS).layer("q")
    order = calibration.orders["q"]
    with torch.no_grad():
        want = rel(F.linear(prune_2to4_in_order(x, order), model.q.weight), F.linear(x, model.q.weight))
    # rel_err of the biased GEMM; the pruned energy share follows the order
    assert ordered.energy_pruned == pytest.approx(
        (x - prune_2to4_in_order(x, order)).square().sum().item() / x.square().sum().item(), rel=1e-5
    )
    assert ordered.rel_err < plain.rel_err and want > 0


def test_low_rank_with_the_order_needs_a_calibration_made_with_it(qkv_and_calibration) -> None:
    model, calibration, xs = qkv_and_calibration
    plain = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    with torch.no_grad():
        torch.compiler.reset()
        options = {**OPTIONS, "permute_channels": True, "low_rank": 8, "calibration": plain}
        with pytest.raises(Exception, match=r"permute_channels=False.*permute_channels=True"):
            torch.compile(model, backend="lynx", options=options)(xs[0])
        torch.compiler.reset()  # the order alone needs only the energies: any calibration of the model
        torch.compile(model, backend="lynx", options={**options, "low_rank": 0})(xs[0])
        torch.compiler.reset()
        got = torch.compile(model, backend="lynx", options={**options, "calibration": calibration})(xs[0])
    order, x = calibration.orders["q"], xs[0]
    q, k, v = (
        F.linear(prune_2to4(x[..., order]), m.weight[:, order], m.bias) + (x @ a.float()) @ b.float()
        for m, (a, b) in zip((model.q, model.k, model.v), calibration.shared_factors(["q", "k", "v"], 8), strict=True)
    )
    torch.testing.assert_close(got, q * k.sigmoid() + v, rtol=1e-5, atol=1e-5)


def test_permute_channels_needs_a_calibration_and_a_bool() -> None:
    with pytest.raises(ValueError, match="permute_channels needs option 'calibration'"):
        lynx_compile.LynxConfig.from_options({"permute_channels": True})
    with pytest.raises(TypeError, match="'permute_channels' must be a bool"):
        lynx_compile.calibrate(Qkv(), [torch.randn(64, 64)], options={"permute_channels": 1}, progress=False)


def test_the_orders_survive_save_and_load_and_a_broken_one_is_refused(qkv_and_calibration, tmp_path) -> None:
    _, calibration, _ = qkv_and_calibration
    path = tmp_path / "ordered.safetensors"
    meta = json.loads(calibration.save(path).read_text())
    assert meta["format"] == 3 and meta["options"]["permute_channels"] is True
    loaded = Calibration.load(path)
    assert all(torch.equal(loaded.orders[n], calibration.orders[n]) for n in calibration.orders)
    assert loaded.options == calibration.options
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors["q/order"] = torch.zeros_like(tensors["q/order"])
    save_file(tensors, path)
    with pytest.raises(CalibrationMismatch, match=r"q: a channel order must be a permutation"):
        Calibration.load(path)


def test_an_older_file_assumed_no_order(qkv_and_calibration, tmp_path) -> None:
    model, _, xs = qkv_and_calibration
    path = tmp_path / "old.safetensors"
    sidecar = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False).save(path)
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "options": {"compensate": False}}))  # as format 1 wrote it
    assert Calibration.load(path).options == {"compensate": False, "permute_channels": False}


@pytest.mark.parametrize("kernel_ok", [True, False], ids=["kernel", "kernel_failed_its_check"])
def test_the_emulated_fast_path_prunes_the_gathered_activation(monkeypatch, kernel_ok: bool, caplog) -> None:
    """Block on the emulated cuSPARSELt path (Triton prune+compress under the interpreter): the kernel prunes
    x[..., order], the GEMM multiplies the column-permuted weight copy; the result is the eager model pruned in
    the orders, to bf16 rounding (as without them). Where the kernel's permutation fails its self-check (here it
    is made to ignore the order), the order is gathered in the graph instead: logged, reported, same result."""
    monkeypatch.setattr(self_check, "_CHECKED", {})
    if not kernel_ok:
        launch = self_check.launch
        monkeypatch.setattr(self_check, "launch", lambda *args, order=None, **kwargs: launch(*args, **kwargs))
    with torch.random.fork_rng(devices=[]):  # Block's weights as _emulated makes them
        torch.manual_seed(0)
        block = Block().to(torch.bfloat16)
    calibration = lynx_compile.calibrate(
        block, [_inputs(seed=s) for s in range(2)], options={**OPTIONS, "permute_channels": True}, progress=False
    )
    options = {"cost_model": False, "cudagraphs": False, "min_rows": 16, "permute_channels": True}
    model, compiled, reports = _emulated({**options, "calibration": calibration}, monkeypatch)
    x, scale = _inputs(seed=1)
    names = ("to_q", "to_k", "to_v", "to_out", "fc1", "fc2")
    hooks = [
        getattr(model, n).register_forward_pre_hook(
            lambda mod, args, order=calibration.orders[n]: (prune_2to4_in_order(args[0], order),)
        )
        for n in names
    ]
    with torch.no_grad():
        out = compiled(x, scale)
        try:
            want = model(x, scale)
        finally:
            for hook in hooks:
                hook.remove()
        dense = model(x, scale)
    sparse = [layer for r in reports for layer in r.layers if layer.sparse]
    assert {layer.name for layer in sparse} == set(names)
    where = "in the prune kernel" if kernel_ok else "in the graph: the prune kernel's permutation failed its self"
    assert all(layer.path == "cusparselt" and f"channels permuted ({where}" in layer.reason for layer in sparse)
    assert kernel_ok or "permuting a channel order does not match" in caplog.text
    assert rel(out, dense) > 5e-2  # pruning ran
    assert rel(out, want) < 5e-2


def test_the_kernel_refuses_an_order_across_blocks_and_checks_it_again_after_a_change() -> None:
    """The kernel permutes each tile in the SM, so an order must keep channels in their blocks: a clear error,
    not a wrong answer; checked once per order buffer, and again when it is changed in place."""
    k = 2 * ORDER_BLOCK
    x = torch.randn(16, k).to(torch.bfloat16)
    across = torch.arange(k).roll(1)
    with pytest.raises(ValueError, match=f"within its block of {ORDER_BLOCK}"):
        prune_compress(x, order=across)
    order = balanced_order(torch.rand(k))
    assert torch.equal(prune_compress(x, order=order), prune_compress(x[:, order].contiguous()))
    order.copy_(across)
    with pytest.raises(ValueError, match="within its block"):
        prune_compress(x, order=order)


def test_the_compat_path_gathers_in_its_op_without_a_kernel_self_check(monkeypatch) -> None:
    """cusparselt-compat (the Triton kernel failed its self-check): the op gathers x[:, order] before
    torch._cslt_compress, so no permuting kernel is checked; its result is that of the gathered activation."""
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *a, **k: pytest.fail("no kernel to check"))
    decision = Decision(True, GemmPath.CUSPARSELT_COMPAT, "sparse", prune=PruneSite.CSLT)
    assert channel_order.in_kernel(None, decision, compensate=False) == (True, "in the compression op")
    monkeypatch.setattr(torch, "_cslt_compress", compress_reference, raising=False)
    x = torch.randn(20, 128).to(torch.bfloat16)
    order = balanced_order(torch.rand(128))
    got = ops.compress_activation(x, PruneSite.CSLT.value, False, order)
    assert torch.equal(got, ops.compress_activation(x[:, order].contiguous(), PruneSite.CSLT.value))


@pytest.mark.parametrize("compensate", [False, True], ids=["plain", "compensated"])
def test_fp8_prunes_in_the_order_in_its_kernel_unless_compensated(monkeypatch, compensate: bool) -> None:
    """precision="fp8" on the emulated cuSPARSELt path: the fp8 kernel permutes the order in its tiles (no gather
    in the graph), and the result is the fp8 semantics of the pruning in the order, to rounding. With norm
    compensation, whose scale Inductor computes from the ordered x, the order is gathered in the graph."""
    _emulate_fast_path(monkeypatch)
    torch.manual_seed(0)
    model = MLP().bfloat16()
    xs = [torch.randn(2, 40, 64, dtype=torch.bfloat16) * torch.rand(64).add(0.1).bfloat16() for _ in range(2)]
    calibration = lynx_compile.calibrate(
        model, xs, options={**OPTIONS, "permute_channels": True, "compensate": compensate}, progress=False
    )
    options = {**OPTIONS, "precision": "fp8", "cost_model": False, "cudagraphs": False, "compensate": compensate}
    n = len(lynx_compile.reports())
    with torch.no_grad():
        out = torch.compile(
            model, backend="lynx", options={**options, "permute_channels": True, "calibration": calibration}
        )(xs[0])
    reasons = [layer.reason for r in lynx_compile.reports()[n:] for layer in r.layers if layer.sparse]
    where = "in the graph)" if compensate else "in the prune kernel)"
    assert len(reasons) == 2 and all(f"channels permuted ({where}" in reason for reason in reasons)
    if compensate:
        return  # the compensated numbers are test_fp8_pass's, gathered as on the reference path
    with torch.no_grad():
        want = _expected(model, xs[0], calibration.orders)
    assert rel(out, want) < 2e-2
