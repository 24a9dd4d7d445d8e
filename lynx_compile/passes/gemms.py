"""Find the GEMMs of a Dynamo FX graph whose right operand is a weight (a parameter or buffer).

Patterns, on the graph Dynamo hands a backend (torch-level ops, parameters lifted to placeholders):

    linear(x, W[, b])                         W: (N, K)           nn.Linear, F.linear
    matmul(x, W) / x @ W / mm(x, W)            W: (K, N)           a weight stored input-major
    matmul(x, W.t()) / x @ W.T / ...           W: (N, K)           through t/transpose/permute/.T/.mT
    addmm(b, x, W) / addmm(b, x, W.t())

Matmuls between two activations (attention scores, attention x values) never match: one operand
must resolve to a weight node. Each match is named after the model's own module path: the
``nn.Linear``'s path for ``linear``, else the weight's own path (``blocks.0.w_out``).
"""

from __future__ import annotations

import dataclasses
import operator
import re

import torch
from torch import fx

_LINEAR = {torch._C._nn.linear, torch.nn.functional.linear}
_MATMUL = {torch.matmul, operator.matmul, torch.mm}
_MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
_TRANSPOSE_METHODS = {"t", "transpose", "permute"}
_TRANSPOSE_FUNCTIONS = {torch.t, torch.transpose, torch.permute}


@dataclasses.dataclass
class GemmSite:
    """One GEMM ``y = x @ W_nk.T (+ b)`` found in the graph."""

    node: fx.Node
    name: str
    x: fx.Node
    weight: fx.Node  # the weight node as stored (a placeholder or get_attr)
    weight_is_nk: bool  # True: stored (N, K) as nn.Linear; False: stored (K, N)
    bias: fx.Node | None
    m: int
    k: int
    n: int
    dtype: torch.dtype
    device: torch.device
    dynamic_m: bool

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def is_gemm(node: fx.Node) -> bool:
    """Any GEMM call (with a weight operand or not): an extern kernel to Inductor."""
    if node.op == "call_method":
        return node.target in _MATMUL_METHODS
    return node.op == "call_function" and (
        node.target in _LINEAR or node.target in _MATMUL or node.target is torch.addmm
    )


def is_transpose(node: fx.Node) -> bool:
    """t / transpose / permute / .T / .mT of the first argument, as Dynamo records them."""
    if node.op == "call_method":
        return node.target in _TRANSPOSE_METHODS
    return node.op == "call_function" and (
        node.target in _TRANSPOSE_FUNCTIONS or (node.target is getattr and node.args[1] in ("T", "mT"))
    )


def find_gemms(gm: fx.GraphModule) -> list[GemmSite]:
    """All GEMMs with a weight operand, in graph order, with unique names."""
    sites: list[GemmSite] = []
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        site = _match(gm, node)
        if site is None:
            continue
        count = seen.get(site.name, 0)
        seen[site.name] = count + 1
        if count:  # the same weight used by several GEMMs (a shared layer, a loop)
            site.name = f"{site.name}#{count}"
        sites.append(site)
    return sites


def _match(gm: fx.GraphModule, node: fx.Node) -> GemmSite | None:
    if node.op == "call_function" and node.target in _LINEAR:
        x, w = _arg(node, 0, "input"), _arg(node, 1, "weight")
        b = _arg(node, 2, "bias")
        return _site(gm, node, x, w, b, weight_transposed=False, via_linear=True)
    if (node.op == "call_function" and node.target in _MATMUL) or (
        node.op == "call_method" and node.target in _MATMUL_METHODS
    ):
        x, w = _arg(node, 0, "input"), _arg(node, 1, "other")
        return _site(gm, node, x, w, None, weight_transposed=True, via_linear=False)
    if node.op == "call_function" and node.target is torch.addmm:
        b, x, w = _arg(node, 0, "input"), _arg(node, 1, "mat1"), _arg(node, 2, "mat2")
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None
        return _site(gm, node, x, w, b, weight_transposed=True, via_linear=False)
    return None


