"""The cost model: measured times in (stubbed here), sparse or dense per GEMM out, with the numbers
in the reason; one prune+compress charged to all the GEMMs that read the same activation."""

import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_compile import GemmPath, PruneSite
from lynx_compile.codegen import tuning
from lynx_compile.passes import profitability
from lynx_compile.passes.decision import Decision


def _cost_model(
    monkeypatch, groups: list[list[tuple[float, float]]], prune_ms: float, min_speedup: float, compensate: bool = False
):
    """Run the cost model on GEMM groups (one activation each) of (dense_ms, sparse_gemm_ms),
    GPU measurements stubbed out (they see norms=compensate); returns the decisions group by group."""
    sites, times = [], {}
    for g, members in enumerate(groups):
        for j, (dense_ms, gemm_ms) in enumerate(members):
            n = 1024 * (j + 1)  # shapes tell the GEMMs apart in the stub
            sites.append(
                types.SimpleNamespace(
                    x=f"x{g}", m=4096, k=1024 * (g + 1), n=n, dtype=torch.bfloat16, device=torch.device("cuda")
                )
            )
            times[(sites[-1].k, n)] = tuning.Costs(dense_ms, prune_ms, gemm_ms)

    def measure_costs(m, k, n, dtype, alg_id, device, ones_column, norms, fp8=False, low_rank=0):
        assert norms is compensate  # with compensation the prune+compress timed also sums the norms
        return times[(k, n)]

    monkeypatch.setattr(tuning, "measure_costs", measure_costs)
    decisions = [Decision(True, GemmPath.CUSPARSELT, "block GEMM", alg_id=3, prune=PruneSite.TRITON) for _ in sites]
    out = iter(profitability.apply_cost_model(sites, decisions, min_speedup, compensate))
    return [[next(out) for _ in members] for members in groups]


@pytest.mark.parametrize(
    "dense_ms, gemm_ms, min_speedup, sparse",
    [
        (1.0, 0.85, 1.1, False),  # 1.0 / (0.1 + 0.85) = 1.05x: faster, but by less than the bar
        (1.0, 0.75, 1.1, True),  # 1.18x
        (1.0, 0.85, 1.0, True),  # min_speedup=1: any measured gain
        (1.0, 0.95, 1.0, False),  # 0.95 + 0.1 > 1.0
    ],
)
@pytest.mark.parametrize("compensate", [False, True])
def test_cost_model_bar(monkeypatch, dense_ms, gemm_ms, min_speedup, sparse, compensate):
    [[decision]] = _cost_model(
        monkeypatch, [[(dense_ms, gemm_ms)]], prune_ms=0.1, min_speedup=min_speedup, compensate=compensate
    )
    assert decision.sparse is sparse
    assert f"{dense_ms / (0.1 + gemm_ms):.2f}x" in decision.reason
    assert (decision.alg_id == 3 and "block GEMM" in decision.reason) if sparse else ("min_speedup" in decision.reason)


def test_cost_model_shares_pruning(monkeypatch):
    """q, k, v on one activation: each loses alone (prune + GEMM > dense), together they win."""
    qkv = [(1.0, 0.8)] * 3  # alone 1.0 / (0.3 + 0.8) = 0.91x; together 3.0 / (0.3 + 2.4) = 1.11x
    [shared, [alone]] = _cost_model(monkeypatch, [qkv, [(1.0, 0.8)]], prune_ms=0.3, min_speedup=1.1)
    assert all(d.sparse and "shared by 3 GEMMs: 1.11x" in d.reason for d in shared)
    assert not alone.sparse and "0.91x < min_speedup" in alone.reason


@pytest.mark.parametrize("fp8", [False, True])
def test_fp8_decisions_are_timed_as_fp8(monkeypatch, fp8):
    """The cost model and the error budget's time saved both time the GEMM the decision would run."""
    site = types.SimpleNamespace(x="x", m=4096, k=1024, n=1024, dtype=torch.bfloat16, device=torch.device("cuda"))
    seen = []

    def measure_costs(m, k, n, dtype, alg_id, device, ones_column, norms, fp8=False, low_rank=0):
        seen.append(fp8)
        return tuning.Costs(1.0, 0.1, 0.4)

    monkeypatch.setattr(tuning, "measure_costs", measure_costs)
    decision = Decision(True, GemmPath.CUSPARSELT, "block GEMM", alg_id=3, prune=PruneSite.TRITON, fp8=fp8)
    profitability.apply_cost_model([site], [decision], 1.1)
    saved, unit = profitability.time_saved([site], [decision], measured=True)
    assert seen == [fp8, fp8] and unit == "ms" and saved == {0: pytest.approx(1.0 - 0.4 - 0.1)}


