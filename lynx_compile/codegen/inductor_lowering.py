"""Inductor lowering of ``lynx::compress_2to4``: prune + compress as Pointwise IR, fused with the producer.

Inductor inlines a pointwise producer (bias + GELU after an MLP up-projection, LayerNorm * (1 +
scale) + shift, a residual add) into whatever loads it. So instead of calling the standalone Triton
kernel on a materialised activation, this lowering describes cuSPARSELt's compressed buffer as
Pointwise IR and lets Inductor generate, and fuse, the kernels::

    1. over (r, w), w < k/8, fused with the producer: reads x[r, 8w .. 8w + 7] (two groups), writes
       values[r, w]   the 4 kept values as one int64 word, straight into the compressed buffer
       nibbles[r, w]  the two groups' index nibbles as one byte (a small uint8 buffer, k/8 per row)
    2. over the 64 x 32 metadata tiles: packs 16 nibbles into each 64-bit word of cuSPARSELt's
       metadata layout, right after the values

Each lane of step 1 touches 8 elements, as the standalone kernel's threads do, so the fused kernel
stays small (Triton compiles it in seconds). Packing the metadata tiles in the same kernel would
need 64 elements per lane, and a kernel that took minutes to compile. The activation is read once
and never written dense; step 2 moves 2 x 1/8 byte per element more than a perfect single kernel.
Both steps write into views of one flat int64 buffer, as ``ConcatKernel`` does for ``cat``.

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
    words = k // 8  # int64 words per row of kept values (2 groups each) = bytes per row of nibbles
    out = ir.ConcatKernel(
        name=None,
        layout=ir.FixedLayout(
            device=device, dtype=torch.int64, size=[compressed_int64_numel(rows, k, dtype)], stride=[1]
        ),
        inputs=[],
    )
    storage = ir.StorageBox(out)
    # 1. fused with the producer: the kept values, and the two groups' nibbles as one byte
    values = ir.Pointwise.create(
        device=device, dtype=torch.int64, inner_fn=functools.partial(_values_word, load, dtype), ranges=[rows, words]
    )
    nibbles = ir.Pointwise.create(
        device=device, dtype=torch.uint8, inner_fn=functools.partial(_nibble_byte, load, dtype), ranges=[rows, words]
    )
    nibbles.realize()
    # 2. a small second kernel: nibbles -> cuSPARSELt's 64 x 32 metadata tiles
    tiles = [rows // TILE_ROWS, 4, 8, k // TILE_COLS]  # (tr, b, i, tc)
    metadata = ir.Pointwise.create(
        device=device, dtype=torch.int64, inner_fn=functools.partial(_metadata_word, nibbles.make_loader()), ranges=tiles
    )
    parts = [
        (values, [rows, words], [words, 1], 0),
        # a tile is 256 B = 32 words, row tiles outermost; the metadata starts right after the values
        (metadata, tiles, [(k // TILE_COLS) * 32, 8, 1, 32], rows * words),
    ]
    for node, size, stride, offset in parts:
        dst = ir.ReinterpretView(
            data=storage, layout=ir.FixedLayout(device=device, dtype=torch.int64, size=size, stride=stride, offset=offset)
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
    """(i0, i1, bits at i0, bits at i1) of group g of row r, each an int32 value.

    The selection of the standalone kernel (``prune_compress``), in Inductor's ops. Everything works
    on the 16-bit patterns: the bitcast rounds the activation to its dtype (an inlined producer
    computes in float32 and rounds only when it stores, so this is exactly the tensor a separate
    producer kernel would write), and for IEEE formats the order of |x| is the integer order of
    ``bits & 0x7FFF``; NaN patterns clamp to inf's, so NaN ties with inf. Keys (magnitude, then
    3 - index) are unique in a group: a min/max network gives the top two and their indices.
    """
    bits = [_bits(load(r, 4 * g + j), dtype) for j in range(4)]
    mags = [ops.minimum(ops.bitwise_and(b, _i32(0x7FFF)), _i32(_INF_BITS[dtype])) for b in bits]
    keys = [ops.bitwise_or(ops.bitwise_left_shift(m, _i32(2)), _i32(3 - j)) for j, m in enumerate(mags)]
    hi01, lo01 = ops.maximum(keys[0], keys[1]), ops.minimum(keys[0], keys[1])
    hi23, lo23 = ops.maximum(keys[2], keys[3]), ops.minimum(keys[2], keys[3])
    top = ops.maximum(hi01, hi23)
    second = ops.maximum(ops.minimum(hi01, hi23), ops.maximum(lo01, lo23))
    # cuSPARSELt stores the indices of the pruned group's nonzeros (NaN/inf count, +-0 does not),
    # topped up with the highest free indices (3, then 2) when there are fewer than two.
    i_top = ops.sub(_i32(3), ops.bitwise_and(top, _i32(3)))
    i_second = ops.sub(_i32(3), ops.bitwise_and(second, _i32(3)))
    two = ops.ge(second, _i32(4))  # the second-largest magnitude is nonzero
    one = ops.ge(top, _i32(4))
    first = ops.where(two, ops.minimum(i_top, i_second), ops.where(one, ops.minimum(i_top, _i32(2)), _i32(2)))
    last = ops.where(two, ops.maximum(i_top, i_second), _i32(3))
    # the stored values are the pruned group's elements bit for bit (a kept -0.0 stays -0.0)
    kept2 = ops.where(ops.ge(keys[2], second), bits[2], _i32(0))
    kept3 = ops.where(ops.ge(keys[3], second), bits[3], _i32(0))
    v_first = ops.where(
        ops.eq(first, _i32(0)), bits[0], ops.where(ops.eq(first, _i32(1)), bits[1], kept2)
    )
    v_last = ops.where(ops.eq(last, _i32(3)), kept3, ops.where(ops.eq(last, _i32(2)), bits[2], bits[1]))
    return first, last, v_first, v_last


def _i32(value: int):
    return ops.constant(value, torch.int32)


def _i64(value: int):
    return ops.constant(value, torch.int64)


def _bits(value, dtype: torch.dtype):
    """The 16 bits of ``value`` stored as ``dtype``, as a non-negative int32."""
    raw = ops.to_dtype(ops.to_dtype_bitcast(ops.to_dtype(value, dtype), torch.int16, dtype), torch.int32)
    return ops.bitwise_and(raw, _i32(0xFFFF))


def _values_word(load, dtype: torch.dtype, index: Sequence[sympy.Expr]):
    """Kept values of groups 2w and 2w + 1 of row r, low bits first."""
    r, w = index
    word = _i64(0)
    for n in range(2):
        _, _, v0, v1 = _group(load, dtype, r, 2 * w + n)
        for value, shift in ((v0, 32 * n), (v1, 32 * n + 16)):
            word = ops.bitwise_or(word, ops.bitwise_left_shift(ops.to_dtype(value, torch.int64), _i64(shift)))
    return word


def _nibble_byte(load, dtype: torch.dtype, index: Sequence[sympy.Expr]):
    """Nibbles (i0 | i1 << 2) of groups 2w (low) and 2w + 1 (high) of row r."""
    r, w = index
    byte = _i32(0)
    for n in range(2):
        i0, i1, _, _ = _group(load, dtype, r, 2 * w + n)
        nibble = ops.bitwise_or(i0, ops.bitwise_left_shift(i1, _i32(2)))
        byte = ops.bitwise_or(byte, ops.bitwise_left_shift(nibble, _i32(4 * n)))
    return ops.to_dtype(byte, torch.uint8)


def _metadata_word(load_nibbles, index: Sequence[sympy.Expr]):
    """Nibble of row r_h = 64 tr + 16 b + 8 h + i, group 8 tc + 4 q + j at bit 16 j + 8 q + 4 h."""
    tc = index[3]
    word = _i64(0)
    for h in range(2):
        r = _row(index, h)
        for q in range(2):
            for j in range(4):
                g = 4 * q + j  # group of the tile: byte 4 tc + g // 2, nibble g % 2
                byte = ops.to_dtype(load_nibbles([r, 4 * tc + g // 2]), torch.int64)
                nibble = ops.bitwise_and(ops.bitwise_right_shift(byte, _i64(4 * (g % 2))), _i64(0xF))
                word = ops.bitwise_or(word, ops.bitwise_left_shift(nibble, _i64(16 * j + 8 * q + 4 * h)))
    return word
