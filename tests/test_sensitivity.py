"""Option ``error_budget``: GEMMs chosen by a knapsack over their measured effect on the graph's output, then
verified together; the compiled model's output stays within the budget."""

import itertools
import logging

import pytest
import torch
from helpers import gemm_sites, rel
from hypothesis import given
from hypothesis import strategies as st
from test_pass import OPTS, Toy, toy_inputs, toy_reference
from torch._subclasses.fake_tensor import FakeTensorMode

import lynx_compile
from lynx_compile import backend, zoo
from lynx_compile.config import LynxConfig
from lynx_compile.passes import policy, sensitivity
from lynx_compile.passes.decision import Decision
from lynx_compile.report import GemmPath

ITEM = st.tuples(st.floats(0, 1), st.floats(0, 10))


def _brute_force(weights, values, capacity):
    best = 0.0
    for r in range(len(weights) + 1):
        for combo in itertools.combinations(range(len(weights)), r):
            if sum(weights[i] for i in combo) <= capacity:
                best = max(best, sum(values[i] for i in combo))
    return best


@given(items=st.lists(ITEM, max_size=10), capacity=st.floats(0, 3))
def test_knapsack_is_optimal(items, capacity):
    weights, values = [w for w, _ in items], [v for _, v in items]
    picked, optimal = sensitivity.knapsack(weights, values, capacity)
    assert optimal
    assert sum(weights[i] for i in picked) <= capacity
    assert sum(values[i] for i in picked) == pytest.approx(_brute_force(weights, values, capacity), rel=1e-9, abs=1e-12)


def test_knapsack_says_when_it_stopped_early():
    picked, optimal = sensitivity.knapsack([1.0] * 30, [1.0 + i / 100 for i in range(30)], 15.0, max_nodes=10)
    assert not optimal and sum(1.0 for _ in picked) <= 15


class _Measured:
    """An ``OutputError`` stand-in: each GEMM's error alone, and a combined error the caller defines."""

    def __init__(self, alone, together):
        self.alone, self.together, self.verified, self.calls = alone, together, None, []

    def __call__(self, pruned):
        self.calls.append(set(pruned))
        return self.alone[next(iter(pruned))] if len(pruned) == 1 else self.together(set(pruned))


def test_verification_drops_the_worst_ratio_until_within_budget(toy_sites):
    sites = toy_sites[:4]
    decisions = [Decision(True, GemmPath.REFERENCE, "block GEMM") for _ in sites]
    names = [s.name for s in sites]
    alone = dict(zip(names, [0.1, 0.1, 0.1, 0.3]))
    saved = {0: 1.0, 1: 2.0, 2: 4.0, 3: 1.0}
    # the errors add coherently and more: the sum of the picked sensitivities underestimates them
    measured = _Measured(alone, lambda pruned: 0.15 * len(pruned))
    out = sensitivity.within_output_budget(sites, decisions, 0.31, measured, saved, "GFLOP")
    # the knapsack picks 0, 1, 2 (0.3 <= 0.31); verified 0.45 > 0.31: drop 0 (ratio 0.1), then 0.3 is within
    assert [d.sparse for d in out] == [False, True, True, False]
    assert "dropped after verification: output error 0.45" in out[0].reason
    assert "not picked by the knapsack" in out[3].reason and "output sensitivity 0.3" in out[3].reason
    assert measured.verified == (pytest.approx(0.3), 2)


@pytest.fixture(scope="module")
def toy_sites():
    torch.manual_seed(0)
    return gemm_sites(Toy().eval(), *toy_inputs())


def _compile(model, options, *args):
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options=options)(*args)
    return out, lynx_compile.reports()[-1]


@pytest.mark.parametrize("fragile", ["w_t", "ff.2"])
def test_the_fragile_layer_is_found_by_measurement_and_the_budget_holds(fragile):
    torch.manual_seed(0)
    model = Toy().eval()
    x, t = toy_inputs()
    with torch.no_grad():  # a layer whose output dominates the residual stream: its pruning error does too
        weight = model.w_t if fragile == "w_t" else model.ff[2].weight
        weight.mul_(30)
    dense = toy_reference(model, set(), x, t)
    budget = 0.2
    out, report = _compile(model, {**OPTS, "error_budget": budget}, x, t)
    assert rel(out, dense) <= budget
    layer = report.layer(fragile)
    assert not layer.sparse and f"error_budget={budget:g}: output sensitivity" in layer.reason
    assert sum(layer.sparse for layer in report.layers) >= 2
    assert any(note.startswith(f"error_budget={budget:g}: output error") for note in report.notes)
    pruned = {"b_mm" if layer.name == "w_buf" else layer.name for layer in report.layers if layer.sparse}
    assert rel(out, toy_reference(model, pruned, x, t)) < 1e-5  # what was verified is what runs


def test_fake_inputs_keep_the_graph_dense(toy_sites, caplog):
    with FakeTensorMode():
        fake = [torch.empty(2, 24, 32)]
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        assert not backend._real("error_budget", fake)
    assert "fake inputs" in caplog.text
    decisions = policy.plan(toy_sites, LynxConfig(min_rows=16, error_budget=0.5), output_error=None)
    assert not any(d.sparse for d in decisions)
    assert any("output error not measured" in d.reason for d in decisions)


@pytest.mark.parametrize("cost_model", [True, False])
def test_the_knapsack_values_measured_time_only_with_the_cost_model(toy_sites, monkeypatch, cost_model):
    """With ``cost_model=False`` nothing is timed, so the knapsack values the FLOPs 2:4 skips (on a small model,
    measured time would call every GEMM a loss and keep all of them dense, whatever the budget)."""
    seen = []

    def time_saved(sites, decisions, measured, compensate=False):
        seen.append(measured)
        return {i: 1.0 for i, d in enumerate(decisions) if d.sparse}, "GFLOP"

    monkeypatch.setattr(policy.profitability, "time_saved", time_saved)
    monkeypatch.setattr(policy.profitability, "with_alg", lambda site, d: d)
    monkeypatch.setattr(policy.profitability, "apply_cost_model", lambda sites, decisions, *a: decisions)
    config = LynxConfig(min_rows=16, error_budget=0.5, cost_model=cost_model)
    policy.plan(toy_sites, config, output_error=lambda names: 0.0)
    assert seen == [cost_model]


def test_bad_budget_is_refused():
    with pytest.raises(TypeError, match="error_budget"):
        LynxConfig(error_budget=-0.1)


@pytest.mark.parametrize("name, budget", [("dit", 0.15), pytest.param("flux", 0.15, marks=pytest.mark.slow)])
def test_budget_is_respected_on_a_zoo_model(name, budget):
    built = zoo.build(name, batch=2)
    dense = built()
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    with torch.no_grad():
        out = zoo.sample(
            torch.compile(built.model, backend="lynx", options={"min_rows": 32, "error_budget": budget})(
                **built.example_kwargs
            )
        )
    layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
    assert rel(out, dense) <= budget * 1.001
    assert any(layer.sparse for layer in layers)
    assert any("error_budget" in layer.reason and not layer.sparse for layer in layers)