@given(
    st.lists(st.tuples(st.floats(0.1, 2.0), st.floats(0.1, 2.0)), min_size=1, max_size=5),
    st.floats(0.0, 1.0),
    st.floats(0.8, 1.5),
)
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


def _charge(monkeypatch, members: int, fused: bool, costs: tuning.Costs, branch: tuning.Costs, min_speedup=1.1):
    """``charge_branches`` on one activation read by ``members`` GEMMs with rank-32 branches, fused (64
    columns) or not, GPU measurements stubbed; returns the decisions and what the stubs were asked."""
    sites = [
        types.SimpleNamespace(name=f"g{j}", x="x", m=4096, k=1024, n=1024 * (j + 1), dtype=torch.bfloat16, device=None)
        for j in range(members)
    ]
    asked = {"low_rank": [], "branch": []}

    def measure_costs(m, k, n, dtype, alg_id, device, ones_column, norms, fp8=False, low_rank=0):
        asked["low_rank"].append(low_rank)
        return costs

    def measure_branch(m, k, n, rank, dtype, device):
        asked["branch"].append((k, n, rank))
        return branch

    monkeypatch.setattr(tuning, "measure_costs", measure_costs)
    monkeypatch.setattr(tuning, "measure_branch", measure_branch)
    columns = 64 if fused else 0
    decisions = [
        Decision(True, GemmPath.CUSPARSELT, "block GEMM", alg_id=3, prune=PruneSite.TRITON, low_rank_columns=columns)
        for _ in sites
    ]
    ranks = {site.name: 32 for site in sites}
    return profitability.charge_branches(sites, decisions, ranks, min_speedup), asked


@pytest.mark.parametrize("gemm_ms, sparse", [(0.6, True), (0.8, False)])
def test_fused_branch_is_timed_as_it_runs(monkeypatch, gemm_ms, sparse):
    """Fused: the compression with x A and the GEMM 2R longer, one compression for the group. q, k, v at
    3.0 / (0.3 + 3 x 0.6) = 1.43x stay sparse; at 3.0 / (0.3 + 3 x 0.8) = 1.11x, under the bar of 1.2, not."""
    costs, nothing = tuning.Costs(1.0, 0.3, gemm_ms), tuning.Costs(0.0, 9.0, 9.0)
    decisions, asked = _charge(monkeypatch, 3, True, costs, nothing, min_speedup=1.2)
    assert asked == {"low_rank": [32] * 3, "branch": []}  # R = 64 columns / 2; no cuBLAS branch
    ratio = f"{3.0 / (0.3 + 3 * gemm_ms):.2f}x"
    assert all(d.sparse is sparse and "rank-32 branch (fused)" in d.reason and ratio in d.reason for d in decisions)
    assert all(d.alg_id == 3 and "block GEMM" in d.reason for d in decisions) if sparse else True


def test_unfused_branch_charges_x_a_once_and_u_b_per_gemm(monkeypatch):
    """Unfused: x A once for the activation, u B per GEMM. Alone the three would gain 3 / (0.3 + 1.5) =
    1.67x; with 0.2 ms of x A and 0.1 per u B, 3 / 2.3 = 1.30x: over the bar of 1.2, under 1.35."""
    costs, branch = tuning.Costs(1.0, 0.3, 0.5), tuning.Costs(0.0, 0.2, 0.1)
    decisions, asked = _charge(monkeypatch, 3, False, costs, branch, min_speedup=1.2)
    assert asked["low_rank"] == [0] * 3 and asked["branch"] == [(1024, 1024 * (j + 1), 32) for j in range(3)]
    assert all(d.sparse and "(unfused): 2.300 ms vs dense 3.000 ms = 1.30x" in d.reason for d in decisions)
    decisions, _ = _charge(monkeypatch, 3, False, costs, branch, min_speedup=1.35)
    assert not any(d.sparse for d in decisions)
    assert all("1.30x < min_speedup=1.35" in d.reason for d in decisions)


