"""``quality.compare`` on a tiny random yardstick: the rows, determinism, the files, and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from PIL import Image, ImageFont

from lynx_compile import quality, yardstick
from lynx_compile.quality import Variant, compare, grid, pipelines, transformer_inputs

STEPS = 2
CONFIGS = {"defaults": {}, "nothing_sparse": {"min_rows": 10**9}}
META = {"device", "torch", "triton", "commit", "date", "model", "captions", "steps", "guidance", "path"}
ROW = {
    "config",
    "options",
    "psnr_db",
    "nonfinite",
    "ssim",
    "adherence",
    "fid_like",
    "mean_rel_err",
    "sparse_gemms",
    "seconds",
    "path",
}


def tiny_pipeline() -> yardstick.YardstickPipeline:
    return yardstick.build_pipeline(seed=0, config_overrides=yardstick.TINY_OVERRIDES)


@pytest.fixture(scope="module")
def scenes() -> list[yardstick.Scene]:
    return yardstick.sample_scenes(2, torch.Generator().manual_seed(1))


def run(scenes: list[yardstick.Scene], out: Path | None = None, configs: dict = CONFIGS) -> quality.QualityResult:
    evaluator = yardstick.Evaluator()  # random weights: the numbers mean nothing, the plumbing is what is tested
    reference = pipelines.reference_images(4)
    return compare(
        tiny_pipeline(),
        [yardstick.caption(s) for s in scenes],
        configs,
        steps=STEPS,
        batch_size=2,
        evaluator=evaluator,
        scenes=scenes,
        reference_images=reference,
        out=out,
        progress=False,
    )


@pytest.fixture(scope="module")
def result(scenes: list[yardstick.Scene], tmp_path_factory: pytest.TempPathFactory) -> quality.QualityResult:
    torch.manual_seed(0)  # the evaluator's random weights
    return run(scenes, tmp_path_factory.mktemp("quality"))


def test_rows(result: quality.QualityResult) -> None:
    rows = {row["config"]: row for row in result.rows}
    assert list(rows) == ["dense", *CONFIGS]
    dense, defaults, nothing = rows["dense"], rows["defaults"], rows["nothing_sparse"]
    assert dense["psnr_db"] is None and dense["ssim"] == 1.0 and dense["mean_rel_err"] is None
    assert dense["sparse_gemms"] == 0 and dense["options"] is None
    assert defaults["sparse_gemms"] > 0 and defaults["path"] == "reference" and defaults["options"] == {}
    assert defaults["mean_rel_err"] > 0
    assert 0 < defaults["ssim"] < 1 and defaults["psnr_db"] > 0
    assert nothing["sparse_gemms"] == 0 and nothing["mean_rel_err"] == 0.0 and nothing["path"] == "dense"
    for row in rows.values():
        assert 0 <= row["adherence"] <= 1 and row["fid_like"] >= 0
    assert result.meta["path"] == "reference" and result.meta["captions"] == 2 and result.meta["steps"] == STEPS


def test_nothing_sparse_gives_the_dense_images(result: quality.QualityResult) -> None:
    """Compiled with no GEMM sparse, the model is dense up to Inductor's float32 rounding."""
    torch.testing.assert_close(result.images["nothing_sparse"], result.images["dense"], atol=1e-5, rtol=0)
    assert not torch.allclose(result.images["defaults"], result.images["dense"], atol=1e-3, rtol=0)


def test_a_reference_run_is_deterministic(result: quality.QualityResult, scenes: list[yardstick.Scene]) -> None:
    torch.manual_seed(0)
    again = run(scenes, configs={"defaults": CONFIGS["defaults"]})
    for a, b in zip(result.rows, again.rows):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert [row["config"] for row in again.rows] == ["dense", "defaults"]
    for name, images in again.images.items():
        assert torch.equal(images, result.images[name])


def test_files(result: quality.QualityResult) -> None:
    json_path, md_path, png_path = result.files
    data = json.loads(json_path.read_text())
    assert set(data) == {"meta", "rows"} and set(data["meta"]) == META
    assert [set(row) for row in data["rows"]] == [ROW] * 3
    assert data["rows"][0]["psnr_db"] is None  # inf is not JSON
    assert data["meta"]["guidance"] == tiny_pipeline().default_guidance_scale
    md = md_path.read_text()
    assert "| nothing_sparse |" in md and "reference path ran" in md
    cell_h, cell_w = grid.cell_size(64, 64)
    assert (cell_h, cell_w) == (128, 128)
    with Image.open(png_path) as image:
        assert image.size == (
            grid.LABEL + 3 * (cell_w + grid.PAD) + grid.PAD,
            grid.HEADER + 2 * (cell_h + grid.PAD) + grid.PAD,
        )


def test_a_transform_variant_runs_what_it_returns() -> None:
    """A Variant without options runs the transformed module eagerly: a copy gives the dense images exactly."""
    result = compare(
        tiny_pipeline(),
        ["a small red circle top left, plain background"],
        {"copy": Variant(transform=copy.deepcopy)},
        steps=1,
        progress=False,
    )
    assert torch.equal(result.images["copy"], result.images["dense"])
    assert result.rows[1]["psnr_db"] is None and result.rows[1]["ssim"] == 1.0 and result.rows[1]["options"] is None


