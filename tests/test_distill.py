"""Distillation of the low-rank factors against the dense model's outputs: it lowers the end-to-end error, keeps
the closed form with no step, round-trips through the calibration file, is what the compiled model computes, and
refuses what it cannot do."""

import json
import logging

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import lynx_compile
from lynx_compile import Calibration, CalibrationMismatch, cli, yardstick, zoo
from lynx_compile.calibration import FORMAT

OPTIONS = {"min_rows": 16}


def mlp(seed: int = 0, k: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)).eval()


def activations(seed: int = 0, n: int = 4, k: int = 32) -> list[torch.Tensor]:
    """DiT-like rows: a few channels carry most of the energy."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(k)
    scale[::5] = 6.0
    return [torch.randn(64, k, generator=g) * scale for _ in range(n)]


@pytest.fixture(scope="module")
def calibrated() -> tuple[nn.Sequential, list[torch.Tensor], Calibration]:
    model, xs = mlp(), activations()
    return model, xs, lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), rank=st.integers(1, 8))
def test_distillation_lowers_the_end_to_end_error(seed: int, rank: int) -> None:
    model, xs = mlp(seed), activations(seed)
    calibration = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    distilled = lynx_compile.distill(model, xs, calibration, rank=rank, steps=30, lr=3e-3, seed=seed, progress=False)
    record = distilled.distilled[rank]
    assert record["loss_after"] < record["loss_before"]
    assert record["steps"] == 30 and record["lr"] == 3e-3
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert not any(m._forward_hooks for m in model.modules())  # removed


def test_zero_steps_keep_the_closed_form_exactly(calibrated) -> None:
    model, xs, calibration = calibrated
    distilled = lynx_compile.distill(model, xs, calibration, rank=4, steps=0, progress=False)
    assert distilled.distilled[4]["loss_before"] == distilled.distilled[4]["loss_after"]
    for name in calibration.names:
        for got, want in zip(distilled.factors(name, 4), calibration.closed_form(name, 4), strict=True):
            assert torch.equal(got, want)


def test_refined_factors_replace_their_rank_only_and_round_trip(calibrated, tmp_path) -> None:
    model, xs, calibration = calibrated
    distilled = lynx_compile.distill(model, xs, calibration, rank=4, steps=5, lr=1e-2, progress=False)
    assert calibration.refined == {} and calibration.distilled == {}  # the input is left as it was
    for name in calibration.names:
        assert not torch.equal(distilled.factors(name, 4)[0], calibration.factors(name, 4)[0])
        assert torch.equal(distilled.factors(name, 8)[0], calibration.factors(name, 8)[0])  # other ranks: closed form
    assert "rank 4 distilled (5 steps)" in repr(distilled)

    path = tmp_path / "distilled.safetensors"
    meta = json.loads(distilled.save(path).read_text())
    assert meta["format"] == 2
    assert meta["distilled"] == [{"rank": 4, **distilled.distilled[4]}]
    assert set(meta["distilled"][0]) == {"rank", "steps", "lr", "loss_before", "loss_after"}
    loaded = Calibration.load(path)
    assert loaded.distilled == distilled.distilled
    for name in calibration.names:
        for got, want in zip(loaded.factors(name, 4), distilled.factors(name, 4), strict=True):
            assert torch.equal(got, want)
        assert torch.equal(loaded.factors(name, 8)[0], calibration.factors(name, 8)[0])

    again = lynx_compile.distill(model, xs, loaded, rank=2, steps=1, progress=False)  # a second rank joins the first
    assert sorted(again.distilled) == [2, 4] and torch.equal(again.factors("0", 4)[0], loaded.factors("0", 4)[0])
    assert [r["rank"] for r in json.loads(again.save(path).read_text())["distilled"]] == [2, 4]


def test_a_plain_calibration_keeps_format_1_and_a_newer_file_is_refused(calibrated, tmp_path) -> None:
    _, _, calibration = calibrated
    path = tmp_path / "plain.safetensors"
    sidecar = calibration.save(path)
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == 1 and "distilled" not in meta  # readable by a lynx_compile that reads format 1 only
    sidecar.write_text(json.dumps({**meta, "format": FORMAT + 1}))
    with pytest.raises(CalibrationMismatch, match=rf"format {FORMAT + 1}.*newer lynx_compile"):
        Calibration.load(path)


def test_the_compiled_model_computes_what_was_distilled(calibrated, tmp_path) -> None:
    """The distillation's layers are the compiled layers: the compiled model's error is the recorded loss_after."""
    model, xs, calibration = calibrated
    distilled = lynx_compile.distill(model, xs, calibration, rank=4, steps=10, lr=1e-2, progress=False)
    path = tmp_path / "distilled.safetensors"
    distilled.save(path)
    torch.compiler.reset()
    before = len(lynx_compile.reports())
    compiled = torch.compile(model, backend="lynx", options={**OPTIONS, "low_rank": 4, "calibration": str(path)})
    with torch.no_grad():
        error = sum((compiled(x) - model(x)).square().sum() for x in xs) / sum(model(x).square().sum() for x in xs)
    assert error.item() == pytest.approx(distilled.distilled[4]["loss_after"], rel=1e-4)
    notes = lynx_compile.reports()[before].notes
    assert any("3 of them distilled end to end (10 steps)" in note for note in notes), notes


def test_a_pipeline_distils_every_linear_gemm() -> None:
    """The real sampling loop is recorded; every calibrated GEMM of the yardstick is an nn.Linear and is refined."""
    pipe = yardstick.build_pipeline(seed=0, config_overrides=yardstick.TINY_OVERRIDES)
    captions = [yardstick.caption(s) for s in yardstick.sample_scenes(2, torch.Generator().manual_seed(1))]
    calibration = lynx_compile.calibrate(pipe, captions, options=OPTIONS, steps=2, progress=False)
    trainable = [p.requires_grad for p in pipe.transformer.parameters()]
    distilled = lynx_compile.distill(
        pipe, captions, calibration, rank=4, steps=2, lr=1e-4, num_inference_steps=2, progress=False
    )
    assert {name for name, rank in distilled.refined if rank == 4} == set(calibration.names)
    assert distilled.distilled[4]["loss_before"] > 0
    assert [p.requires_grad for p in pipe.transformer.parameters()] == trainable


def test_a_zoo_model_is_distilled_end_to_end() -> None:
    built = zoo.build("sd3", size="tiny")
    calibration = lynx_compile.calibrate(built.model, [built.example_kwargs], options=OPTIONS, progress=False)
    distilled = lynx_compile.distill(
        built.model, [built.example_kwargs], calibration, rank=4, steps=10, lr=1e-3, progress=False
    )
    # from the cross-validated closed form (0.016 here) ten steps take off about a quarter (0.012)
    assert distilled.distilled[4]["loss_after"] < 0.9 * distilled.distilled[4]["loss_before"]


class WithParameterGemm(nn.Module):
    """An nn.Linear and a matmul against a parameter: only the first can be distilled."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32)
        self.w = nn.Parameter(torch.randn(32, 32) / 32**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x)) @ self.w


