"""The cost model: measured times in (stubbed here), sparse or dense per GEMM out, with the numbers
in the reason; one prune+compress charged to all the GEMMs that read the same activation."""

import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_compile.codegen import cusparselt
from lynx_compile.passes import policy


def _cost_model(monkeypatch, groups: list[list[tuple[float, float]]], prune_ms: float, min_speedup: float):
    """Run the cost model on GEMM groups (one activation each) of (dense_ms, sparse_gemm_ms),
    GPU measurements stubbed out; returns the decisions group by group."""
    sites, times = [], {}
    for g, members in enumerate(groups):
        for j, (dense_ms, gemm_ms) in enumerate(members):
            n = 1024 * (j + 1)  # shapes tell the GEMMs apart in the stub
            sites.append(types.SimpleNamespace(x=f"x{g}", m=4096, k=1024 * (g + 1), n=n,
                                               dtype=torch.bfloat16, device=torch.device("cuda")))
            times[(sites[-1].k, n)] = cusparselt.Costs(dense_ms, prune_ms, gemm_ms)
    monkeypatch.setattr(cusparselt, "measure_costs", lambda m, k, n, *args: times[(k, n)])
    decisions = [policy.Decision(True, "cusparselt", "block GEMM", alg_id=3, compress="triton") for _ in sites]
    out = iter(policy.apply_cost_model(sites, decisions, min_speedup))
    return [[next(out) for _ in members] for members in groups]


@pytest.mark.parametrize("dense_ms, gemm_ms, min_speedup, sparse", [
    (1.0, 0.85, 1.1, False),  # 1.0 / (0.1 + 0.85) = 1.05x: faster, but by less than the bar
    (1.0, 0.75, 1.1, True),  # 1.18x
    (1.0, 0.85, 1.0, True),  # min_speedup=1: any measured gain
    (1.0, 0.95, 1.0, False),  # 0.95 + 0.1 > 1.0
])
def test_cost_model_bar(monkeypatch, dense_ms, gemm_ms, min_speedup, sparse):
    [[decision]] = _cost_model(monkeypatch, [[(dense_ms, gemm_ms)]], prune_ms=0.1, min_speedup=min_speedup)
    assert decision.sparse is sparse
    assert f"{dense_ms / (0.1 + gemm_ms):.2f}x" in decision.reason
    assert (decision.alg_id == 3 and "block GEMM" in decision.reason) if sparse else ("min_speedup" in decision.reason)


def test_cost_model_shares_pruning(monkeypatch):
    """q, k, v on one activation: each loses alone (prune + GEMM > dense), together they win."""
    qkv = [(1.0, 0.8)] * 3  # alone 1.0 / (0.3 + 0.8) = 0.91x; together 3.0 / (0.3 + 2.4) = 1.11x
    [shared, [alone]] = _cost_model(monkeypatch, [qkv, [(1.0, 0.8)]], prune_ms=0.3, min_speedup=1.1)
    assert all(d.sparse and "shared by 3 GEMMs: 1.11x" in d.reason for d in shared)
    assert not alone.sparse and "0.91x < min_speedup" in alone.reason


@given(st.lists(st.tuples(st.floats(0.1, 2.0), st.floats(0.1, 2.0)), min_size=1, max_size=5),
       st.floats(0.0, 1.0), st.floats(0.8, 1.5))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cost_model_group_properties(monkeypatch, group, prune_ms, min_speedup):
    """Whatever the times: every sparse GEMM clears the bar on its own product, the sparse set
    clears it with the shared prune+compress, and no GEMM that clears it alone is left out of a
    sparse group."""
    [decisions] = _cost_model(monkeypatch, [group], prune_ms, min_speedup)
    chosen = [t for t, d in zip(group, decisions) if d.sparse]
    assert all(dense / gemm >= min_speedup for dense, gemm in chosen)
    if chosen:
        assert sum(d for d, _ in chosen) / (prune_ms + sum(g for _, g in chosen)) >= min_speedup
        assert len(chosen) == sum(dense / gemm >= min_speedup for dense, gemm in group)
    assert all(d.reason for d in decisions)


def _stub_timings(monkeypatch, quick: list[float], long: list[float]) -> list[int]:
    """``_search`` with the GPU stubbed out: id a times ``quick[a]`` in the short replay and
    ``long[a]`` in the long one; ids from len(quick) on raise, as cuSPARSELt does past its last id.
    Returns the ids the search called, in order."""
    called: list[int] = []

    def sparse_mm(compressed: object, weight: object, alg: int) -> None:
        called.append(alg)
        if alg >= len(quick):
            raise RuntimeError("CUSPARSE_STATUS_INVALID_VALUE")

    def graph_ms(call, calls: int = 20, replays: int = 15, warmup: int = 3) -> float:
        call(0)
        return (quick if replays == 3 else long)[called[-1]]

    monkeypatch.setattr(cusparselt, "_operands", lambda *args: (None, [None], [None]))
    monkeypatch.setattr(cusparselt, "sparse_mm", sparse_mm)
    monkeypatch.setattr(cusparselt, "cuda_graph_ms", graph_ms)
    return called


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=0, max_size=22))
def test_alg_search_keeps_the_fastest_finalist(monkeypatch, ids):
    """Every id from 0 up to the first refused one is timed briefly, the three fastest go to the
    long replay, whose fastest wins; when cuSPARSELt refuses id 0 the search says so."""
    quick, long = [q for q, _ in ids], [t for _, t in ids]
    called = _stub_timings(monkeypatch, quick, long)
    if not ids:
        with pytest.raises(RuntimeError, match="none of its algorithms"):
            cusparselt._search(4096, 3072, 3072, torch.bfloat16, torch.device("cuda"))
        return
    alg = cusparselt._search(4096, 3072, 3072, torch.bfloat16, torch.device("cuda"))
    usable = sorted(range(len(ids)), key=lambda a: quick[a])
    assert called[: len(ids) + 1] == [*range(len(ids)), len(ids)]  # the quick pass, then one refused id
    assert alg in usable[:3] and long[alg] == min(long[a] for a in usable[:3])
