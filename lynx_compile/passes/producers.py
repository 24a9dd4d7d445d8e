"""Which op produces an activation, and can Inductor fuse the prune+compress lowering into it?

Inductor inlines pointwise ops (bias adds, GELU, the adaLN ``norm * (1 + scale) + shift``, residual
adds, pointwise ``cat``) and the last step of a norm into whatever reads them, and reads through
views and permutes. It cannot inline an extern kernel (a GEMM, attention) or a graph input: when
the walk back from the activation, through view-like ops only, ends at one of those, the
activation already sits in memory and the tuned standalone Triton kernel compresses it instead.
A permute on the way is still worth lowering: the generated kernel reads through it, where the
standalone kernel would first need a contiguous copy.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from .gemms import is_gemm, is_transpose

_VIEW_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze", "to", "type_as"}
_VIEW_FUNCTIONS = {torch.reshape, torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze, operator.getitem}
_SWAPAXES = {"swapaxes", torch.swapaxes}  # the one permute gemms' weight matching does not take
_EXTERN_FUNCTIONS = {F.scaled_dot_product_attention, torch.bmm, torch.baddbmm, torch.conv2d, F.conv2d, F.conv3d}


def fusable_producer(x: fx.Node) -> tuple[bool, str]:
    """(fusable, what produces ``x``), e.g. ``(True, "gelu")`` or ``(False, "linear output")``."""
    node, permuted = x, False
    while True:
        if node.op == "placeholder":
            return permuted, "permuted graph input" if permuted else "graph input"
        if node.op == "get_attr":
            return permuted, "constant"
        target = node.target
        if is_transpose(node) or target in _SWAPAXES:
            permuted = True
        elif not (node.op == "call_method" and target in _VIEW_METHODS or target in _VIEW_FUNCTIONS):
            break
        if not node.args or not isinstance(node.args[0], fx.Node):
            break
        node = node.args[0]
    name = _name(node)
    if is_gemm(node) or target in _EXTERN_FUNCTIONS or node.op == "call_module":
        return permuted, f"{'permuted ' if permuted else ''}{name} output"
    return True, name


def _name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))
