"""The quality benchmark and the activation-energy study, run end to end on tiny random yardsticks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import activation_energy
from benchmarks.quality import __main__ as quality_benchmark
from lynx_compile import yardstick


def tiny(seed: int = 0) -> yardstick.YardstickPipeline:
    return yardstick.build_pipeline(seed=seed, config_overrides=yardstick.TINY_OVERRIDES)


def test_gaussian_pruned_energy_matches_sampling() -> None:
    x = torch.randn(2**20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).square()
    sampled = (x.sort(dim=1).values[:, :2].sum() / x.sum()).item()
    assert activation_energy.gaussian_pruned_energy() == pytest.approx(sampled, abs=1e-3)
    assert activation_energy.gaussian_pruned_energy() == pytest.approx(0.1324, abs=1e-4)


def test_activation_energy_on_two_random_models() -> None:
    captions = [yardstick.caption(s) for s in yardstick.sample_scenes(2, torch.Generator().manual_seed(0))]
    data = activation_energy.run({"trained": tiny(0), "random": tiny(1)}, captions, steps=4)
    assert data["meta"]["sampled_steps"] == [0, 1, 2, 3]
    kinds = {row["kind"] for row in data["rows"]}
    assert {"q/k/v", "attention out", "MLP up", "MLP down", "adaLN"} <= kinds
    for row in data["rows"]:
        for model in ("trained", "random"):
            assert set(row[model]) == {0, 1, 2, 3} and all(0 <= e <= 0.5 for e in row[model].values())
    # random weights, random inputs: about what an unstructured activation loses
    assert data["summary"]["random"]["q/k/v"] == pytest.approx(data["gaussian_pruned_E"], abs=0.05)
    md = activation_energy.markdown(data)
    assert "| q/k/v |" in md and "transformer_blocks.0.attn.to_q" in md
    json.dumps(data)


def test_the_quality_benchmark_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evaluator = yardstick.Evaluator()  # random weights: the plumbing is tested, not the numbers
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "load_pipeline", lambda **_: tiny())
        mp.setattr(yardstick, "load_evaluator", lambda **_: evaluator)
        mp.setattr(quality_benchmark, "REFERENCES", 8)
        quality_benchmark.main(["--captions", "2", "--steps", "2", "--configs", "defaults", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "quality.json").read_text())
    assert [row["config"] for row in data["rows"]] == ["dense", "defaults"]
    assert data["rows"][1]["options"] == {"cost_model": False} and data["rows"][1]["adherence"] is not None
    assert data["meta"]["captions"] == 2 and data["meta"]["model"] == "yardstick (trained)"
    assert "wrote" in capsys.readouterr().out


def test_a_distilled_configuration_gets_its_own_calibration(tmp_path: Path) -> None:
    evaluator = yardstick.Evaluator()
    args = ["--captions", "2", "--steps", "2", "--calibration-captions", "2", "--distill-steps", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "load_pipeline", lambda **_: tiny())
        mp.setattr(yardstick, "load_evaluator", lambda **_: evaluator)
        mp.setattr(quality_benchmark, "REFERENCES", 8)
        quality_benchmark.main([*args, "--configs", "lowrank16_distill", "--out", str(tmp_path)])
    options = json.loads((tmp_path / "quality.json").read_text())["rows"][1]["options"]
    assert "distill" not in options  # a benchmark key, not a lynx option
    assert "rank 16 distilled (2 steps)" in options["calibration"]
