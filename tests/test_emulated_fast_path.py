"""Options ``fold_bias``, ``compensate`` and ``low_rank`` (fused) on CPU: a compiled model on the cuSPARSELt path,
emulated.

cuSPARSELt needs a GPU, so ``codegen.cusparselt.sparse_mm`` is replaced here by the decompression of
its operand (``decompress_reference``) times the weight, its compressor (which the kernel's
self-check compares with) by ``compress_reference``, and the policy by one that sends every block
GEMM to the cuSPARSELt path. Everything else is what runs on a GPU: the Triton prune+compress
kernel with its ones column or its norm sums (under Triton's interpreter), the pass, the weight copies
registered on the graph, AOTAutograd and Inductor, and the per-call refresh of the copies.
"""

import dataclasses
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import gemm_sites, rel

import lynx_compile
from lynx_compile import GemmPath, PruneSite, ops
from lynx_compile.codegen import cusparselt, self_check, tuning
from lynx_compile.codegen import prune_compress as prune_compress_module
from lynx_compile.codegen.cusparselt_layout import compress_reference, compressed_shape, decompress_reference
from lynx_compile.passes import legality, low_rank
from lynx_compile.passes.decision import Decision, activation_groups
from lynx_compile.passes.fold_bias import FoldedWeights, costly_bias_add, fold_biases
from lynx_compile.passes.gemms import GemmSite
from lynx_compile.semantics import (
    BIAS_COLUMNS,
    compensation_scale,
    low_rank_u,
    prune_2to4,
    prune_2to4_compensated,
    with_bias_column,
    with_branch_columns,
)

FAST = Decision(True, GemmPath.CUSPARSELT, "block GEMM", prune=PruneSite.TRITON)


class Block(nn.Module):
    """adaLN -> q/k/v -> RMSNorm / attention, and a GELU MLP on the same input (FLUX's single-stream
    block): q, k, v fold (norm, SDPA), the rest do not."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm_q = nn.RMSNorm(d // heads)
        self.to_out = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.norm(x) * (1 + scale)
        q, k, v = (f(h).unflatten(-1, (self.heads, -1)) for f in (self.to_q, self.to_k, self.to_v))
        q = self.norm_q(q)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.to_out(a.transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


def _inputs(d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 40, d, generator=g, dtype=torch.bfloat16),
        torch.randn(2, 1, d, generator=g, dtype=torch.bfloat16),
    )


def test_only_gemms_whose_output_feeds_a_norm_or_attention_fold(monkeypatch):
    monkeypatch.setattr(torch, "_cslt_compress", compress_reference, raising=False)  # the ones column's self-check
    model = Block().to(torch.bfloat16)
    sites = gemm_sites(model, *_inputs())
    assert {s.name: costly_bias_add(s) for s in sites} == {
        "to_q": "rms_norm",
        "to_k": "scaled_dot_product_attention",
        "to_v": "scaled_dot_product_attention",
        "to_out": None,
        "fc1": None,
        "fc2": None,
    }
    folded = fold_biases(sites, [FAST] * len(sites))
    assert {s.name for s, d in zip(sites, folded) if d.fold_bias} == {"to_q", "to_k", "to_v"}
    assert all(d.gemm_k(s.k) == s.k + BIAS_COLUMNS for s, d in zip(sites, folded) if d.fold_bias)
    # fc1 reads q/k/v's input, feeds a GELU: it keeps its add and gets a compression of its own
    groups = activation_groups(sites, folded)
    assert sorted(len(members) for (x, _, _, _), members in groups.items() if x is sites[0].x) == [1, 3]
    [fc1] = [d for s, d in zip(sites, folded) if s.name == "fc1"]
    assert "compressed apart from the 3 folded GEMMs" in fc1.reason
    # a group whose activation is pruned in Inductor's template keeps its bias add (no ones column there)
    fused = [Decision(True, GemmPath.CUSPARSELT, "block GEMM", prune=PruneSite.FUSED) for _ in sites]
    assert not any(d.fold_bias for d in fold_biases(sites, fused))


@pytest.mark.parametrize("compensate", [False, True])
def test_compensated_activations_prune_in_the_template_where_k_is_whole_norm_chunks(compensate):
    """fuse_producers: fc2's GELU input (K = 128) goes to Inductor's template, with or without compensation (the
    template sums the row norms per NORM_CHUNK columns); with compensation a K = 32 activation cannot."""
    sites = {s.name: s for s in gemm_sites(Block().to(torch.bfloat16), *_inputs())}
    config = lynx_compile.LynxConfig(fuse_producers=True, compensate=compensate)
    prune, why = legality._prune_site(sites["fc2"], config)
    assert prune == PruneSite.FUSED and "gelu" in why
    prune, why = legality._prune_site(sites["to_q"], config)  # K = 32, after a norm: never fused
    assert prune == PruneSite.TRITON
    assert ("K=32 % 128 != 0" in why) is compensate


@pytest.mark.parametrize("compensate", [False, True])
def test_fp8_activations_prune_in_the_fp8_template_unless_compensated(compensate):
    """precision="fp8" with fuse_producers: fc2's GELU input goes to the fp8 template; with compensation the
    graph's norm sums read x too (the producer is written anyway), and after a norm there is nothing to fuse."""
    sites = {s.name: s for s in gemm_sites(Block().to(torch.bfloat16), *_inputs())}
    config = lynx_compile.LynxConfig(fuse_producers=True, compensate=compensate, precision="fp8")
    prune, why = legality._prune_site(sites["fc2"], config, fp8=True)
    assert (prune == PruneSite.FUSED) is not compensate and ("gelu" in why) is not compensate
    assert legality._prune_site(sites["to_q"], config, fp8=True)[0] == PruneSite.TRITON
    fp8_only = lynx_compile.LynxConfig(precision="fp8")
    assert legality._prune_site(sites["fc2"], fp8_only, fp8=True)[0] == PruneSite.TRITON


