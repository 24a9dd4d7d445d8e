"""Inductor lowering of ``lynx::compress_2to4``: prune + compress as Pointwise IR, fused with the producer.

Inductor inlines a pointwise producer (bias + GELU after an MLP up-projection, LayerNorm * (1 +
scale) + shift, a residual add) into whatever loads it. So instead of calling the standalone Triton
kernel on a materialised activation, this lowering describes cuSPARSELt's compressed buffer as nine
int64 Pointwise nodes over one iteration space and lets Inductor generate, and fuse, the kernel::

    index (tr, b, i, tc):  rows r_h = 64 tr + 16 b + 8 h + i (h = 0, 1), columns 32 tc .. 32 tc + 31
    values[h, w]  (8 nodes) 4 kept values of groups 8 tc + 2w, 2w + 1 of row r_h    -> one int64
    metadata      (1 node)  the 64-bit word of rows r_0, r_1 x groups 8 tc .. 8 tc + 7 -> one int64

Each node writes straight into its strided view of one flat int64 buffer (as ``ConcatKernel`` does
for ``cat``), the layout of ``cusparselt_layout`` being a permutation of these index digits. All
nine read the same 64 activation elements, so in the fused kernel Inductor's CSE loads them once:
the activation is read once, and the kept values plus metadata are written once.

The semantics are ``lynx_compile.prune_2to4`` followed by cuSPARSELt's choice of indices for groups
with fewer than two nonzeros (see ``cusparselt_layout``); tests compare the bytes with
``compress_reference`` and with the Triton kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import sympy
import torch
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler, register_lowering
from torch._inductor.virtualized import V, ops

from .cusparselt_layout import TILE_COLS, TILE_ROWS, compressed_int64_numel

INT64_VALUES = 4  # 16-bit values per int64 word


def eligible(m: int, k: int, dtype: torch.dtype) -> bool:
    """What the lowering handles: 16-bit, whole 64 x 32 metadata tiles (the op pads m to 64)."""
    return dtype in (torch.bfloat16, torch.float16) and m % TILE_ROWS == 0 and k % TILE_COLS == 0


def _static(size: sympy.Expr) -> int | None:
    return int(size) if isinstance(size, (int, sympy.Integer)) else None


def register() -> None:
    """Install the lowering (idempotent). Ineligible inputs fall back to the custom op's kernel."""
    if getattr(register, "done", False):
        return
    register.done = True
    op = torch.ops.lynx.compress_2to4.default
    fallback = fallback_handler(op, add_to_fallback_set=False)

    @register_lowering(op, type_promotion_kind=None)
    def _lower(x: ir.TensorBox, rows: int, method: str) -> ir.TensorBox:
        m_in, k = (_static(s) for s in x.get_size())
        if method != "inductor" or m_in is None or k is None or not eligible(rows, k, x.get_dtype()):
            return fallback(x, rows, method)
        return _compress(x, m_in, rows, k)


