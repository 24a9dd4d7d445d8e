"""Option ``dense_steps``: the first denoising steps run dense, the rest sparse, by a process-global step read
at call time; the dense and the sparse graph are compiled once each, never again per step."""

import logging

import pytest
import torch
from helpers import rel
from test_pass import OPTS, Toy, toy_inputs, toy_reference

import lynx_compile
from lynx_compile import backend, steps, zoo
from lynx_compile.config import LynxConfig
from lynx_compile.yardstick import TINY_OVERRIDES, build_pipeline

SPARSE = {"qkv", "w_out", "w_t", "b_mm", "ff.0", "ff.2"}  # what Toy's compile prunes with OPTS


@pytest.fixture
def compiles(monkeypatch):
    """How many graphs Inductor compiled through the lynx backend (each call of compile_fx)."""
    count = [0]
    inner = backend.compile_fx

    def counting(*args, **kwargs):
        count[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(backend, "compile_fx", counting)
    yield count
    steps.set_step(None)


@pytest.fixture
def graphs_run(monkeypatch):
    """Per compiled call: True where the dense graph ran, False for the sparse one."""
    seen = []
    inner = steps.runs_dense

    def recording(dense_steps):
        now = inner(dense_steps)
        seen.append(now)
        return now

    monkeypatch.setattr(steps, "runs_dense", recording)
    return seen


@pytest.mark.parametrize("dense_steps, dense_count", [(2, 2), (0.25, 2), (0.3, 2), (0.42, 3), (7, 6)])
def test_switches_at_the_right_step_without_recompiling(compiles, dense_steps, dense_count):
    torch._dynamo.reset()
    model = Toy().eval()
    x, t = toy_inputs()
    dense, sparse = toy_reference(model, set(), x, t), toy_reference(model, SPARSE, x, t)
    compiled = torch.compile(model, backend="lynx", options={**OPTS, "dense_steps": dense_steps})
    with torch.no_grad():
        for step in range(6):
            steps.set_step(step, 6)
            out = compiled(x, t)
            assert rel(out, dense if step < dense_count else sparse) < 1e-5, step
    assert compiles[0] == 2  # the dense graph and the sparse one, once each
    report = lynx_compile.reports()[-1]
    assert f"dense_steps={dense_steps:g}" in report.notes[0]
    assert {layer.name for layer in report.layers if layer.sparse} == SPARSE - {"b_mm"} | {"w_buf"}


def test_no_step_set_runs_sparse_and_warns_once(compiles, caplog):
    torch._dynamo.reset()
    steps.set_step(None)
    backend._WARNED.clear()
    model = Toy().eval()
    x, t = toy_inputs()
    compiled = torch.compile(model, backend="lynx", options={**OPTS, "dense_steps": 3})
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="lynx_compile"):
        outs = [compiled(x, t) for _ in range(3)]
    assert all(rel(out, toy_reference(model, SPARSE, x, t)) < 1e-5 for out in outs)
    assert caplog.text.count("no denoising step") == 1
    assert any("ran with no denoising step set" in note for note in lynx_compile.reports()[-1].notes)


def test_a_fraction_needs_the_number_of_steps():
    steps.set_step(1)
    try:
        assert steps.runs_dense(2) is True and steps.runs_dense(0.5) is None
    finally:
        steps.set_step(None)
    assert steps.runs_dense(2) is None


@pytest.mark.parametrize("bad", [-1, 1.0, 0.0, 1.5, True, "3"])
def test_bad_dense_steps_are_refused(bad):
    with pytest.raises(TypeError, match="dense_steps"):
        LynxConfig(dense_steps=bad)


def test_bad_steps_are_refused():
    with pytest.raises(ValueError, match="step"):
        steps.set_step(-1)
    with pytest.raises(ValueError, match="total"):
        steps.set_step(0, 0)
    with pytest.raises(TypeError, match="scheduler"):
        lynx_compile.follow_steps(object())


def test_zoo_model_switches_without_recompiling(compiles):
    torch._dynamo.reset()
    built = zoo.build("dit", batch=2)
    dense = built()
    compiled = torch.compile(built.model, backend="lynx", options={"min_rows": 32, "dense_steps": 1})
    with torch.no_grad():
        outs = []
        for step in range(3):
            steps.set_step(step, 3)
            outs.append(zoo.sample(compiled(**built.example_kwargs)))
    assert rel(outs[0], dense) < 1e-5 and rel(outs[1], dense) > 5e-2 and rel(outs[2], outs[1]) < 1e-6
    assert compiles[0] == 2


@pytest.mark.slow  # 30 s: the yardstick's compile
def test_follow_steps_reads_the_pipelines_scheduler(compiles, graphs_run):
    """The tiny yardstick pipeline (SD3-MMDiT, classifier-free guidance batched: one transformer call per step)."""
    torch._dynamo.reset()
    pipe = build_pipeline(seed=0, config_overrides=TINY_OVERRIDES)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer = torch.compile(pipe.transformer, backend="lynx", options={"min_rows": 16, "dense_steps": 0.5})
    with torch.no_grad():
        with lynx_compile.follow_steps(pipe):
            pipe(["a small red circle top left, plain background"], num_inference_steps=4, output_type="pt")
            pipe(["a small red circle top left, plain background"], num_inference_steps=6, output_type="pt")
        assert steps.current() == (None, None)  # the block ended
    assert graphs_run == [True] * 2 + [False] * 2 + [True] * 3 + [False] * 3
    assert compiles[0] == 2
    assert any(layer.sparse for layer in lynx_compile.reports()[-1].layers)