def test_no_bias_folds_where_the_ones_column_kernel_failed_its_self_check(monkeypatch):
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *args, ones_column=False, **kw: not ones_column)
    sites = gemm_sites(Block().to(torch.bfloat16), *_inputs())
    folded = fold_biases(sites, [FAST] * len(sites))
    assert not any(d.fold_bias for d in folded)
    assert {s.name for s, d in zip(sites, folded) if "kernel with a ones column failed its self-check" in d.reason} == {
        "to_q",
        "to_k",
        "to_v",
    }


def _emulated_sparse_mm(operand: torch.Tensor, weight: torch.Tensor, alg_id: int) -> torch.Tensor:
    k = weight.shape[1]
    m = next(m for m in range(16, 1 << 14, 16) if compressed_shape(m, k, weight.dtype) == tuple(operand.shape))
    return (decompress_reference(operand, m, k).float() @ weight.float().t()).to(weight.dtype)


def _fast_path(site, config) -> Decision:
    if not config.select_by_name(site.name)[0] or site.m < config.min_rows:
        return Decision.dense("not selected")
    return Decision(True, GemmPath.CUSPARSELT, "block GEMM (emulated)", prune=PruneSite.TRITON)


FOLD_OPTIONS = {"fold_bias": True, "cost_model": False, "cudagraphs": False, "min_rows": 16}


def _emulated(options: dict, patch: pytest.MonkeyPatch):
    """(model, compiled model, its reports): Block compiled on the emulated cuSPARSELt path."""
    patch.setattr(cusparselt, "sparse_mm", _emulated_sparse_mm)
    patch.setattr(torch, "_cslt_compress", compress_reference, raising=False)
    patch.setattr(tuning, "best_alg", lambda *shape: 0)
    patch.setattr(legality, "can_sparsify", _fast_path)
    with torch.random.fork_rng(devices=[]):  # the same weights whatever ran before: margins below are per model
        torch.manual_seed(0)
        model = Block().to(torch.bfloat16)
    n = len(lynx_compile.reports())
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="lynx", options=options)
    with torch.no_grad():
        compiled(*_inputs())
    return model, compiled, lynx_compile.reports()[n:]


