"""The e2e benchmark: its timing protocol, with the GPU timing faked (whatever going second does to a
model's time must hit both compiled models alike), and its model-side variant; the rounding floor; the
linear benchmark's bound for a prune+compress pass of its own."""

from __future__ import annotations

import time
from argparse import Namespace
from subprocess import CompletedProcess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lynx_compile
from benchmarks import e2e, linear, rounding
from lynx_compile import zoo


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
        mp.setattr(e2e, "call_ms", fake_call_ms)
        times = e2e.time_interleaved({"a": a, "b": b}, make_inputs, runs, loop=loop)
    assert run["count"] >= runs + 2  # two warm-up rounds, then at least ``runs``
    assert times["a"] == times["b"] and times["a_loop"] == times["b_loop"]
    assert times["a"] == pytest.approx(1.0 + second_penalty / 2)  # the median of as many firsts as seconds


def test_single_calls_only_without_loop() -> None:
    """``loop=None`` (the eager baseline) times one call per model and run, nothing looped."""
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e2e, "call_ms", lambda fn, kwargs, calls_=1: calls.append(calls_) or 2.0)
        times = e2e.time_interleaved({"eager": lambda: None}, dict, runs=3, loop=None)
    assert times == {"eager": 2.0}
    assert calls == [1] * (4 + 2)  # runs made even, two warm-up rounds


def test_single_calls_are_timed_before_any_loop() -> None:
    """A call right after a 10-call loop runs slower on the GPU: no single call may follow a loop."""
    calls: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e2e, "call_ms", lambda fn, kwargs, n=1: calls.append(n) or 1.0)
        e2e.time_interleaved({"a": lambda: None, "b": lambda: None}, dict, runs=3, loop=10)
    assert calls == [1] * 2 * (4 + 2) + [10] * 2 * (4 + 2)


def test_qkv_variant_fuses_sd3_projections() -> None:
    """Variant "qkv": the model computes the same with one q/k/v GEMM per attention, and that GEMM is
    what lynx sees and sparsifies (the separate q/k/v projections are no longer called)."""
    built = zoo.build("sd3", size="tiny")
    with torch.no_grad():
        before = built.model(**built.example_kwargs).sample
        assert e2e.prepare(built.model, "qkv", built.example_kwargs) == {}
        after = built.model(**built.example_kwargs).sample
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    report = lynx_compile.inspect(built.model, **built.example_kwargs, options={"min_rows": 1})
    names = {layer.name: layer.sparse for layer in report.layers}
    assert names["transformer_blocks.0.attn.to_qkv"] and names["transformer_blocks.0.attn.to_added_qkv"]
    assert not any(name.endswith((".to_q", ".to_k", ".to_v")) for name in names)


def test_low_rank_variant_calibrates_on_the_case_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variant "lowrank16": the options carry a calibration of this model, so every sparse GEMM gets a
    rank-16 branch (what the benchmark times). min_rows=1: the tiny model's GEMMs have few rows."""
    monkeypatch.setitem(e2e.VARIANTS, "lowrank16", e2e.Variant({"low_rank": 16, "min_rows": 1}))
    built = zoo.build("flux", size="tiny")
    options = e2e.prepare(built.model, "lowrank16", built.example_kwargs)
    assert options["low_rank"] == 16 and isinstance(options["calibration"], lynx_compile.Calibration)
    report = lynx_compile.inspect(built.model, **built.example_kwargs, options=options)
    sparse = [layer for layer in report.layers if layer.sparse]
    assert sparse and all(layer.low_rank == 16 for layer in sparse)


def test_the_channel_order_variant_calibrates_on_the_case_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(e2e.VARIANTS, "permute", e2e.Variant({"permute_channels": True, "min_rows": 1}))
    built = zoo.build("flux", size="tiny")
    options = e2e.prepare(built.model, "permute", built.example_kwargs)
    report = lynx_compile.inspect(built.model, **built.example_kwargs, options=options)
    sparse = [layer for layer in report.layers if layer.sparse]
    assert sparse and all("channels permuted" in layer.reason for layer in sparse)


def test_the_refit_variant_calibrates_on_the_case_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(e2e.VARIANTS, "refit", e2e.Variant({"refit": True, "min_rows": 1}))
    built = zoo.build("flux", size="tiny")
    options = e2e.prepare(built.model, "refit", built.example_kwargs)
    assert options["calibration"].refit
    report = lynx_compile.inspect(built.model, **built.example_kwargs, options=options)
    assert any(layer.sparse for layer in report.layers)


