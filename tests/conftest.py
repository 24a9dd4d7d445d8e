"""Shared test setup: Triton's interpreter on CPU machines, the ``gpu`` marker, hypothesis profiles, a seed per test."""

import os

import torch

if not torch.cuda.is_available():  # must precede any import of a Triton kernel module
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

# "ci" (the default) draws the same examples every run, so that CI's verdict on a tree never depends
# on the draw; "explore" draws new ones each run, more of them (HYPOTHESIS_PROFILE=explore).
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True, suppress_health_check=_SUPPRESSED)
settings.register_profile("explore", deadline=None, max_examples=200, suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test draws the same random tensors whatever ran before it: a CI run and a local run of
    the same tree once drew different weights for one model, and a margin held in one but not the other."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from lynx_compile.codegen.cusparselt import sparse_tensor_cores_available

    ok, why = sparse_tensor_cores_available()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs sparse tensor cores: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