@pytest.fixture(scope="module")
def folded_model():
    """One compile, shared: Block on the (emulated) cuSPARSELt path with fold_bias."""
    patch = pytest.MonkeyPatch()
    yield _emulated(FOLD_OPTIONS, patch)
    patch.undo()


def _eager_pruned(model: Block, x: torch.Tensor, scale: torch.Tensor, prune=prune_2to4) -> torch.Tensor:
    """The block in eager bf16 with every GEMM's input pruned (by ``prune``)."""
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: (prune(args[0]),))
        for m in (model.to_q, model.to_k, model.to_v, model.to_out, model.fc1, model.fc2)
    ]
    try:
        with torch.no_grad():
            return model(x, scale)
    finally:
        for h in hooks:
            h.remove()


def test_a_folded_gemm_adds_its_bias_to_rounding_level(monkeypatch):
    monkeypatch.setattr(cusparselt, "sparse_mm", _emulated_sparse_mm)
    x, w, b = (torch.randn(*shape, dtype=torch.bfloat16) for shape in ((80, 64), (48, 64), (48,)))
    folded = with_bias_column(w, b)
    y = ops.sparse_linear(ops.compress_activation(x, PruneSite.TRITON.value, ones_column=True), x, folded, alg_id=0)
    assert rel(y, F.linear(prune_2to4(x).float(), w.float(), b.float())) < 1e-2


def test_folded_model_equals_the_pruned_model_and_reports_the_folds(folded_model):
    model, compiled, reports = folded_model
    x, scale = _inputs(seed=1)
    with torch.no_grad():
        out = compiled(x, scale)
    # not rounding level: eager rounds q before the bias add, the GEMM after it, and such differences
    # flip near-ties in the next layer's pruning (the GEMM itself: the test above)
    assert rel(out, _eager_pruned(model, x, scale)) < 5e-2
    assert rel(out, model(x, scale)) > 5e-2  # pruning ran
    layers = {layer.name: layer for r in reports for layer in r.layers}
    assert {n for n, layer in layers.items() if layer.bias_folded} == {"to_q", "to_k", "to_v"}
    assert "bias folded into the sparse GEMM (an add would feed rms_norm)" in layers["to_q"].reason
    assert "compressed apart from the 3 folded GEMMs" in layers["fc1"].reason
    assert any(note.startswith("3 weight copies (bias appended") for r in reports for note in r.notes)


def test_in_place_weight_and_bias_updates_reach_the_folded_copies(folded_model):
    """After load_state_dict-like updates the compiled model computes what a fresh compile does."""
    model, compiled, _ = folded_model
    x, scale = _inputs(seed=2)
    with torch.no_grad():
        model.to_q.weight.mul_(-2.0)  # in place: the version counter moves
        model.to_v.bias.add_(3.0)
        updated = compiled(x, scale)
        torch._dynamo.reset()
        fresh = torch.compile(model, backend="lynx", options=FOLD_OPTIONS)(x, scale)
    assert torch.equal(updated, fresh)


def test_refresh_follows_a_replaced_tensor():
    gm = torch.fx.GraphModule({}, torch.fx.Graph())
    w_node, b_node = gm.graph.placeholder("w"), gm.graph.placeholder("b")
    folds = FoldedWeights(gm)
    w, b = torch.randn(16, 32, dtype=torch.bfloat16), torch.randn(16, dtype=torch.bfloat16)
    site = GemmSite(
        node=None,
        name="layer",
        x=None,
        weight=w_node,
        weight_is_nk=True,
        bias=b_node,
        m=64,
        k=32,
        n=16,
        dtype=w.dtype,
        device=w.device,
        dynamic_m=False,
    )
    buffer = getattr(gm, folds.add(site, [w, b]))
    assert torch.equal(buffer, torch.cat([w, b[:, None], torch.zeros(16, BIAS_COLUMNS - 1, dtype=w.dtype)], 1))
    run = folds.wrap(lambda w, b: buffer[:, 32].clone())
    b2 = torch.randn(16, dtype=torch.bfloat16)  # another tensor, same shape: found by its address
    assert torch.equal(run(w, b2), b2)
    assert folds.nbytes == 16 * (32 + BIAS_COLUMNS) * 2


