"""Option ``max_layer_error``: GEMMs whose own pruning error, measured at compile time, is over the budget
stay dense."""

import logging

import pytest
import torch
from helpers import gemm_sites, rel
from hypothesis import given
from hypothesis import strategies as st
from test_pass import OPTS, Toy, toy_inputs, toy_reference
from torch._subclasses.fake_tensor import FakeTensorMode

import lynx_compile
from lynx_compile import backend
from lynx_compile.config import LynxConfig
from lynx_compile.passes import policy
from lynx_compile.passes.errors import PruningError


@pytest.fixture(scope="module")
def toy_sites():
    torch.manual_seed(0)
    return gemm_sites(Toy().eval(), *toy_inputs())


def test_layers_over_the_budget_stay_dense_and_report_their_error():
    model = Toy().eval()
    x, t = toy_inputs()
    report = lynx_compile.inspect(model, x, t, options=OPTS)
    errors = {layer.name: layer.rel_err for layer in report.layers if layer.sparse}
    budget = sorted(errors.values())[len(errors) // 2]
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="lynx", options={**OPTS, "max_layer_error": budget})(x, t)
    layers = {layer.name: layer for layer in lynx_compile.reports()[-1].layers}
    kept = {name for name, error in errors.items() if error <= budget}
    assert {name for name, layer in layers.items() if layer.sparse} == kept and 0 < len(kept) < len(errors)
    # the compile-time measurement is inspect's, on the same inputs
    assert all(layers[name].rel_err == pytest.approx(error, rel=1e-6) for name, error in errors.items())
    assert all(f"> max_layer_error={budget:g}" in layers[name].reason for name in errors.keys() - kept)
    pruned = {"b_mm" if name == "w_buf" else name for name in kept}  # Toy prunes by its own names
    assert rel(out, toy_reference(model, pruned, x, t)) < 1e-5


@given(budget=st.floats(0, 1), measured=st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=9, max_size=9))
def test_a_gemm_goes_sparse_only_if_measured_within_budget(toy_sites, budget, measured):
    errors = {site.name: PruningError(err_sq=e**2, out_sq=1.0) for site, (ok, e) in zip(toy_sites, measured) if ok}
    config = LynxConfig(min_rows=16, max_layer_error=budget)
    free = policy.plan(toy_sites, LynxConfig(min_rows=16))
    for site, before, after in zip(toy_sites, free, policy.plan(toy_sites, config, errors=errors)):
        error = errors.get(site.name)
        assert after.sparse == (before.sparse and error is not None and error.rel_err <= budget)
        if before.sparse and error is None:
            assert "pruning error not measured" in after.reason


def test_fake_inputs_cannot_be_measured_and_keep_the_graph_dense(toy_sites, caplog):
    with FakeTensorMode():
        fake = [torch.empty(2, 24, 32)]
    config = LynxConfig(min_rows=16, max_layer_error=0.5)
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        assert backend.pruning_errors(torch.fx.GraphModule({}, torch.fx.Graph()), [], config, fake) is None
    assert "fake inputs" in caplog.text
    assert not any(d.sparse for d in policy.plan(toy_sites, config, errors=None))