def test_a_gemm_that_is_no_linear_keeps_its_closed_form(caplog) -> None:
    model, xs = WithParameterGemm(), activations()
    calibration = lynx_compile.calibrate(model, xs, options=OPTIONS, progress=False)
    assert sorted(calibration.names) == ["proj", "w"]
    with caplog.at_level(logging.WARNING, logger="lynx_compile"):
        distilled = lynx_compile.distill(model, xs, calibration, rank=2, steps=3, lr=1e-2, progress=False)
    assert "1 GEMMs keep their closed-form factors" in caplog.text and "'w'" in caplog.text
    assert set(distilled.refined) == {("proj", 2)}
    assert torch.equal(distilled.factors("w", 2)[0], calibration.factors("w", 2)[0])


def test_bad_arguments_are_errors(calibrated) -> None:
    model, xs, calibration = calibrated
    for bad, match in (
        ({"rank": 0}, "rank must be a positive int"),
        ({"steps": -1}, "steps must be a non-negative int"),
        ({"lr": 0.0}, "lr must be a positive number"),
    ):
        with pytest.raises(ValueError, match=match):
            lynx_compile.distill(model, xs, calibration, **{"rank": 2, "steps": 1, **bad}, progress=False)
    with pytest.raises(ValueError, match="no inputs"):
        lynx_compile.distill(model, [], calibration, rank=2, steps=1, progress=False)
    with pytest.raises(CalibrationMismatch, match=r"0 is K x N = \(16, 64\) in the model, \(32, 64\)"):
        lynx_compile.distill(mlp(k=16), activations(k=16), calibration, rank=2, steps=1, progress=False)
    with pytest.raises(CalibrationMismatch, match=r"no module or parameter named \['0', '2', '4'\]"):
        lynx_compile.distill(WithParameterGemm(), xs, calibration, rank=2, steps=1, progress=False)
    with pytest.raises(TypeError, match=r"needs an nn\.Module or a diffusers pipeline"):
        lynx_compile.distill(lambda x: x, xs, calibration, rank=2, steps=1, progress=False)


def test_the_cli_calibrates_and_distils(tmp_path, capsys) -> None:
    out = tmp_path / "zoo.safetensors"
    common = ["calibrate", "--pipeline", "zoo:flux", "--num-prompts", "1", "--steps", "2", "-o", "min_rows=16"]
    assert cli.main([*common, "--rank", "4", "--distill-steps", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "distilled rank 4, 3 steps: relative output error" in printed and "'low_rank': 4" in printed
    calibration = Calibration.load(out)
    assert calibration.distilled[4]["steps"] == 3
    assert {name for name, _ in calibration.refined} == set(calibration.names)
    with pytest.raises(SystemExit, match="needs N >= 0 and a --rank"):
        cli.main([*common, "--distill-steps", "3", "--out", str(out)])
