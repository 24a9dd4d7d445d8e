"""Options: validation errors name the valid options; the selection rules."""

import pytest
import torch

from lynx_compile import LynxConfig


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"min_row": 3}, ValueError, "unknown lynx option.*min_row.*valid options.*min_rows"),
        ({"min_rows": "3"}, TypeError, "min_rows"),
        ({"min_rows": -1}, TypeError, "min_rows"),
        ({"exclude": "*.ff.*"}, TypeError, "list of strings"),
        ({"dtypes": ["float64"]}, ValueError, "unknown dtype"),
        ({"compensate": 1}, TypeError, "compensate"),
        ({"path": "fast"}, ValueError, "path"),
        ({"min_speedup": 0}, TypeError, "min_speedup"),
        ({"min_speedup": "1.2"}, TypeError, "min_speedup"),
        ("min_rows=3", TypeError, "dict or LynxConfig"),
    ],
)
def test_bad_options_raise_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        LynxConfig.from_options(options)


def test_bad_option_through_torch_compile():
    import lynx_compile  # noqa: F401

    f = torch.compile(torch.nn.Linear(4, 4), backend="lynx", options={"min_row": 3})
    with pytest.raises(Exception, match="unknown lynx option"):
        f(torch.randn(2, 4))


def test_selection_rules():
    c = LynxConfig()
    assert c.select_by_name("transformer_blocks.0.ff.net.2")[0]
    assert not c.select_by_name("x_embedder")[0]
    assert not c.select_by_name("proj_out")[0]
    assert c.select_by_name("single_transformer_blocks.0.proj_out")[0]
    c = LynxConfig(include=["x_embedder", "*.ff.*"], exclude=["*.ff.net.2"])
    assert c.select_by_name("x_embedder")[0]  # explicit include beats the DiT defaults
    assert not c.select_by_name("blocks.0.ff.net.2")[0]  # exclude beats everything
    assert not c.select_by_name("blocks.0.attn.to_q")[0]
    assert c.select_by_name("blocks.0.ff.net.0.proj")[0]
    assert LynxConfig(default_exclude=[]).select_by_name("x_embedder")[0]


def test_backend_registered_through_entry_point():
    import subprocess
    import sys

    code = "import torch; import sys; sys.exit(0 if 'lynx' in torch._dynamo.list_backends() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("dense_ms, sparse_ms, min_speedup, sparse", [
    (1.0, 0.95, 1.1, False),  # faster, but by less than the bar: dense, with the numbers in the reason
    (1.0, 0.85, 1.1, True),
    (1.0, 0.95, 1.0, True),  # min_speedup=1: any measured gain
    (1.0, 1.05, 1.0, False),
])
def test_cost_model_bar(monkeypatch, dense_ms, sparse_ms, min_speedup, sparse):
    """The cost model's decision against ``min_speedup``, with the GPU measurements stubbed out."""
    import types

    from lynx_compile.codegen import cusparselt
    from lynx_compile.passes import policy

    monkeypatch.setattr(cusparselt, "sparse_tensor_cores_available", lambda device: (True, ""))
    monkeypatch.setattr(cusparselt, "fast_compress_ok", lambda device, dtype: True)
    monkeypatch.setattr(cusparselt, "best_alg", lambda *args: 3)
    monkeypatch.setattr(cusparselt, "measure_speedup", lambda *args: (dense_ms, sparse_ms))
    site = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16, m=4096, k=3072, n=3072, x=None)
    decision = policy._decide_cuda(site, LynxConfig(min_speedup=min_speedup), "block GEMM", measure=True)
    assert decision.sparse is sparse
    speedup = f"{dense_ms / sparse_ms:.2f}x"
    assert speedup in decision.reason
    assert (decision.alg_id == 3) if sparse else ("min_speedup" in decision.reason)