def _compress(x: ir.TensorBox, m_in: int, rows: int, k: int) -> ir.TensorBox:
    dtype, device = x.get_dtype(), x.get_device()
    load = _masked_loader(x, m_in, rows)
    numel = compressed_int64_numel(rows, k, dtype)
    out = ir.ConcatKernel(
        name=None,
        layout=ir.FixedLayout(device=device, dtype=torch.int64, size=[numel], stride=[1]),
        inputs=[],
    )
    storage = ir.StorageBox(out)
    ranges = [rows // TILE_ROWS, 4, 8, k // TILE_COLS]  # (tr, b, i, tc)
    row_stride = k // 2 // INT64_VALUES  # int64 words per row of values
    views: list[tuple[Callable, list[int], int]] = []
    for h in range(2):
        for w in range(4):
            strides = [64 * row_stride, 16 * row_stride, row_stride, 4]
            views.append((functools.partial(_values_word, load, dtype, h, w), strides, 8 * h * row_stride + w))
    meta_base = rows * row_stride  # metadata starts right after the values
    meta_strides = [(k // TILE_COLS) * 32, 8, 1, 32]  # a tile is 256 B = 32 words, row tiles outermost
    views.append((functools.partial(_metadata_word, load, dtype), meta_strides, meta_base))
    for inner_fn, strides, offset in views:
        node = ir.Pointwise.create(device=device, dtype=torch.int64, inner_fn=inner_fn, ranges=ranges)
        dst = ir.ReinterpretView(
            data=storage,
            layout=ir.FixedLayout(device=device, dtype=torch.int64, size=ranges, stride=strides, offset=offset),
        )
        out.inputs.append(ir.ConcatKernel.realize_into(node, dst))
    out.name = V.graph.register_buffer(out)
    out.inputs = ir.ConcatKernel.unwrap_storage(out.inputs)
    V.graph.register_operation(out)
    return ir.TensorBox(storage)


def _masked_loader(x: ir.TensorBox, m_in: int, rows: int) -> Callable[[sympy.Expr, sympy.Expr], object]:
    """Loads x[r, c]; the rows padded up to ``rows`` read as zeros."""
    loader = x.make_loader()
    if m_in == rows:
        return lambda r, c: loader([r, c])

    def load(r: sympy.Expr, c: sympy.Expr):
        inside = ops.lt(ops.index_expr(r, torch.int64), ops.constant(m_in, torch.int64))
        return ops.masked(inside, lambda: loader([r, c]), 0.0)

    return load


def _row(index: Sequence[sympy.Expr], h: int) -> sympy.Expr:
    tr, b, i, _ = index
    return 64 * tr + 16 * b + 8 * h + i


_INF_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _group(load, dtype: torch.dtype, r: sympy.Expr, g: sympy.Expr) -> tuple[object, object, object, object]:
    """(i0, i1, bits at i0, bits at i1) of group g of row r, each an int64 value.

    Everything works on the 16-bit patterns: the activation is rounded to its dtype by the bitcast
    (an inlined producer computes in float32 and rounds only when it stores, so this is exactly the
    tensor a separate producer kernel would write), and for IEEE formats the order of |x| is the
    integer order of ``bits & 0x7FFF``; NaN patterns clamp to inf's, so NaN ties with inf.
    """
    bits = [_bits(load(r, 4 * g + j), dtype) for j in range(4)]
    keys = [ops.minimum(ops.bitwise_and(b, _i64(0x7FFF)), _i64(_INF_BITS[dtype])) for b in bits]
    kept = []
    for i in range(4):
        beaten = _i64(0)
        for j in range(4):
            if j != i:
                wins = ops.ge(keys[j], keys[i]) if j < i else ops.gt(keys[j], keys[i])
                beaten = ops.add(beaten, ops.where(wins, _i64(1), _i64(0)))
        kept.append(ops.lt(beaten, _i64(2)))
    # the pruned group, then cuSPARSELt's index choice on it: -0.0 is zero, NaN is not
    pruned = [ops.where(kept[i], bits[i], _i64(0)) for i in range(4)]
    nonzero = [ops.logical_and(kept[i], ops.gt(keys[i], _i64(0))) for i in range(4)]
    count = _i64(0)
    for nz in nonzero:
        count = ops.add(count, ops.where(nz, _i64(1), _i64(0)))
    first = _select(nonzero, [0, 1, 2, 3], default=3)
    last = _select(nonzero[::-1], [3, 2, 1, 0], default=0)
    i1 = ops.where(ops.eq(count, _i64(2)), last, _i64(3))
    i0 = ops.where(ops.logical_and(ops.gt(count, _i64(0)), ops.lt(first, i1)), first, _i64(2))
    return i0, i1, _pick(pruned, i0), _pick(pruned, i1)


def _i64(value: int):
    return ops.constant(value, torch.int64)


def _bits(value, dtype: torch.dtype):
    """The 16 bits of ``value`` stored as ``dtype``, as a non-negative int64."""
    raw = ops.to_dtype(ops.to_dtype_bitcast(ops.to_dtype(value, dtype), torch.int16, dtype), torch.int64)
    return ops.bitwise_and(raw, _i64(0xFFFF))


def _select(flags: Sequence[object], indices: Sequence[int], *, default: int):
    """The index of the first true flag, as an int64 value."""
    out = _i64(default)
    for flag, index in reversed(list(zip(flags, indices))):
        out = ops.where(flag, _i64(index), out)
    return out


def _pick(values: Sequence[object], index):
    out = values[3]
    for j in (2, 1, 0):
        out = ops.where(ops.eq(index, _i64(j)), values[j], out)
    return out


def _values_word(load, dtype: torch.dtype, h: int, w: int, index: Sequence[sympy.Expr]):
    """Kept values of groups 8 tc + 2w and 8 tc + 2w + 1 of row r_h, low bits first."""
    tc = index[3]
    r = _row(index, h)
    word = _i64(0)
    for n, g in enumerate((8 * tc + 2 * w, 8 * tc + 2 * w + 1)):
        _, _, v0, v1 = _group(load, dtype, r, g)
        word = ops.bitwise_or(word, ops.bitwise_left_shift(v0, _i64(32 * n)))
        word = ops.bitwise_or(word, ops.bitwise_left_shift(v1, _i64(32 * n + 16)))
    return word


def _metadata_word(load, dtype: torch.dtype, index: Sequence[sympy.Expr]):
    """Nibble (i0 | i1 << 2) of row r_h, group 8 tc + 4q + j at bit 16 j + 8 q + 4 h."""
    tc = index[3]
    word = _i64(0)
    for h in range(2):
        r = _row(index, h)
        for q in range(2):
            for j in range(4):
                i0, i1, _, _ = _group(load, dtype, r, 8 * tc + 4 * q + j)
                nibble = ops.bitwise_or(i0, ops.bitwise_left_shift(i1, _i64(2)))
                shift = _i64(16 * j + 8 * q + 4 * h)
                word = ops.bitwise_or(word, ops.bitwise_left_shift(nibble, shift))
    return word
