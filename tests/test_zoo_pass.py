"""The lynx pass on every zoo architecture (tiny configs, real diffusers classes), CPU reference path.

A whole-model compile takes 20-90 s on two cores: the default run compiles one model per block
family (DiT: single-stream blocks; FLUX: double- and single-stream blocks), ``-m slow`` the others."""

import re

import pytest
import torch
from helpers import rel

import lynx_compile
from lynx_compile import prune_2to4, zoo

OPTS = {"min_rows": 32}  # tiny models: 64-224 image tokens, 8 text tokens, batch 2
DEFAULT_RUN = ("dit", "flux")


def _eager(built: zoo.ZooModel, pruned: set[str]) -> torch.Tensor:
    """The model with the inputs of the named linears pruned by forward pre-hooks."""
    hooks = [
        built.model.get_submodule(name).register_forward_pre_hook(lambda m, args: (prune_2to4(args[0]), *args[1:]))
        for name in pruned
    ]
    try:
        return built()
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(
    scope="module", params=[n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in zoo.ZOO_NAMES]
)
def compiled(request):
    """One lynx compile per architecture, shared by the tests below."""
    built = zoo.build(request.param, batch=2)
    n = len(lynx_compile.reports())
    with torch.no_grad():
        out = zoo.sample(torch.compile(built.model, backend="lynx", options=OPTS)(**built.example_kwargs))
    layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
    return built, out, layers


def test_compiled_equals_eager_with_pruned_inputs(compiled):
    built, out, layers = compiled
    sparse = {layer.name for layer in layers if layer.sparse}
    assert sparse, "nothing was sparsified"
    # 1e-3, not rounding level: Inductor's producers round differently from eager, which can flip
    # which of two near-equal magnitudes is kept; pruning itself changes the output by ~10-40%
    assert rel(out, _eager(built, sparse)) < 1e-3
    assert rel(out, _eager(built, set())) > 5e-2  # the pruning really ran


BLOCK = re.compile(r"(^|\.)(transformer_blocks|single_transformer_blocks|blocks|layers|\w+_refiner)\.\d+\.")
ADALN = re.compile(r"\.norm\w*\.linear$|\.(img|txt)_mod\.|\.adaLN_modulation\.")
MODULATION = re.compile(ADALN.pattern + r"|norm1\.emb\.")  # and DiT's per-block timestep/class embedders


def test_report_block_gemms_sparse_embedders_modulation_output_dense(compiled):
    _, _, layers = compiled
    for layer in layers:
        in_block = bool(BLOCK.search(layer.name)) and not MODULATION.search(layer.name)
        if in_block and layer.m >= OPTS["min_rows"]:
            assert layer.sparse and layer.path == "reference", layer
        elif not in_block:
            assert not layer.sparse, layer
            assert "embed" in layer.reason or "output projection" in layer.reason or "min_rows" in layer.reason, layer
    modulation = [layer for layer in layers if ADALN.search(layer.name) and BLOCK.search(layer.name)]
    assert all(not layer.sparse and "min_rows" in layer.reason for layer in modulation)
    top = {layer.name for layer in layers if not BLOCK.search(layer.name)}
    assert top & {"proj_out", "proj_out_2", "all_final_layer.2-1.linear"}, "the output projection was not found"
    assert all(not layer.name.startswith(("L[", "__dict__")) for layer in layers)
