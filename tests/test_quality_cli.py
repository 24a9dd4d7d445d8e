"""``lynx-compile quality`` end to end on tiny pipelines: a saved random yardstick, and the zoo's FLUX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lynx_compile import yardstick
from lynx_compile.cli import main


def test_quality_on_a_saved_yardstick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "tiny"
    yardstick.save_pipeline(yardstick.build_pipeline(seed=0, config_overrides=yardstick.TINY_OVERRIDES), saved)
    out = tmp_path / "out"
    assert (
        main(
            [
                "quality",
                "--pipeline",
                str(saved),
                "--num-prompts",
                "2",
                "--steps",
                "2",
                "--config",
                "defaults={}",
                "--no-cost-model",
                "--reference-images",
                "16",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "reference path" in printed and "| defaults |" in printed and str(out / "quality.json") in printed
    data = json.loads((out / "quality.json").read_text())
    rows = {row["config"]: row for row in data["rows"]}
    assert list(rows) == ["dense", "defaults"]
    assert rows["defaults"]["options"] == {"cost_model": False} and rows["defaults"]["sparse_gemms"] > 0
    assert data["meta"]["captions"] == 2 and data["meta"]["model"] == f"yardstick {saved}"
    assert (out / "quality.png").is_file() and (out / "quality.md").is_file()


@pytest.mark.slow  # ~20 s: compiling FLUX, even tiny, on a CPU
def test_quality_on_the_zoo_flux(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "quality",
                "--pipeline",
                "zoo:flux",
                "--num-prompts",
                "1",
                "--steps",
                "2",
                "--config",
                'defaults={"min_rows": 16}',
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "quality.json").read_text())
    assert [row["config"] for row in data["rows"]] == ["dense", "defaults"]
    assert data["rows"][1]["sparse_gemms"] > 0 and data["rows"][1]["psnr_db"] > 0
    assert "zoo:flux" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--config", "naive"], "NAME=JSON"),
        (["--config", "naive=[1]"], "NAME=JSON"),
        (["--config", "naive={bad"], "not JSON"),
        (["--pipeline", "/nonexistent/dir"], "not 'yardstick'"),
    ],
)
def test_bad_arguments(argv: list[str], match: str) -> None:
    with pytest.raises((SystemExit, FileNotFoundError), match=match):
        main(["quality", *argv, "--no-progress"])


def test_unknown_lynx_options_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown lynx option"):
        main(["quality", "--pipeline", str(tmp_path / "never_read"), "--config", 'x={"nope": 1}'])
