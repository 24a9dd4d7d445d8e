"""Inductor lowering of ``lynx::compress_2to4`` (and of ``compress_2to4_norms``, for option ``compensate``, and
``compress_fp8``, for ``precision="fp8"``): a Triton template that takes the producer as its prologue.

The kernel is the standalone one (``prune_compress``: ``select_2to4`` and ``metadata_words`` on a
(BLOCK_M, BLOCK_K) tile per program), but the activation comes in through the template's
``load_input``. When the producer is pointwise (bias + GELU after an MLP up-projection, a residual
add, a pointwise ``cat``) and feeds only this kernel, Inductor's prologue fusion computes it right
there, on the whole tile with vector loads, and the dense activation is never written. Otherwise
(a norm's output, which Inductor computes inside the norm's reduction kernel; a GEMM's or
attention's output) ``load_input`` is a plain load of the tensor in memory.

The output is the op's flat int64 buffer: the kept values four to a word (row-major, rows x k/8
words), then cuSPARSELt's metadata tiles, written by two ``store_output`` calls. Rows past the
activation's (up to ``rows``, a multiple of 64) are masked loads: zeros, as cuSPARSELt's padding.

History (docs/design.md, "Producer fusion"): two earlier designs described the compressed buffer
as Inductor Pointwise IR. Inductor then gives each lane its 8 elements as 8 scalar loads, and the
fused kernel was instruction-bound and slower than the unfused pair; this one compiles to the
standalone kernel's 16-byte loads.

The fp8 template (``_FP8_SOURCE``) needs each row's amax before it quantises anything, and a prologue
can only be computed where the template loads it: so a program holds whole rows (BLOCK_K, a power of two
>= K, masked), takes their amax from the tile it loaded, and then prunes, quantises and compresses as
``prune_quantise_compress`` does, with the same helpers. The graph computes no amax for it (``amax`` is
None): an amax reduction reading x would be a second consumer of the producer, which keeps Inductor from
fusing it in. Its one uint8 output holds the e4m3 values, the metadata and then the float32 row scales.

Templates need a Triton GPU device: elsewhere (and for shapes the template does not take) the
op's own kernel runs.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy
import torch
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler, lowerings, register_lowering
from torch._inductor.select_algorithm import SymbolicGridFn, TritonTemplate

from ..report import PruneSite
from ..semantics import FP8, FP8_SCALE_EXP_MIN, NORM_CHUNK, SPARSE_DTYPES
from .cusparselt_layout import FP8_MULTIPLE, FP8_TILE_COLS, TILE_COLS, TILE_ROWS, compressed_int64_numel
from .prune_compress import MAGNITUDE_BITS
from .prune_quantise_compress import HW_CAST

aten = torch.ops.aten

_SOURCE = r"""
{{def_kernel("X")}}
    M = {{size("X", 0)}}
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    idx_m = rows[:, None]
    idx_k = cols[None, :]
    # rows past M (up to the padded row count) read as zeros: the padding is never materialised
    x_mask = (idx_m < M) & (idx_k < K)
    {{load_input("X", "x", ("idx_m", "idx_k"), mask="x_mask", index_shape=("BLOCK_M", "BLOCK_K"))}}
    # A fused prologue computes in float32 and Inductor rounds it to X's dtype, as a producer kernel
    # would when storing it; the cast keeps the selection on 16-bit patterns whatever Inductor does.
    # Inductor's prologue loads leave masked lanes undefined (no `other`): zero the padding rows here.
    x = tl.where(x_mask, x.to(DTYPE), 0.0)
    first, last, v_first, v_last = select_2to4(x, ABS_MASK, MAG_MAX)

    # kept values of groups 2w and 2w + 1 as one little-endian int64 word w of the row
    f_even, f_odd = tl.split(tl.reshape(v_first.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF,
                                        (BLOCK_M, BLOCK_K // 8, 2)))
    l_even, l_odd = tl.split(tl.reshape(v_last.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF,
                                        (BLOCK_M, BLOCK_K // 8, 2)))
    values = f_even | (l_even << 16) | (f_odd << 32) | (l_odd << 48)
    value_index = rows[:, None] * (K // 8) + (pid_k * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8))[None, :]
    value_mask = value_index < ROWS * (K // 8)  # always true; store_output wants a mask
    {{store_output(("value_index",), "values", "value_mask", val_shape=("BLOCK_M", "BLOCK_K // 8"))}}

    # cuSPARSELt's metadata tiles, right after the values
    words, word_index, _ = metadata_words(first, last, pid_m, pid_k, K // 32)  # K % 32 == 0: all in K
    meta_index = ROWS * (K // 8) + word_index
    meta_mask = word_index < ROWS * K // 64  # always true
    {{store_output(("meta_index",), "words", "meta_mask", val_shape=("BLOCK_M // 16", "8", "BLOCK_K // 32"))}}
"""

# Option compensate: the same kernel also writes norm_partials(x) after the metadata, one int64 word per row
# and NORM_CHUNK columns, (kept sum of squares << 32) | full sum of squares, both float32 bits (Inductor's
# scheduler fuses no prologue into a template that mutates a second buffer, so the sums share the output).
# Each tile holds whole chunks: BLOCK_K is a multiple of NORM_CHUNK (K % NORM_CHUNK == 0).
_NORMS = r"""
    full, kept = chunk_sums_of_squares(x, v_first, v_last, NORM_CHUNK)
    packed = (full.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) | (
        kept.to(tl.int32, bitcast=True).to(tl.int64) << 32
    )
    chunk = pid_k * (BLOCK_K // NORM_CHUNK) + tl.arange(0, BLOCK_K // NORM_CHUNK)
    norm_index = NORMS_AT + rows[:, None] * (K // NORM_CHUNK) + chunk[None, :]
    norm_mask = (rows < M)[:, None] & (chunk < K // NORM_CHUNK)[None, :]
    {{store_output(("norm_index",), "packed", "norm_mask", val_shape=("BLOCK_M", "BLOCK_K // NORM_CHUNK"))}}
"""

_IMPORTS = "from lynx_compile.codegen.prune_compress import chunk_sums_of_squares, metadata_words, select_2to4\n"

# precision="fp8": whole rows per program (BLOCK_K >= K), the amax from the loaded tile (as 16-bit magnitude
# bits: a NaN's above inf's, which row_exponents expects), then prune_quantise_compress's steps
_FP8_SOURCE = r"""
{{def_kernel("X")}}
    M = {{size("X", 0)}}
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    idx_m = rows[:, None]
    idx_k = cols[None, :]
    x_mask = (idx_m < M) & (idx_k < K)
    {{load_input("X", "x", ("idx_m", "idx_k"), mask="x_mask", index_shape=("BLOCK_M", "BLOCK_K"))}}
    x = tl.where(x_mask, x.to(DTYPE), 0.0)
    amax_bits = tl.max(x.to(tl.int16, bitcast=True).to(tl.int32) & ABS_MASK, axis=1)
    s, scale = row_exponents(amax_bits, MAG_MAX, IS_BF16, EXP_MIN)
    first, last, q_first, q_last = select_quantised(x, s[:, None], ABS_MASK, MAG_MAX, IS_BF16, HW_CAST)

    vals = tl.reshape(tl.join(q_first, q_last), (BLOCK_M, BLOCK_K // 2))
    vcols = tl.arange(0, BLOCK_K // 2)
    value_index = rows[:, None] * (K // 2) + vcols[None, :]
    value_mask = (rows < ROWS)[:, None] & (vcols < K // 2)[None, :]
    {{store_output(("value_index",), "vals", "value_mask", val_shape=("BLOCK_M", "BLOCK_K // 2"))}}

    byte, where, in_k = fp8_metadata_bytes(first, last, rows, 0, BLOCK_K, META_COL_TILES)
    meta_index = META_AT + where
    meta_mask = in_k & (rows < ROWS)[:, None]
    {{store_output(("meta_index",), "byte", "meta_mask", val_shape=("BLOCK_M", "BLOCK_K // 8"))}}

    # the float32 row scales, little-endian bytes, after the compressed operand (an index named s... would
    # read as one of Inductor's size symbols)
    four = tl.arange(0, 4)
    scale_bytes = (scale.to(tl.int32, bitcast=True)[:, None] >> (8 * four[None, :])) & 0xFF
    bytes_index = SCALES_AT + rows[:, None] * 4 + four[None, :]
    scale_mask = (rows < M)[:, None] & (four < 4)[None, :]
    {{store_output(("bytes_index",), "scale_bytes", "scale_mask", val_shape=("BLOCK_M", "4"))}}
"""
_FP8_IMPORTS = (
    "from lynx_compile.codegen.prune_quantise_compress import fp8_metadata_bytes, row_exponents, select_quantised\n"
)


@SymbolicGridFn
def _grid(rows, k, meta, *, cdiv):
    return cdiv(rows, meta["BLOCK_M"]), cdiv(k, meta["BLOCK_K"]), 1


_TEMPLATE = TritonTemplate(name="lynx_prune_compress", grid=_grid, source=_IMPORTS + _SOURCE)
_TEMPLATE_NORMS = TritonTemplate(
    name="lynx_prune_compress_norms",
    grid=_grid,
    source=_IMPORTS + _SOURCE + _NORMS,
)
_TEMPLATE_FP8 = TritonTemplate(name="lynx_prune_quantise_compress", grid=_grid, source=_FP8_IMPORTS + _FP8_SOURCE)

# (BLOCK_M, BLOCK_K, num_warps), the first whose BLOCK_K divides K. BLOCK_M divides the 64-row
# metadata tile. With a GELU prologue the kernel is instruction-bound and 16-32 elements per thread
# beat 64 (16 x 512, 4 warps: 1.4x slower at 4096 x 12288; docs/design.md, "Producer fusion")
_TILES = ((16, 256, 4), (16, 128, 4), (16, 64, 2), (16, 32, 1))
TEMPLATE_DEVICES = ("cuda",)  # where Inductor builds Triton templates (sparse tensor cores are CUDA's)
# fp8: elements per program (whole rows: one row when K > 8192) and per thread
_FP8_PROGRAM_ELEMENTS, _FP8_THREAD_ELEMENTS = 8192, 32


def eligible(m: int, k: int, dtype: torch.dtype) -> bool:
    """What the template handles: 16-bit, whole 64 x 32 metadata tiles (the op pads m to 64)."""
    return dtype in SPARSE_DTYPES and m % TILE_ROWS == 0 and k % TILE_COLS == 0


def eligible_fp8(m: int, k: int, dtype: torch.dtype) -> bool:
    """What the fp8 template handles: 16-bit, K a multiple of 32 (cuSPARSELt's e4m3 minimum), whole
    64-row metadata tiles."""
    return dtype in SPARSE_DTYPES and m % TILE_ROWS == 0 and k % FP8_MULTIPLE == 0


def _static(size: sympy.Expr) -> int | None:
    return int(size) if isinstance(size, (int, sympy.Integer)) else None


def _template_k(x: ir.TensorBox, rows: int, method: str, fits: Callable[[int, int, torch.dtype], bool]) -> int | None:
    """x's K where a template takes the op (method ``fused``, a device with templates, a static K and a shape
    ``fits`` accepts), else None: the op's own kernel runs."""
    k = _static(x.get_size()[1])
    if method != PruneSite.FUSED or x.get_device().type not in TEMPLATE_DEVICES or k is None:
        return None
    return k if fits(rows, k, x.get_dtype()) else None


def register() -> None:
    """Install the lowering (idempotent). Everything it does not take runs the custom op's kernel."""
    if getattr(register, "done", False):
        return
    register.done = True
    op = torch.ops.lynx.compress_2to4.default
    fallback = fallback_handler(op, add_to_fallback_set=False)

    @register_lowering(op, type_promotion_kind=None)
    def _lower(
        x: ir.TensorBox, rows: int, method: str, ones_column: bool = False, order: ir.TensorBox | None = None
    ) -> ir.TensorBox:
        k = _template_k(x, rows, method, eligible)
        # the template has no ones column (a folded bias) and gathers no channel order: the policy never asks
        if k is None or ones_column or order is not None:
            return fallback(x, rows, method, ones_column, order)
        return _compress(x, rows, k)

    op_norms = torch.ops.lynx.compress_2to4_norms.default
    fallback_norms = fallback_handler(op_norms, add_to_fallback_set=False)

    @register_lowering(op_norms, type_promotion_kind=None)
    def _lower_norms(
        x: ir.TensorBox, rows: int, method: str, order: ir.TensorBox | None = None
    ) -> tuple[ir.TensorBox, ir.TensorBox]:
        k = _template_k(x, rows, method, lambda m, k, dtype: k % NORM_CHUNK == 0 and eligible(m, k, dtype))
        if k is None or order is not None:
            return fallback_norms(x, rows, method, order)
        return _compress_norms(x, rows, k)

    @register_lowering(torch.ops.lynx.per_row.default, type_promotion_kind=None)
    def _lower_per_row(scale: ir.TensorBox) -> ir.TensorBox:
        scale.realize()  # its own buffer: consumers load it, they do not recompute it (ops.per_row)
        return scale

    op_fp8 = torch.ops.lynx.compress_fp8.default
    fallback_fp8 = fallback_handler(op_fp8, add_to_fallback_set=False)

    @register_lowering(op_fp8, type_promotion_kind=None)
    def _lower_fp8(
        x: ir.TensorBox, amax: ir.TensorBox | None, rows: int, method: str, order: ir.TensorBox | None = None
    ) -> tuple[ir.TensorBox, ir.TensorBox]:
        k = _template_k(x, rows, method, eligible_fp8)
        # the template takes the amax from its own load of x, and gathers no channel order
        if k is None or amax is not None or order is not None:
            return fallback_fp8(x, amax, rows, method, order)
        return _compress_fp8(x, rows, k)


def _compress(x: ir.TensorBox, rows: int, k: int) -> ir.TensorBox:
    """The template's int64 output: the compressed bytes."""
    layout = ir.FixedLayout(
        device=x.get_device(), dtype=torch.int64, size=[compressed_int64_numel(rows, k, x.get_dtype())], stride=[1]
    )
    return _generate(_TEMPLATE, x, layout, rows, k, next(t for t in _TILES if k % t[1] == 0))


def _compress_norms(x: ir.TensorBox, rows: int, k: int) -> tuple[ir.TensorBox, ir.TensorBox]:
    """The compensated template's one int64 buffer as the op's two outputs: the compressed bytes (``at``
    words), and norm_partials' (2, M, K // NORM_CHUNK) float32 from the packed words after them."""
    at, x_rows, chunks = compressed_int64_numel(rows, k, x.get_dtype()), x.get_size()[0], k // NORM_CHUNK
    layout = ir.FixedLayout(device=x.get_device(), dtype=torch.int64, size=[at + x_rows * chunks], stride=[1])
    tile = next(t for t in _TILES if t[1] % NORM_CHUNK == 0 and k % t[1] == 0)
    out = _generate(_TEMPLATE_NORMS, x, layout, rows, k, tile, NORM_CHUNK=NORM_CHUNK, NORMS_AT=at)
    compressed = lowerings[aten.slice.Tensor](out, 0, 0, at)
    words = lowerings[aten.slice.Tensor](out, 0, at, at + x_rows * chunks)
    pairs = lowerings[aten.view.dtype](words, torch.float32)  # little-endian words: full, then kept
    pairs = lowerings[aten.view.default](pairs, [x_rows, chunks, 2])
    return compressed, lowerings[aten.permute.default](pairs, [2, 0, 1])


def _generate(
    template: TritonTemplate,
    x: ir.TensorBox,
    layout: ir.FixedLayout,
    rows: int,
    k: int,
    tile: tuple[int, int, int],
    **constants: object,
) -> ir.TensorBox:
    """One of the templates on x with its (BLOCK_M, BLOCK_K, num_warps) tile and the constants every template
    reads (x's magnitude bits and dtype, K, the padded rows), plus its own."""
    block_m, block_k, warps = tile
    abs_mask, mag_max = MAGNITUDE_BITS[x.get_dtype()]
    choice = template.generate(
        input_nodes=(ir.ExternKernel.realize_input(x),),  # a pointwise producer stays a prologue candidate
        layout=layout,
        num_stages=1,
        num_warps=warps,
        call_sizes=[rows, k],
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        K=k,
        ROWS=rows,
        ABS_MASK=abs_mask,
        MAG_MAX=mag_max,
        DTYPE="tl.bfloat16" if x.get_dtype() == torch.bfloat16 else "tl.float16",
        **constants,
    )
    return choice.output_node()


def _compress_fp8(x: ir.TensorBox, rows: int, k: int) -> tuple[ir.TensorBox, ir.TensorBox]:
    """The fp8 template's uint8 output as the op's two: the compressed operand (int64 words) and the
    float32 row scales stored after it."""
    dtype = x.get_dtype()
    x_rows = x.get_size()[0]
    at = compressed_int64_numel(rows, k, FP8) * 8
    layout = ir.FixedLayout(device=x.get_device(), dtype=torch.uint8, size=[at + 4 * x_rows], stride=[1])
    block_k = 1 << (k - 1).bit_length()
    block_m = min(TILE_ROWS, max(1, _FP8_PROGRAM_ELEMENTS // block_k))
    warps = max(1, min(16, block_m * block_k // (32 * _FP8_THREAD_ELEMENTS)))
    out = _generate(
        _TEMPLATE_FP8,
        x,
        layout,
        rows,
        k,
        (block_m, block_k, warps),
        META_AT=rows * k // 2,
        META_COL_TILES=-(-k // FP8_TILE_COLS),
        SCALES_AT=at,
        IS_BF16=dtype == torch.bfloat16,
        EXP_MIN=FP8_SCALE_EXP_MIN,
        HW_CAST=HW_CAST,
    )
    compressed = lowerings[aten.slice.Tensor](out, 0, 0, at)
    scales = lowerings[aten.slice.Tensor](out, 0, at, at + 4 * x_rows)
    return lowerings[aten.view.dtype](compressed, torch.int64), lowerings[aten.view.dtype](scales, torch.float32)
