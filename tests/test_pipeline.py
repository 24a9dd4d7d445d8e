"""A diffusers pipeline works unchanged but for the compile line, and recompiles at most once per resolution."""

import pytest
import torch

import lynx_compile
from lynx_compile import zoo


@pytest.mark.slow
def test_flux_pipeline_denoising_loop_with_lynx():
    pipe, kwargs = zoo.flux_pipeline()
    pipe.transformer = torch.compile(pipe.transformer, backend="lynx", options={"min_rows": 64})
    n = len(lynx_compile.reports())
    graphs = []
    for side in (32, 32, 48):
        images = pipe(**kwargs, height=side, width=side, num_inference_steps=3).images
        assert images.shape == (1, 3, side, side) and torch.isfinite(images).all()
        graphs.append(len(lynx_compile.reports()) - n)
    assert graphs[0] >= 1  # compiled
    assert graphs[1] == graphs[0]  # same resolution: no recompile
    assert graphs[2] - graphs[1] <= graphs[0]  # a new resolution: at most one recompile of each graph
    sparse = [layer for r in lynx_compile.reports()[n:] for layer in r.layers if layer.sparse]
    assert any(layer.name.startswith("transformer_blocks.0.") for layer in sparse)