def test_a_compensated_gemm_scales_its_rows_to_rounding_level(monkeypatch):
    monkeypatch.setattr(cusparselt, "sparse_mm", _emulated_sparse_mm)
    x, w = torch.randn(80, 384, dtype=torch.bfloat16), torch.randn(48, 384, dtype=torch.bfloat16)
    compressed, scale = ops.compress_activation_compensated(x, PruneSite.TRITON.value)
    y = ops.sparse_linear(compressed, x, w, alg_id=0, scale=scale)
    pruned = prune_2to4(x)
    expected = (pruned.float() * compensation_scale(x, pruned)[:, None]) @ w.float().t()
    assert rel(y, expected) < 1e-2


def test_compensated_model_takes_its_norms_from_the_prune_kernel():
    """One pass over each activation: the kernel sums the norms; nothing else prunes x again."""
    patch, calls = pytest.MonkeyPatch(), []
    for name in ("prune_compress", "prune_compress_with_norms"):
        kernel = getattr(prune_compress_module, name)
        patch.setattr(
            prune_compress_module, name, lambda *a, _k=kernel, _n=name, **kw: calls.append(_n) or _k(*a, **kw)
        )
    try:
        model, compiled, reports = _emulated({**FOLD_OPTIONS, "fold_bias": False, "compensate": True}, patch)
        x, scale = _inputs(seed=3)
        with torch.no_grad():
            out = compiled(x, scale)
    finally:
        patch.undo()
    # two calls (compile, then the run above) x 3 activations: norm(x) (q, k, v, fc1), attention, GELU
    assert calls == ["prune_compress_with_norms"] * 6
    assert all(layer.sparse and layer.path == "cusparselt" for r in reports for layer in r.layers)
    # near-tie flips, as in the folded model above; the compensation itself is checked just above
    assert rel(out, _eager_pruned(model, x, scale, prune=prune_2to4_compensated)) < 5e-2
    compensated = rel(out, _eager_pruned(model, x, scale, prune_2to4_compensated))
    assert rel(out, _eager_pruned(model, x, scale)) > 2 * compensated


LOW_RANK_OPTIONS = {"low_rank": 16, "cost_model": False, "cudagraphs": False, "min_rows": 16}


@pytest.fixture(scope="module")
def block_calibration():
    """Block's calibration (the reference path's GEMMs are the pass's), on inputs other than the tests'."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Block().to(torch.bfloat16)
    inputs = [_inputs(seed=10 + i) for i in range(3)]
    return lynx_compile.calibrate(model, inputs, options={"min_rows": 16}, progress=False)


def test_a_fused_branch_adds_its_product_to_rounding_level(monkeypatch):
    """``[P(x) | spread(round(x A))] @ [W | spread(B^T) (| b)]^T = P(x) W^T + round(x A) B (+ b)``."""
    monkeypatch.setattr(cusparselt, "sparse_mm", _emulated_sparse_mm)
    x, w, bias = (torch.randn(*shape, dtype=torch.bfloat16) for shape in ((80, 64), (48, 64), (48,)))
    a, b = torch.randn(64, 32, dtype=torch.bfloat16) / 8, torch.randn(32, 48, dtype=torch.bfloat16) / 8
    for fold in (False, True):
        weight = with_branch_columns(w, b)
        weight = with_bias_column(weight, bias) if fold else weight
        y = ops.sparse_linear(ops.compress_activation_low_rank(x, a, fold), x, weight, alg_id=0)
        want = F.linear(prune_2to4(x).float(), w.float(), bias.float() if fold else None)
        assert rel(y, want + low_rank_u(x, a).float() @ b.float()) < 1e-2


def _reference(model: Block, options: dict, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The model compiled on this CPU's own path (reference: pruning, dense GEMMs, the branch in the graph)."""
    torch._dynamo.reset()
    with torch.no_grad():
        return torch.compile(model, backend="lynx", options=options)(x, scale)


