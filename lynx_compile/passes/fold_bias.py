"""Option ``fold_bias``: add a GEMM's bias inside the sparse GEMM where an add in the graph costs a kernel.

cuSPARSELt's bias epilogue cannot add nn.Linear's per-column bias when the activation is the
sparse operand (``codegen/cusparselt.py``), so by default ``+ b`` stays in the graph for Inductor.
That is free where the GEMM's output goes to a pointwise consumer (GELU, a gated residual: the add
joins that kernel), not where it goes, through views only, to a norm or to attention: FLUX's q and k
feed an RMSNorm + RoPE reduction kernel that took 0.53 ms with the add against 0.33 ms without, and
a v straight into SDPA needs the sum in memory, one more kernel (docs/design.md, "Bias folding").
There the bias goes into the GEMM:

    [x | 1 | 0 ... 0] @ [W | b | 0 ... 0].T  =  x @ W.T + b        (BIAS_COLUMNS = 64 more columns)

The activation's columns come from the prune+compress kernel (``ones_column``, never in memory).
The weight's are a copy, (N, K + 64), made at compile time and registered on the graph module as a
buffer, which AOTAutograd lifts like a parameter (a static input under CUDA graphs). Before every
call the compiled function checks the weight and bias it was made from (address and version
counter) and refreshes the copy in place when they changed, so in-place weight updates
(``load_state_dict``, fused LoRA) are never missed. The cost is memory: one weight copy per folded
GEMM, in the report, and 64 more K per GEMM (one more K step of cuSPARSELt's kernels). A fused low-rank
branch's weight copy ``[W | spread_2to4(B^T)]`` (``passes/low_rank.py``), the column-permuted copies of option
``permute_channels``, the refitted ``W G^T`` of option ``refit`` and fp8 weights are made and kept current here too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx
from torch._dynamo.source import ConstantSource

from ..codegen import self_check
from ..report import PruneSite
from ..semantics import quantise_fp8_rows, refit_weight, with_bias_column, with_branch_columns
from .decision import Decision, activation_groups
from .gemms import GemmSite, is_transpose
from .producers import EXTERN_FUNCTIONS, is_norm, is_view

log = logging.getLogger("lynx_compile")
_STORED = ("placeholder", "get_attr")  # a parameter or buffer: what a folded weight copy can be made from


def costly_bias_add(site: GemmSite) -> str | None:
    """What makes the bias add in the graph cost a kernel: the norm or attention that the GEMM's
    output reaches through views only (``"rms_norm"``, ``"scaled_dot_product_attention"``), or None."""
    frontier, seen = [site.node], {site.node}
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if is_norm(user) or user.target in EXTERN_FUNCTIONS:
                return getattr(user.target, "__name__", str(user.target))
            if (is_view(user) or is_transpose(user)) and user not in seen:
                seen.add(user)
                frontier.append(user)
    return None


def fold_biases(sites: Sequence[GemmSite], decisions: list[Decision]) -> list[Decision]:
    """Which GEMMs take their bias into the sparse GEMM: those whose output goes to a norm or
    attention (``costly_bias_add``) and whose bias is a parameter (not computed in the graph). GEMMs
    sharing an activation fold one by one: the folded ones share its compression with the ones
    column, the others keep theirs without it (FLUX's single-stream ``proj_mlp`` feeds a GELU: a
    second prune of its input costs less than its GEMM at K + 64, up to 18% slower). Activations
    pruned in Inductor's template keep their bias adds: the template writes no ones column; nor do
    they fold where the Triton kernel's ones-column variant failed its self-check."""
    out = list(decisions)
    for (_, prune, _, _), members in activation_groups(sites, decisions).items():
        if prune == PruneSite.FUSED:
            continue
        costly = {i: costly_bias_add(sites[i]) for i in members}
        folds = [i for i in members if costly[i] and sites[i].bias is not None and sites[i].bias.op in _STORED]
        site = sites[members[0]]
        if (
            folds
            and prune == PruneSite.TRITON
            and not self_check.fast_compress_ok(site.device, site.dtype, ones_column=True)
        ):
            for i in folds:
                out[i] = dataclasses.replace(
                    out[i],
                    reason=f"{out[i].reason}; bias not folded: the Triton "
                    "kernel with a ones column failed its self-check",
                )
            continue
        for i in members:
            if i in folds:
                note = f"bias folded into the sparse GEMM (an add would feed {costly[i]})"
            elif folds:
                note = f"bias not folded: its input compressed apart from the {len(folds)} folded GEMMs reading it"
            else:
                continue
            out[i] = dataclasses.replace(out[i], fold_bias=i in folds, reason=f"{out[i].reason}; {note}")
    return out


@dataclasses.dataclass
class _Fold:
    buffers: tuple[torch.Tensor, ...]  # [W | spread(B^T) | b | 0 ...] (either part); or the fp8 weight and scales
    sources: tuple[Callable[[Sequence[Any]], torch.Tensor], ...]  # the call's tensors they are made from
    make: Callable[..., tuple[torch.Tensor, ...]]  # sources -> buffers
    stamp: tuple[Any, ...]


def register_constant(gm: fx.GraphModule, name: str, tensor: torch.Tensor) -> str:
    """``tensor`` as buffer ``name`` of ``gm`` (for a ``get_attr``); returns ``name``."""
    gm.register_buffer(name, tensor)
    sources = getattr(gm, "_param_name_to_source", None)
    if sources is not None:  # Dynamo's map for the buffers AOTAutograd lifts (static inputs): ours too
        sources[name] = ConstantSource(name)
    return name


