"""Option low_rank on a GPU with sparse tensor cores: the branch on the fast path equals the reference path's."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel

import lynx_compile
from lynx_compile import prune_2to4, zoo

pytestmark = pytest.mark.gpu


def _compiled(model, options, *args, **kwargs):
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    out = torch.compile(model, backend="lynx", options=options)(*args, **kwargs)
    layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
    torch._dynamo.reset()
    return out, layers


def test_one_layer_fast_path_equals_the_formula():
    """One nn.Linear, bf16: cuSPARSELt + branch vs prune(x) W^T + b + (x A) B in eager bf16, at rounding level."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 256, device="cuda", dtype=torch.bfloat16)
    scale = torch.ones(512, device="cuda")
    scale[::9] = 6.0
    xs = [(torch.randn(4, 256, 512, device="cuda") * scale).bfloat16() for _ in range(2)]
    with torch.no_grad():
        calibration = lynx_compile.calibrate(layer, xs, options={"min_rows": 16}, progress=False)
        opts = {"min_rows": 16, "cost_model": False, "low_rank": 32, "calibration": calibration}
        fast, layers = _compiled(layer, opts, xs[0])
        ref, _ = _compiled(layer, {**opts, "path": "reference"}, xs[0])
        (name,) = calibration.names
        a, b = (f.to("cuda", torch.bfloat16) for f in calibration.factors(name, 32))
        want = F.linear(prune_2to4(xs[0]), layer.weight, layer.bias) + (xs[0] @ a) @ b
        naive = F.linear(prune_2to4(xs[0]), layer.weight, layer.bias)
        dense = layer(xs[0])
    assert [(x.path, x.low_rank) for x in layers] == [("cusparselt", 32)]
    assert rel(fast, want) < 1e-2 and rel(ref, want) < 1e-2
    assert rel(fast, dense) < rel(naive, dense)


def test_flux_fast_path_with_the_branch_matches_the_reference_path():
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        calibration = lynx_compile.calibrate(
            built.model, [built.example_kwargs], options={"min_rows": 16}, progress=False
        )
        opts = {"min_rows": 16, "cost_model": False, "low_rank": 16, "calibration": calibration}
        fast, layers = _compiled(built.model, opts, **built.example_kwargs)
        ref, _ = _compiled(built.model, {**opts, "path": "reference"}, **built.example_kwargs)
        plain, _ = _compiled(
            built.model, {"min_rows": 16, "cost_model": False, "path": "reference"}, **built.example_kwargs
        )
        dense = built()
    fast, ref, plain, dense = (zoo.sample(t) for t in (fast, ref, plain, dense))
    sparse = [x for x in layers if x.sparse]
    assert sparse and all(x.path == "cusparselt" and x.low_rank == 16 for x in sparse)
    print(
        f"\nflux low_rank=16: fast vs ref {rel(fast, ref):.4f}, ref vs dense {rel(ref, dense):.4f}, "
        f"no branch vs dense {rel(plain, dense):.4f}"
    )
    assert rel(fast, ref) < max(5e-2, rel(ref, dense) / 4)
