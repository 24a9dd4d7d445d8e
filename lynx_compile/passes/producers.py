"""Which op produces an activation, and can Inductor fuse the prune+compress lowering into it?

On the GPU the lowering is a Triton template (``codegen/inductor_lowering``): Inductor fuses a
pointwise producer (bias + GELU, a residual add, a pointwise ``cat``) into it as a prologue, and
the template reads through views and permutes. Nothing is fused when the walk back from the
activation, through view-like ops only, ends at an extern kernel (a GEMM, attention) or a graph
input, or when the pointwise ops end in a norm (the adaLN ``norm * (1 + scale) + shift``): Inductor
computes those inside the norm's reduction kernel, which a template cannot take as its prologue.
Then the activation sits in memory and the tuned standalone Triton kernel compresses it. A permute
on the way is still worth lowering: the template reads through it, where the standalone kernel
would first need a contiguous copy.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from .gemms import is_gemm, is_transpose

VIEW_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze", "to", "type_as"}
VIEW_FUNCTIONS = {torch.reshape, torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze, operator.getitem}
_SWAPAXES = {"swapaxes", torch.swapaxes}  # the one permute gemms' weight matching does not take
EXTERN_FUNCTIONS = {F.scaled_dot_product_attention, torch.bmm, torch.baddbmm, torch.conv2d, F.conv2d, F.conv3d}
# reductions whose pointwise tail Inductor puts into the reduction's own kernel
NORM_FUNCTIONS = {
    F.layer_norm,
    F.group_norm,
    F.rms_norm,
    F.normalize,
    F.softmax,
    torch.layer_norm,
    torch.group_norm,
    torch.rms_norm,
    torch.mean,
    torch.sum,
    torch.var,
    torch.var_mean,
}
NORM_METHODS = {"mean", "sum", "var", "std", "norm", "softmax"}
_TAIL_DEPTH = 8  # pointwise ops to look through for a norm: adaLN is 2-3, hand-written RMSNorm ~5


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
        elif not is_view(node):
            break
        if not node.args or not isinstance(node.args[0], fx.Node):
            break
        node = node.args[0]
    name = _name(node)
    if is_gemm(node) or target in EXTERN_FUNCTIONS or node.op == "call_module":
        return permuted, f"{'permuted ' if permuted else ''}{name} output"
    norm = _norm_behind(node)
    if norm:
        return False, f"{name} after {norm} (computed in the norm's reduction kernel)"
    return True, name


def is_view(node: fx.Node) -> bool:
    """A reshape-like op (``view``, ``reshape``, ``unflatten``, ``to``, ...), not a permute."""
    return (node.op == "call_method" and node.target in VIEW_METHODS) or node.target in VIEW_FUNCTIONS


def is_norm(node: fx.Node) -> bool:
    """A norm or reduction (``layer_norm``, ``rms_norm``, ``.mean()``, ``softmax``, ...)."""
    return node.target in NORM_FUNCTIONS or (node.op == "call_method" and node.target in NORM_METHODS)


def _norm_behind(node: fx.Node) -> str | None:
    """The norm or reduction that ``node``'s chain of pointwise ops starts from, if any."""
    seen, frontier = {node}, [node]
    for _ in range(_TAIL_DEPTH):
        nxt = []
        for n in frontier:
            if is_norm(n):
                return _name(n)
            if (n.op != "call_function" and n.op != "call_method") or is_gemm(n) or n.target in EXTERN_FUNCTIONS:
                continue  # a graph input, a module, an extern kernel: the walk stops there
            nxt += [a for a in n.all_input_nodes if a not in seen]
            seen.update(nxt)
        frontier = nxt
    return None


def _name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))