def test_a_run_cut_short_keeps_the_rows_it_measured(tmp_path: Path) -> None:
    """The files are written after each configuration: a configuration that fails leaves the earlier rows."""

    def broken(module: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("out of time")

    with pytest.raises(RuntimeError, match="out of time"):
        compare(
            tiny_pipeline(),
            ["a small red circle top left, plain background"],
            {"copy": Variant(transform=copy.deepcopy), "broken": Variant(transform=broken)},
            steps=1,
            out=tmp_path,
            progress=False,
        )
    rows = json.loads((tmp_path / "quality.json").read_text())["rows"]
    assert [row["config"] for row in rows] == ["dense", "copy"] and rows[1]["ssim"] == 1.0
    assert (tmp_path / "quality.png").exists() and "| copy |" in (tmp_path / "quality.md").read_text()


def test_captured_rows_are_spread_over_the_guidance_batch() -> None:
    """Two prompts with classifier-free guidance are 4 transformer rows, [uncond; cond]: 2 rows are 0 and 3."""
    pipe, prompts = tiny_pipeline(), ["a small red circle top left, plain background"] * 2
    full = transformer_inputs(pipe, prompts, at_steps=[0, 1], steps=2)
    two = transformer_inputs(pipe, prompts, at_steps=[1], steps=2, rows=2)
    assert sorted(full) == [0, 1] and list(two) == [1]
    for key, value in full[1][1].items():
        if isinstance(value, torch.Tensor) and value.shape[0] == 4:
            assert torch.equal(two[1][1][key], value[[0, 3]])
    assert not torch.equal(full[0][1]["timestep"], full[1][1]["timestep"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"configs": {"bad": {"not_an_option": 1}}}, ValueError, "unknown lynx option"),
        ({"configs": {"bad": {"min_rows": "many"}}}, TypeError, "min_rows"),
        ({"configs": {"dense": {"min_rows": 1}}}, ValueError, "takes no options"),
        ({"seeds": [0, 1, 2]}, ValueError, "3 seeds for 1 prompts"),
        ({"prompts": []}, ValueError, "at least one prompt"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"scenes": []}, ValueError, "0 scenes for 1 prompts"),
    ],
)
def test_bad_input_fails_before_any_sampling(kwargs: dict, error: type, match: str) -> None:
    pipe = tiny_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(error, match=match):
        compare(
            pipe,
            kwargs.pop("prompts", ["a small red circle top left, plain background"]),
            steps=1,
            progress=False,
            **kwargs,
        )
    assert not calls


def test_a_pipeline_without_a_transformer_is_an_error() -> None:
    pipe = tiny_pipeline()
    pipe.transformer = None
    with pytest.raises(TypeError, match="transformer"):
        compare(pipe, ["a small red circle top left, plain background"], progress=False)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=60), st.integers(20, 200))
def test_a_configuration_name_wraps_within_its_column(name: str, width: int) -> None:
    """Long names (``budget_hi_lowrank32_dense_steps_25pct``) ran into the next column: every line now fits
    (a single character wider than the column aside), and the lines put together give the name back."""
    font = ImageFont.load_default()
    lines = grid.name_lines(name, width, font)
    assert "".join(lines) == name
    assert all(font.getlength(line) <= width or len(line) == 1 for line in lines)


def test_the_header_grows_with_wrapped_names(tmp_path: Path) -> None:
    images = {name: torch.rand(1, 3, 64, 64) for name in ("dense", "budget_hi_lowrank32_dense_steps_25pct")}
    grid.write_grid(tmp_path / "g.png", images, ["a prompt"])
    with Image.open(tmp_path / "g.png") as image:
        assert image.size[1] == grid.HEADER + grid.LINE + grid.cell_size(64, 64)[0] + 2 * grid.PAD


def test_captured_inputs_keep_broadcast_dims_so_a_warm_up_call_guards_like_the_pipeline_s() -> None:
    """A pipeline passes the timestep as ``t.expand(batch)`` (stride 0). A contiguous copy fails Dynamo's stride
    guard: the error budget's warm-up call compiled one graph and sampling a second, measured again on the
    sampling's first call, and the benchmark counted the sparse GEMMs of both."""
    from lynx_compile.quality.compare import _rows

    t = torch.tensor([0.5]).expand(4)
    h = torch.randn(4, 3)
    args, kwargs = _rows((h,), {"timestep": t, "scale": torch.tensor(2.0).expand(4, 3), "n": 1}, None)
    assert kwargs["timestep"].stride() == (0,) and torch.equal(kwargs["timestep"], t)
    assert kwargs["scale"].stride() == (0, 0) and torch.equal(kwargs["scale"], torch.full((4, 3), 2.0))
    assert args[0].stride() == h.stride() and torch.equal(args[0], h) and args[0].data_ptr() != h.data_ptr()
    assert kwargs["timestep"].data_ptr() != t.data_ptr() and kwargs["n"] == 1