def _counted_low_rank_compressions(patch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    kernel = ops.prune_compress_low_rank
    patch.setattr(ops, "prune_compress_low_rank", lambda x, a, *rest: calls.append(a.shape[1]) or kernel(x, a, *rest))
    return calls


@pytest.mark.parametrize("fold_bias", [False, True])
def test_fused_low_rank_model_agrees_with_the_reference_path(block_calibration, fold_bias, monkeypatch):
    """Without fold_bias: q, k, v and fc1 read norm(x) and share one A. With it, to_q's factors count as
    distilled (trained per GEMM), so no A is shared: the different A go side by side in one x A."""
    rank = LOW_RANK_OPTIONS["low_rank"]
    calibration = (
        block_calibration.with_distilled(rank, {"to_q": block_calibration.factors("to_q", rank)}, {"steps": 0})
        if fold_bias
        else block_calibration
    )
    options = {**LOW_RANK_OPTIONS, "calibration": calibration, "fold_bias": fold_bias}
    calls = _counted_low_rank_compressions(monkeypatch)
    model, compiled, reports = _emulated(options, monkeypatch)
    x, scale = _inputs(seed=1)
    with torch.no_grad():
        out = compiled(x, scale)
    monkeypatch.undo()
    reference = _reference(model, options, x, scale)
    naive = _reference(model, {k: v for k, v in options.items() if k not in ("low_rank", "calibration")}, x, scale)
    # rounding differs (u B is summed in the GEMM's float32, not rounded apart) and can flip near-ties in the
    # next layers' pruning (as with the folded bias above); the branch itself moves the output far more
    assert rel(out, reference) < 2e-2
    assert rel(out, reference) < rel(naive, reference) / 4
    layers = {layer.name: layer for r in reports for layer in r.layers}
    # one x A per compression of norm(x): q, k, v (folded, A side by side: ranks add up) apart from fc1 when
    # they fold (ones columns); one shared A of rank 16 for all four when they do not
    shared = (
        {"to_q": 48, "to_k": 48, "to_v": 48, "fc1": 16}
        if fold_bias
        else dict.fromkeys(("to_q", "to_k", "to_v", "fc1"), 16)
    )
    for name, columns in {**shared, "to_out": 16, "fc2": 16}.items():
        assert f"low-rank branch fused into the sparse GEMM (K + {2 * columns}" in layers[name].reason, name
    assert any(n.startswith("low_rank: 6 of 6 branches fused") for r in reports for n in r.notes)
    assert any(n.startswith("6 weight copies") for r in reports for n in r.notes)
    # two calls (compile, run) x one compression per activation: norm(x) (q, k, v apart from fc1 when
    # they fold), attention, GELU; R columns of x A each
    assert sorted(calls) == sorted(([48, 16, 16, 16] if fold_bias else [16, 16, 16]) * 2)


def test_in_place_weight_updates_reach_the_fused_branch_weights(block_calibration, monkeypatch):
    options = {**LOW_RANK_OPTIONS, "calibration": block_calibration}
    model, compiled, _ = _emulated(options, monkeypatch)
    x, scale = _inputs(seed=2)
    with torch.no_grad():
        model.fc1.weight.mul_(-2.0)  # in place: [W | spread(B^T)] is made again, with the same B
        updated = compiled(x, scale)
        torch._dynamo.reset()
        fresh = torch.compile(model, backend="lynx", options=options)(x, scale)
    assert torch.equal(updated, fresh)


def test_branches_stay_unfused_where_the_kernel_failed_its_self_check(block_calibration, monkeypatch):
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *args, low_rank=False, **kw: not low_rank)
    calls = _counted_low_rank_compressions(monkeypatch)
    options = {**LOW_RANK_OPTIONS, "calibration": block_calibration}
    model, compiled, reports = _emulated(options, monkeypatch)
    x, scale = _inputs(seed=1)
    with torch.no_grad():
        out = compiled(x, scale)
    monkeypatch.undo()
    assert not calls
    assert rel(out, _reference(model, options, x, scale)) < 5e-2
    for layer in (layer for r in reports for layer in r.layers):
        assert "low-rank branch unfused: the Triton kernel with low-rank columns failed its self-check" in layer.reason
    assert any(n.startswith("low_rank: 0 of 6 branches fused") for r in reports for n in r.notes)


