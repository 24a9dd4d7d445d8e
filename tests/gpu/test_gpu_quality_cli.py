"""``lynx-compile quality`` on a GPU: the trained yardstick, sampled dense and on the cuSPARSELt path."""

import json
from pathlib import Path

import pytest

from lynx_compile.cli import main

pytestmark = pytest.mark.gpu


def test_quality_cli_on_the_trained_yardstick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The one command a user runs: the fast path must run (not the reference path) and grade its images."""
    argv = ["quality", "--pipeline", "yardstick", "--num-prompts", "4", "--steps", "4", "--device", "cuda"]
    argv += ["--config", "defaults={}", "--no-cost-model", "--reference-images", "64", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "| defaults |" in capsys.readouterr().out
    data = json.loads((tmp_path / "quality.json").read_text())
    rows = {row["config"]: row for row in data["rows"]}
    assert list(rows) == ["dense", "defaults"]
    assert rows["defaults"]["path"] == "cusparselt" and rows["defaults"]["sparse_gemms"] > 0
    assert 0 < rows["defaults"]["ssim"] < 1 and rows["dense"]["adherence"] > 0.5
    assert data["meta"]["device"].startswith("NVIDIA") and (tmp_path / "quality.png").is_file()
