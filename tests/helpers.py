"""What several test modules share: the relative distance of two outputs, and a graph's GEMM sites."""

import torch
from torch import nn

from lynx_compile.passes.gemms import GemmSite, find_gemms


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def gemm_sites(model: nn.Module, *args: torch.Tensor) -> list[GemmSite]:
    """The GEMMs of the graph Dynamo hands a backend for ``model(*args)`` (found while it compiles:
    Dynamo drops the placeholders' sources afterwards)."""
    found = []

    def backend(gm, example_inputs):
        found.extend(find_gemms(gm))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(*args)
    return found