def _fused_by_name(calibration, options: dict, decision: Decision = FAST) -> dict[str, Decision]:
    """``low_rank.fuse`` over Block's GEMMs, all deciding ``decision``, with branches of the option's rank."""
    sites = gemm_sites(Block().to(torch.bfloat16), *_inputs())
    config = lynx_compile.LynxConfig(**{"low_rank": 16, "calibration": calibration, **options})
    rank = config.low_rank
    branches = {s.name: (torch.zeros(s.k, rank), torch.zeros(rank, s.n)) for s in sites}
    fused = low_rank.fuse(sites, [decision] * len(sites), branches, config)
    return {s.name: d for s, d in zip(sites, fused, strict=True)}


@pytest.mark.parametrize(
    ("decision", "options", "why"),
    [
        (FAST, {}, None),
        (dataclasses.replace(FAST, fp8=True), {}, "fp8 GEMM"),
        (FAST, {"compensate": True}, "compensate (the row scale would scale the branch too)"),
        (dataclasses.replace(FAST, prune=PruneSite.FUSED), {}, "Inductor's template (fuse_producers)"),
        (
            dataclasses.replace(FAST, path=GemmPath.CUSPARSELT_COMPAT, prune=PruneSite.CSLT),
            {},
            "self-check (cusparselt-compat)",
        ),
        (FAST, {"low_rank": 24}, "rank 24 is not a multiple of 16"),
    ],
)
def test_which_branches_fuse_and_why_the_others_do_not(decision, options, why, block_calibration, monkeypatch, caplog):
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *args, **kw: True)
    monkeypatch.setattr(tuning, "best_alg", lambda m, k, *rest: k)  # the algorithm is timed at the fused K
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        by_name = _fused_by_name(block_calibration, options, decision)
    rank = options.get("low_rank", 16)
    if why is None:  # q, k, v and fc1 share their input's x A
        assert by_name["to_q"].low_rank_columns == 2 * 4 * rank and by_name["to_q"].alg_id == 32 + 2 * 4 * rank
        assert by_name["fc2"].low_rank_columns == 2 * rank and by_name["fc2"].alg_id == 128 + 2 * rank
        assert all("low-rank branch fused into the sparse GEMM" in d.reason for d in by_name.values())
    else:
        assert not any(d.low_rank_columns for d in by_name.values())
        assert all("low-rank branch unfused: " in d.reason and why in d.reason for d in by_name.values())
        assert sum(why in r.message for r in caplog.records) <= 1  # logged once per reason and process


def test_an_activation_with_a_wide_x_a_still_fuses(block_calibration, monkeypatch):
    """u = x A comes from a GEMM of its own, so R has no tile limit: q, k, v and fc1 at r = 80 fuse 320
    columns of u (the first kernel, with A in shared memory, refused more than 256)."""
    monkeypatch.setattr(self_check, "fast_compress_ok", lambda *args, **kw: True)
    monkeypatch.setattr(tuning, "best_alg", lambda *shape: 0)
    by_name = _fused_by_name(block_calibration, {"low_rank": 80})
    for name in ("to_q", "to_k", "to_v", "fc1"):
        assert by_name[name].low_rank_columns == 640, by_name[name].reason
    assert by_name["to_out"].low_rank_columns == by_name["fc2"].low_rank_columns == 160