class FoldedWeights:
    """The weight copies of one compiled graph (folded biases, fp8 weights), and the per-call check
    that keeps them current."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self._gm = gm
        self._position = {n: i for i, n in enumerate(gm.graph.find_nodes(op="placeholder"))}
        self._folds: list[_Fold] = []
        self._buffers = 0

    def __len__(self) -> int:
        return len(self._folds)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for f in self._folds for b in f.buffers)

    def add(
        self,
        site: GemmSite,
        example_inputs: Sequence[Any],
        fold_bias: bool = True,
        branch: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
        refit: torch.Tensor | None = None,
    ) -> str:
        """Make ``[W | b | 0 ...]`` for ``site`` (``fold_bias``), with ``branch``: ``[W | spread_2to4(B^T)]``
        (B: ``branch``, (R, N), a fused low-rank branch), before the bias columns if both, W's columns in
        ``order`` (option ``permute_channels``), W refitted first with ``refit`` (G of option ``refit``: W G^T);
        register it on the graph module; returns its name."""
        nk = site.weight_is_nk
        if fold_bias:
            assert site.bias is not None, "only GEMMs with a bias are folded"
            nodes, make = (site.weight, site.bias), lambda w, b: (_folded(w, nk, branch, b, order, refit),)
        else:
            nodes, make = (site.weight,), lambda w: (_folded(w, nk, branch, order=order, refit=refit),)
        (name,) = self._register(nodes, make, example_inputs)
        return name

    def add_fp8(
        self,
        site: GemmSite,
        example_inputs: Sequence[Any],
        order: torch.Tensor | None = None,
        refit: torch.Tensor | None = None,
    ) -> tuple[str, str]:
        """Quantise ``site``'s weight (refitted with ``refit``, its columns in ``order``) to e4m3 per output
        channel (``quantise_fp8_rows`` of the (N, K) weight), register the values and the float32 scales;
        returns their names."""
        nk = site.weight_is_nk
        wq, scale = self._register(
            (site.weight,), lambda w: quantise_fp8_rows(_folded(w, nk, order=order, refit=refit)), example_inputs
        )
        return wq, scale

    def _register(
        self, nodes: Sequence[fx.Node], make: Callable[..., tuple[torch.Tensor, ...]], example_inputs: Sequence[Any]
    ) -> tuple[str, ...]:
        sources = tuple(self._source(node) for node in nodes)
        tensors = [source(example_inputs) for source in sources]
        if any(_version(t) is None for t in tensors):
            _warn_unversioned()
        with torch.no_grad():
            fold = _Fold(tuple(b.contiguous() for b in make(*tensors)), sources, make, _stamp(*tensors))
        self._folds.append(fold)
        names = []
        for buffer in fold.buffers:
            name = f"_lynx_folded_weight_{self._buffers}"
            self._buffers += 1
            names.append(register_constant(self._gm, name, buffer))
        return tuple(names)

    def refresh(self, args: Sequence[Any]) -> None:
        """Re-make every fold whose sources are other tensors or were changed in place."""
        for fold in self._folds:
            tensors = [source(args) for source in fold.sources]
            if _stamp(*tensors) != fold.stamp:
                _fill(fold, tensors)

    def wrap(self, compiled: Callable[..., Any]) -> Callable[..., Any]:
        """``compiled`` (as Dynamo calls it: ``compiled(*args)``), refreshing the folds first."""
        if not self._folds:
            return compiled

        @functools.wraps(compiled)
        def run(*args: Any) -> Any:
            self.refresh(args)
            return compiled(*args)

        return run

    def _source(self, node: fx.Node) -> Callable[[Sequence[Any]], torch.Tensor]:
        if node.op == "placeholder":
            return operator.itemgetter(self._position[node])
        tensor = operator.attrgetter(str(node.target))(self._gm)  # get_attr: the module's own tensor
        return lambda args: tensor


def _folded(
    w: torch.Tensor,
    weight_is_nk: bool,
    branch: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    refit: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (N, K) weight, refitted (``semantics.refit_weight``), its columns in ``order``, with the branch's
    columns and the bias's."""
    w = w if weight_is_nk else w.t()
    w = w if refit is None else refit_weight(w, refit)
    w = w if order is None else w.index_select(1, order.to(w.device))
    w = w if branch is None else with_branch_columns(w, branch)
    return w if b is None else with_bias_column(w, b)


def _fill(fold: _Fold, tensors: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, new in zip(fold.buffers, fold.make(*tensors), strict=True):
            buffer.copy_(new)  # in place: the compiled graph holds the buffers
    fold.stamp = _stamp(*tensors)


def _stamp(*tensors: torch.Tensor) -> tuple[Any, ...]:
    """What changes when a tensor is replaced or updated in place."""
    return tuple((t.data_ptr(), _version(t)) for t in tensors)


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # a tensor made under torch.inference_mode() has no version counter
        return None


@functools.cache
def _warn_unversioned() -> None:
    log.warning(
        "lynx: fold_bias: weights created under torch.inference_mode() have no version counter; "
        "in-place changes to them are not seen by the folded copies: compile again after changing them"
    )