def _arg(node: fx.Node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _site(
    gm: fx.GraphModule,
    node: fx.Node,
    x,
    w,
    b,
    *,
    weight_transposed: bool,
    via_linear: bool,
) -> GemmSite | None:
    """``weight_transposed``: the GEMM consumes W as (K, N) (matmul), not (N, K) (linear)."""
    if not isinstance(x, fx.Node) or not isinstance(w, fx.Node):
        return None
    if b is not None and not isinstance(b, fx.Node):
        return None
    weight, flipped = _strip_transpose(w)
    if weight is None or not _is_weight(weight):
        return None
    xv, wv = _value(x), _value(weight)
    if xv is None or wv is None or wv.dim() != 2 or xv.dim() < 2 or xv.dtype != wv.dtype:
        return None
    if b is not None and (_value(b) is None or _value(b).dim() != 1):
        return None
    # the stored weight is (N, K) when exactly one of "matmul layout" and "transposed view" holds
    weight_is_nk = weight_transposed == flipped
    n, k = (wv.shape[0], wv.shape[1]) if weight_is_nk else (wv.shape[1], wv.shape[0])
    if _hint(xv.shape[-1]) != _hint(k):
        return None
    m_sym = 1
    for s in xv.shape[:-1]:
        m_sym = m_sym * s
    name = _weight_path(weight)
    if via_linear and name.endswith(".weight"):
        name = name.removesuffix(".weight")
    return GemmSite(
        node=node,
        name=name,
        x=x,
        weight=weight,
        weight_is_nk=weight_is_nk,
        bias=b,
        m=_hint(m_sym),
        k=_hint(k),
        n=_hint(n),
        dtype=xv.dtype,
        device=xv.device,
        dynamic_m=not isinstance(m_sym, int),
    )


def _strip_transpose(w: fx.Node) -> tuple[fx.Node | None, bool]:
    """Follow one 2-D transpose back to the stored weight; returns (weight node, transposed?)."""
    if _is_weight(w):
        return w, False
    if not is_transpose(w) or not isinstance(w.args[0], fx.Node):
        return None, False
    if w.target in ("permute", torch.permute):
        dims = w.args[1:] if w.op == "call_method" else w.args[1]
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        if dims != (1, 0):
            return None, False
    return (w.args[0], True) if _is_weight(w.args[0]) else (None, False)


def _is_weight(node: fx.Node) -> bool:
    if node.op == "get_attr":
        return True
    if node.op != "placeholder":
        return False
    grapharg = node.meta.get("grapharg")
    if grapharg is None:
        return False
    if isinstance(getattr(grapharg, "example", None), torch.nn.Parameter):
        return True
    return bool(re.search(r"_(parameters|buffers)\[", _source_name(node)))


def _source_name(node: fx.Node) -> str:
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is None:
        return node.name
    name = source.name
    return name() if callable(name) else str(name)


_ROOT = re.compile(r"^[LG]\[['\"][^'\"]+['\"]\]")
# nn.Module storage that is not part of a parameter's path: ._modules['x'], .__dict__['_modules']['x']
_STORAGE = re.compile(
    r"(\.__dict__\[['\"]_(?:modules|parameters|buffers)['\"]\]|\._(?:modules|parameters|buffers))(?=\[)"
)
_PART = re.compile(r"\.(\w+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]")


def _weight_path(node: fx.Node) -> str:
    """``L['self']._modules['blocks'].__dict__['_modules']['0']._parameters['w']`` -> ``blocks.0.w``."""
    if node.op == "get_attr":
        return str(node.target)
    source = _source_name(node)
    rest = _STORAGE.sub("", _ROOT.sub("", source))
    parts = ["".join(p for p in groups if p) for groups in _PART.findall(rest)]
    return ".".join(parts) if parts else source


def _value(node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def _hint(size) -> int:
    """A concrete int for a possibly symbolic size (its hint), without adding a guard."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    hint = getattr(node, "hint", None)
    if hint is not None:
        return int(hint)
    return int(torch._guards.detect_fake_mode().shape_env.size_hint(size.node.expr))  # pragma: no cover