@pytest.mark.parametrize("variant", sorted(e2e.VARIANTS))
def test_every_variant_is_valid_lynx_options(variant: str) -> None:
    options = dict(e2e.VARIANTS[variant].options)
    for needs_calibration in ("low_rank", "permute_channels", "refit"):  # prepare() makes it (their tests are above)
        options.pop(needs_calibration, None)
    lynx_compile.LynxConfig.from_options(options)  # raises on an unknown option or a bad value


@pytest.mark.parametrize(("seconds", "says"), [(0.3, "timed out after 0.2 s"), (0.0, "exit status 1")])
def test_a_case_without_a_row_says_whether_it_timed_out(
    monkeypatch: pytest.MonkeyPatch, seconds: float, says: str
) -> None:
    """A case past --case-timeout (faulthandler printed its stacks and ended it) reads as timed out; a case that
    failed sooner as the exit status it had."""

    def run(cmd, **kwargs):
        assert cmd[cmd.index("--case-timeout") + 1] == "0.2"  # the child gets the limit
        time.sleep(seconds)
        return CompletedProcess(cmd, 1)

    monkeypatch.setattr(e2e.subprocess, "run", run)
    with pytest.raises(RuntimeError, match=says):
        e2e._run_isolated("flux:1", Namespace(runs=2, max_autotune=False, case_timeout=0.2))


@pytest.mark.slow
def test_rounding_floor_grows_with_the_pruning_flips() -> None:
    row = rounding.measure("dit", torch.device("cpu"))
    assert row["dense_bf16_vs_fp32"] < 0.02 and row["compiled_bf16_vs_fp32"] < 0.02
    assert row["pruned_bf16_vs_fp32"] > 3 * row["dense_bf16_vs_fp32"]  # flipped decisions, compounded
    assert 0 < row["flips_first"] < row["flips_max"] < 0.5
    assert len(row["flips"]) == row["gemms_pruned"] > 0


def test_floor_bound_caps_what_a_separate_prune_pass_gives() -> None:
    """The bound charges the sparse GEMM plus the prune at its floor: it sits between the GEMM alone and
    the measured prune + GEMM, and its geomean row is the geomean of the rows' bounds."""
    rows = [
        linear.Row(
            "a", 4096, 3072, 3072, "bfloat16", 0.109, 0.019, 0.013, 0.078, 0.130, 0.095, 0.099, "cusparselt", 20, []
        ),
        linear.Row(
            "b", 4096, 12288, 3072, "bfloat16", 0.433, 0.067, 0.052, 0.278, 0.380, 0.364, 0.372, "cusparselt", 20, []
        ),
    ]
    table = linear.markdown_rows(rows, ["layer", "m", "gemm speedup", "floor bound", "no-bias speedup"])
    for row in table[:2]:
        assert row["no-bias speedup"] < row["floor bound"] < row["gemm speedup"]
    assert table[0]["floor bound"] == pytest.approx(0.109 / (0.078 + 0.013))
    assert table[2]["floor bound"] == pytest.approx((table[0]["floor bound"] * table[1]["floor bound"]) ** 0.5)


def test_the_low_rank_columns_time_the_fused_and_the_unfused_branch() -> None:
    """One run shows both forms of the branch: the fused one's speed-up and cost over the lynx linear, and
    the unfused one's speed-up beside it."""
    row = linear.Row(
        "a", 4096, 3072, 3072, "bfloat16", 0.109, 0.019, 0.013, 0.078, 0.100, 0.095, 0.099, "cusparselt", 20, []
    )
    row.lynx_lowrank32_ms, row.lynx_lowrank32_unfused_ms = 0.110, 0.130
    names = ["lynx_lowrank32_ms", "lowrank32 speedup", "lowrank32 / lynx", "lynx_lowrank32_unfused_ms"]
    assert set(names) | {"lowrank32 unfused speedup"} <= set(linear.COLUMNS)
    (table_row, *_) = linear.markdown_rows([row], linear.COLUMNS)
    assert table_row["lowrank32 speedup"] == pytest.approx(0.109 / 0.110)
    assert table_row["lowrank32 / lynx"] == pytest.approx(1.1)
    assert table_row["lowrank32 unfused speedup"] == pytest.approx(0.109 / 0.130)
