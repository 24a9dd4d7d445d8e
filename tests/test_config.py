"""Options: validation errors name the valid options; the selection rules; Inductor's mode."""

import functools

import pytest
import torch

from lynx_compile import LynxConfig, backend


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
        ({"fold_bias": True, "compensate": True}, ValueError, "'fold_bias' and 'compensate' cannot be combined"),
        ({"min_speedup": 0}, TypeError, "min_speedup"),
        ({"min_speedup": "1.2"}, TypeError, "min_speedup"),
        ({"max_layer_error": -0.1}, TypeError, "max_layer_error"),
        ({"max_layer_error": "0.1"}, TypeError, "max_layer_error"),
        ({"max_layer_error": True}, TypeError, "max_layer_error"),
        ({"max_layer_error": float("nan")}, TypeError, "max_layer_error"),
        ({"inductor_mode": "fastest"}, ValueError, "inductor_mode.*max-autotune"),
        ({"precision": "fp4"}, ValueError, "precision.*bf16.*fp8"),
        ({"precision": "fp8", "fold_bias": True}, ValueError, "'fold_bias' and precision='fp8'"),
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


def _inductor_config(monkeypatch, **compile_kwargs) -> dict:
    """The config patches the backend hands Inductor for ``torch.compile(..., **compile_kwargs)``."""
    seen = {}

    def compile_fx(gm, example_inputs, config_patches):
        seen.update(config_patches)
        return gm.forward

    monkeypatch.setattr(backend, "compile_fx", compile_fx)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(torch.nn.Linear(8, 8), **compile_kwargs)(torch.randn(4, 8))
    seen.pop("post_grad_custom_post_pass")
    return seen


def test_inductor_mode_option_is_torch_compiles_mode(monkeypatch):
    """torch.compile refuses mode= with options=: option inductor_mode gives the mode beside lynx options."""
    with pytest.raises(Exception, match=r"mode.*options"):
        torch.compile(torch.nn.Linear(8, 8), backend="lynx", mode="max-autotune-no-cudagraphs", options={"min_rows": 1})
    by_mode = _inductor_config(monkeypatch, backend="lynx", mode="max-autotune-no-cudagraphs")
    by_option = _inductor_config(monkeypatch, backend="lynx", options={"inductor_mode": "max-autotune-no-cudagraphs"})
    assert by_option == by_mode and by_mode["max_autotune"]
    assert _inductor_config(monkeypatch, backend="lynx") == {}


def test_mode_and_a_different_inductor_mode_are_refused():
    lynx = functools.partial(backend.lynx_backend, mode="reduce-overhead", options={"inductor_mode": "max-autotune"})
    torch._dynamo.reset()
    with pytest.raises(Exception, match="mode='reduce-overhead' and option inductor_mode='max-autotune' disagree"):
        torch.compile(torch.nn.Linear(8, 8), backend=lynx)(torch.randn(4, 8))