@given(
    st.integers(1, 4),
    st.booleans(),
    st.floats(0.1, 2.0),
    st.floats(0.0, 1.0),
    st.floats(0.1, 2.0),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
    st.floats(0.8, 1.5),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_charged_groups_clear_the_bar(monkeypatch, members, fused, dense, prune, gemm, project, expand, bar):
    """Whatever the times: a group with branches stays sparse exactly when its dense time over its sparse
    time, the branch included as it runs, clears ``min_speedup``; all its GEMMs go the same way."""
    costs, branch = tuning.Costs(dense, prune, gemm), tuning.Costs(0.0, project, expand)
    decisions, _ = _charge(monkeypatch, members, fused, costs, branch, min_speedup=bar)
    extra = 0.0 if fused else project + members * expand
    expected = members * dense / (prune + extra + members * gemm) >= bar
    assert [d.sparse for d in decisions] == [expected] * members
    assert all("branch" in d.reason for d in decisions)


class _FakeGPU:
    """Enough of ``torch.cuda`` for ``queued_ms`` on a CPU: kernels advance a clock, events read it,
    and the sleep that holds the stream has ended (``query``) on the tries listed in ``woken``."""

    def __init__(self, woken: set[int]) -> None:
        self.clock, self.tries, self.woken = 0.0, 0, woken
        gpu = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.t = 0.0

            def record(self) -> None:
                self.t = gpu.clock

            def query(self) -> bool:
                return gpu.tries in gpu.woken

            def elapsed_time(self, end: "Event") -> float:
                return end.t - self.t

        self.Event = Event

    def _sleep(self, cycles: int) -> None:
        self.tries += 1

    def synchronize(self) -> None:
        pass

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(tuning, "sleep_cycles_per_ms", lambda: 1.0)
        for name in ("Event", "_sleep", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.floats(0.01, 1.0), min_size=0, max_size=22),
    st.sets(st.integers(1, 3)),
    st.integers(1, 4),
    st.integers(1, 5),
    st.booleans(),
)
def test_queued_ms_times_each_key(monkeypatch, per_call, woken, calls, rounds, refusal):
    """Each key's time per call, the two warm-up calls left out (a key's first call is slow, as a
    first launch is); keys end at the first one whose warm-up raises the ``refused`` error, and any other error
    is raised; the timed calls run again while the GPU woke up before they were all queued, at most
    three times."""
    gpu = _FakeGPU(set(woken))
    gpu.install(monkeypatch)
    called: list[int] = []

    def call(key: int, i: int) -> None:
        called.append(key)
        if key >= len(per_call):
            raise RuntimeError("CUSPARSE_STATUS_INVALID_VALUE")
        gpu.clock += per_call[key] + (100.0 if called.count(key) == 1 else 0.0)

    keys = range(len(per_call) + 1)
    if not refusal:
        with pytest.raises(RuntimeError):
            tuning.queued_ms(call, keys, calls, rounds)
        return
    ms = tuning.queued_ms(call, keys, calls, rounds, refused=RuntimeError)
    assert ms == pytest.approx(dict(enumerate(per_call)))
    tries = min(3, next(t for t in range(1, 5) if t not in woken))
    one_try = [key for _ in range(rounds) for key in range(len(per_call)) for _ in range(calls)]
    warm_up = [key for key in range(len(per_call)) for _ in range(2)] + [len(per_call)]  # two each, then the refused
    assert called == warm_up + one_try * tries


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=0, max_size=22))
def test_alg_search_keeps_the_fastest_finalist(monkeypatch, ids):
    """Every id from 0 up to the first refused one is timed briefly, the three fastest go to a
    longer timing, whose fastest wins; when cuSPARSELt refuses id 0 the search says so."""
    quick, long = dict(enumerate(q for q, _ in ids)), [t for _, t in ids]
    passes: list[tuple[list[int], int, int]] = []

    def queued_ms(call, keys, calls, rounds=1, refused=()):
        keys = list(keys)
        passes.append((keys, calls, rounds))
        if refused:  # the walk over every id
            assert keys == list(range(tuning.MAX_ALG_IDS)) and refused is RuntimeError
            return quick
        return {alg: long[alg] for alg in keys}

    monkeypatch.setattr(tuning, "operands", lambda *args: (None, [None], [None]))
    monkeypatch.setattr(tuning, "queued_ms", queued_ms)
    if not ids:
        with pytest.raises(RuntimeError, match="none of its algorithms"):
            tuning.search_alg(4096, 3072, 3072, torch.bfloat16, torch.device("cuda"))
        return
    alg = tuning.search_alg(4096, 3072, 3072, torch.bfloat16, torch.device("cuda"))
    finalists = sorted(quick, key=quick.get)[:3]
    assert sorted(passes[1][0]) == sorted(finalists) and passes[1][2] > 1  # several rounds: a median
    assert long[alg] == min(long[a] for a in finalists)
