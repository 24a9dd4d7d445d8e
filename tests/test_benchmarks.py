"""The e2e benchmark's timing protocol, with the GPU timing faked: whatever going second does to a
model's time must hit both compiled models alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import e2e


@settings(max_examples=30, deadline=None)
@given(runs=st.integers(1, 16), second_penalty=st.floats(0.01, 1.0), loop=st.integers(1, 10))
def test_going_second_costs_both_models_alike(runs: int, second_penalty: float, loop: int) -> None:
    run = {"first": None, "count": 0}

    def make_inputs() -> dict:
        run["first"] = None
        run["count"] += 1
        return {}

    def fake_call_ms(fn, kwargs, calls: int = 1) -> float:
        run["first"] = run["first"] or fn
        return 1.0 + (second_penalty if fn is not run["first"] else 0.0)

    def a() -> None: ...

    def b() -> None: ...

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e2e, "_call_ms", fake_call_ms)
        times = e2e._time_interleaved({"a": a, "b": b}, make_inputs, runs, loop=loop)
    assert run["count"] >= runs + 2  # two warm-up rounds, then at least ``runs``
    assert times["a"] == times["b"] and times["a_loop"] == times["b_loop"]
    assert times["a"] == pytest.approx(1.0 + second_penalty / 2)  # the median of as many firsts as seconds
