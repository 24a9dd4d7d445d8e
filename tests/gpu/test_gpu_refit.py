"""Option refit on a GPU with sparse tensor cores: the fast path (cuSPARSELt, bf16 and fp8) on the refitted weight
copies against the reference path's ``P(x) (W G^T)^T + b``."""

import pytest
import torch
from helpers import rel

import lynx_compile
from lynx_compile import zoo
from lynx_compile.codegen import cusparselt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cusparselt.sparse_tensor_cores_available()[0], reason="needs sm80+ and cuSPARSELt"),
]


def _compiled(model, options, **kwargs):
    torch._dynamo.reset()
    n = len(lynx_compile.reports())
    out = torch.compile(model, backend="lynx", options=options)(**kwargs)
    layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
    torch._dynamo.reset()
    return zoo.sample(out), layers


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_flux_fast_path_with_refit_matches_the_reference_path(precision):
    if precision == "fp8" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("fp8 sparse GEMMs need sm90+")
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        calibration = lynx_compile.calibrate(
            built.model, [built.example_kwargs], options={"min_rows": 16, "refit": True}, progress=False
        )
        opts = {"min_rows": 16, "cost_model": False, "refit": True, "calibration": calibration, "precision": precision}
        fast, layers = _compiled(built.model, opts, **built.example_kwargs)
        ref, _ = _compiled(built.model, {**opts, "path": "reference"}, **built.example_kwargs)
        dense = zoo.sample(built())
    sparse = [x for x in layers if x.sparse]
    assert sparse and all(x.path == "cusparselt" for x in sparse)
    print(f"\nflux refit {precision}: fast vs ref {rel(fast, ref):.4f}, ref vs dense {rel(ref, dense):.4f}")
    assert rel(fast, ref) < max(5e-2, rel(ref, dense) / 4)
