"""cuSPARSELt 0.8's compressed 2:4 layout for 16-bit row-major sparse operands, written down.

NVIDIA does not document what ``cusparseLtSpMMACompress2`` writes. This is what
``torch._cslt_compress`` returns for a row-major (m, k) bf16/fp16 matrix on an H100 with cuSPARSELt
0.8.0 (torch 2.11), worked out from recorded outputs (docs/design.md, "cuSPARSELt's compressed
layout") and checked bit for bit against live cuSPARSELt: the recorded fixtures
(``tools/record_cslt_fixtures.py``) and ``tests/gpu/test_gpu_kernels.py`` (random shapes, and up to
16384 x 15360). fp8 and int8 use other tile shapes: probe them before adding them here.

Shape. m and k must be multiples of 16 (cuSPARSELt refuses others; lynx pads the rows further, to
whole 64-row metadata tiles: ``padded_rows``). torch returns a tensor of x's
dtype and shape ``(m, ceil(nbytes / (2 m)))`` over a buffer of ``nbytes`` bytes::

    nbytes = m * k                                      # kept values: m x k/2 elements of 2 bytes
           + max(R64 * K32, R32 * K64) / 8              # metadata, 4 bits per group of 4
    (Rn = m rounded up to a multiple of n, Kn = k rounded up to a multiple of n)

Values (bytes [0, m*k)). Row-major (m, k/2): group g of row r (columns 4g..4g+3) puts its two kept
values at columns 2g and 2g+1, the lower source index first.

Which two indices a group keeps. Nonzero means ``x != 0`` as a float compare: NaN, +-inf and
subnormals are nonzero, -0.0 is zero. Exactly two nonzeros: those two. Fewer: the nonzero ones
plus the highest remaining indices, so no nonzero -> (2, 3), one at p < 3 -> (p, 3), one at 3 ->
(2, 3). The value slots hold the input's elements at the chosen indices bit for bit (a chosen
``-0.0`` stays ``-0.0``). Groups with 3 or 4 nonzeros are not 2:4 and corrupt neighbouring
groups' values; they never reach cuSPARSELt here.

Metadata (bytes [m*k, m*k + R64*K32/8)). The group's nibble is ``i0 | i1 << 2`` (i0 < i1 the kept
indices; an all-zero group is 0b1110 = 0xE). The matrix of nibbles is padded to R64 rows x K32/4
groups with 0xE (padding behaves as zeros) and cut into tiles of 64 rows x 32 columns (8 groups),
stored one after another, 256 bytes each, row tiles outermost: tile (tr, tc) starts at byte
``(tr * K32/32 + tc) * 256``. Inside a tile, the 8 bytes at ``64 b + 8 i`` (b: 16-row block 0..3,
i: 0..7) form one little-endian 64-bit word holding rows ``16b + i`` and ``16b + 8 + i``; the nibble
of row ``16b + 8h + i``, group ``4q + j`` of the tile sits at bit ``16 j + 8 q + 4 h``. That is: a
byte pairs a row with the row 8 below it (upper row in the low nibble), the two bytes of a 16-bit
word are groups j and j + 4, and the four words run over j = 0..3.

Past the metadata. ``max(R32*K64, R64*K32)`` (fitted to every shape recorded) is cuSPARSELt's
allocation, seemingly room for the tiles of either orientation; it writes the row-major tiles
only. Bytes past ``m*k + R64*K32/8`` (and those rounding the buffer up to whole rows of the torch
tensor) are never written: torch's tensor holds whatever the caching allocator held before.
``significant_numel`` says where the data ends; this module and the Triton kernel write zeros
after it, and comparisons must stop there.

float8_e4m3fn (option ``precision="fp8"``), from the probe recorded in ``tests/data/cslt_fp8_fixtures.pt``.
m and k must be multiples of 32 (16 is refused). Values as above, one byte each: bytes [0, m*k/2).
Metadata: the same nibbles (including 0xE for empty groups and padding), in tiles of 64 rows x 64
columns (16 groups), 512 bytes each, row tiles outermost: tile (tr, tc) at ``(tr * K64/64 + tc) * 512``.
Inside a tile, row ``16b + 8h + i`` and groups ``2p, 2p + 1`` (p = 4q + j: 0..7) share the byte at
``128 b + 16 i + h + 2 q + 4 j``, group 2p in the low nibble: a byte holds two neighbouring groups of
one row, and a row's 16 bytes interleave with the row 8 below it. cuSPARSELt allocates and writes
exactly ``m*k/2 + R64*K64/8`` bytes (fitted to every shape probed), so every byte is significant.
"""

from __future__ import annotations

import math

import torch

from ..semantics import FP8, SPARSE_DTYPES, round_up

CSLT_MULTIPLE = 16  # cuSPARSELt takes m and k in multiples of 16 (the rows of a sparse operand: its minimum padding)
FP8_MULTIPLE = 32  # ... and in multiples of 32 for float8_e4m3fn
TILE_ROWS = 64  # metadata tile: 64 rows ...
TILE_COLS = 32  # ... by 32 columns = 256 bytes (16-bit); 64 columns = 512 bytes for fp8
FP8_TILE_COLS = 64
LAYOUT_DTYPES = (*SPARSE_DTYPES, FP8)  # the dtypes whose layout this module knows
EMPTY_NIBBLE = 0b1110  # indices (2, 3): an all-zero group, and the padding


def padded_rows(m: int) -> int:
    """Rows the pass compresses and multiplies for m rows of activation: whole 64-row metadata tiles,
    which Inductor's template needs (the standalone kernel and cuSPARSELt take multiples of 16)."""
    return round_up(m, TILE_ROWS)


def shape_multiple(dtype: torch.dtype) -> int:
    """What cuSPARSELt needs m and k of a ``dtype`` sparse operand to be multiples of."""
    return FP8_MULTIPLE if dtype == FP8 else CSLT_MULTIPLE


def _tile_cols(dtype: torch.dtype) -> int:
    return FP8_TILE_COLS if dtype == FP8 else TILE_COLS


def _check_shape(m: int, k: int, dtype: torch.dtype) -> None:
    if dtype not in LAYOUT_DTYPES:
        raise ValueError(f"cuSPARSELt layout known for {LAYOUT_DTYPES} only, got {dtype}")
    multiple = shape_multiple(dtype)
    if m <= 0 or k <= 0 or m % multiple or k % multiple:
        raise ValueError(
            f"cuSPARSELt needs m and k of a {dtype} operand to be positive multiples of {multiple}, got ({m}, {k})"
        )


def metadata_nbytes(m: int, k: int, dtype: torch.dtype) -> int:
    """Bytes of metadata cuSPARSELt writes (whole 64 x 32 tiles; 64 x 64 for fp8)."""
    return round_up(m, TILE_ROWS) * round_up(k, _tile_cols(dtype)) // 8


def compressed_nbytes(m: int, k: int, dtype: torch.dtype) -> int:
    """cuSPARSELt's compressed size in bytes: the values, then its metadata allocation."""
    _check_shape(m, k, dtype)
    if dtype == FP8:
        return m * k // 2 + metadata_nbytes(m, k, dtype)
    meta = max(round_up(m, 64) * round_up(k, 32), round_up(m, 32) * round_up(k, 64)) // 8  # the docstring's formula
    return m * k // 2 * dtype.itemsize + meta


def compressed_shape(m: int, k: int, dtype: torch.dtype) -> tuple[int, int]:
    """The shape ``torch._cslt_compress`` returns for an (m, k) input."""
    return m, -(-compressed_nbytes(m, k, dtype) // (m * dtype.itemsize))


def compressed_int64_numel(m: int, k: int, dtype: torch.dtype) -> int:
    """The compressed tensor of ``compressed_shape`` as int64 words (how lynx's ops pass it on)."""
    rows, cols = compressed_shape(m, k, dtype)
    return rows * cols * dtype.itemsize // 8


def significant_numel(m: int, k: int, dtype: torch.dtype) -> int:
    """Elements of the flattened compressed tensor that cuSPARSELt writes; the rest is unspecified."""
    _check_shape(m, k, dtype)
    return (m * k // 2 * dtype.itemsize + metadata_nbytes(m, k, dtype)) // dtype.itemsize


def kept_indices(xp: torch.Tensor) -> torch.Tensor:
    """(..., k/4, 2) int64: the two indices cuSPARSELt stores per group of 4 of a 2:4 tensor."""
    groups = xp.reshape(*xp.shape[:-1], xp.shape[-1] // 4, 4)
    nonzero = groups != 0  # float compare: NaN counts, -0.0 does not
    count = nonzero.sum(-1)
    if bool((count > 2).any()):
        raise ValueError("input is not 2:4 sparse (a group of 4 has more than 2 nonzeros)")
    chosen = nonzero.clone()
    # Fewer than 2 nonzeros: fill up with the highest free indices (3 first, then 2).
    chosen[..., 3] |= count < 2
    chosen[..., 2] |= (count == 0) | ((count == 1) & nonzero[..., 3])
    first = chosen.to(torch.int8).argmax(-1)  # argmax returns the first maximum
    last = 3 - chosen.flip(-1).to(torch.int8).argmax(-1)
    return torch.stack([first, last], dim=-1)


def _pack_metadata(nibbles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(m, k/4) nibbles -> cuSPARSELt's metadata bytes (uint8, whole tiles, padding = 0xE)."""
    m, groups = nibbles.shape
    rows, cols = round_up(m, TILE_ROWS), round_up(groups * 4, _tile_cols(dtype))
    padded = torch.full((rows, cols // 4), EMPTY_NIBBLE, dtype=torch.uint8, device=nibbles.device)
    padded[:m, :groups] = nibbles
    if dtype == FP8:
        # row = 64 tr + 16 b + 8 h + i, group = 16 tc + 8 q + 2 j + n  ->  byte order (tr, tc, b, i, j, q, h), nibble n
        t = padded.reshape(rows // 64, 4, 2, 8, cols // 64, 2, 4, 2).permute(0, 4, 1, 3, 6, 5, 2, 7)
        return (t[..., 0] | (t[..., 1] << 4)).reshape(-1)
    # row = 64 tr + 16 b + 8 h + i, group = 8 tc + 4 q + j  ->  byte order (tr, tc, b, i, j, q), nibble h
    t = padded.reshape(rows // 64, 4, 2, 8, cols // 32, 2, 4)
    t = t.permute(0, 4, 1, 3, 6, 5, 2)
    return (t[..., 0] | (t[..., 1] << 4)).reshape(-1)


def _unpack_metadata(meta: torch.Tensor, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``_pack_metadata``: metadata bytes -> (m, k/4) nibbles."""
    rows, cols = round_up(m, TILE_ROWS), round_up(k, _tile_cols(dtype))
    if dtype == FP8:
        t = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(rows // 64, cols // 64, 4, 8, 4, 2, 2, 2)
        return t.permute(0, 2, 6, 3, 1, 5, 4, 7).reshape(rows, cols // 4)[:m, : k // 4]
    t = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(rows // 64, cols // 32, 4, 8, 4, 2, 2)
    return t.permute(0, 2, 6, 3, 1, 5, 4).reshape(rows, cols // 4)[:m, : k // 4]


def compress_reference(xp: torch.Tensor) -> torch.Tensor:
    """What ``torch._cslt_compress(xp)`` returns, in plain torch (CPU or GPU); zeros past the data.

    ``xp``: 2-D, already 2:4 along the last dim, m and k multiples of 16 (32 for fp8), bf16, fp16
    or float8_e4m3fn.
    """
    if xp.dim() != 2:
        raise ValueError(f"expected a 2-D tensor, got shape {tuple(xp.shape)}")
    m, k = xp.shape
    _check_shape(m, k, xp.dtype)
    xp = xp.contiguous()
    idx = kept_indices(xp.float())  # exact for every layout dtype; what counts as nonzero is a float compare
    bits = xp.view(torch.uint8 if xp.dtype == FP8 else torch.int16)
    values = bits.reshape(m, k // 4, 4).gather(-1, idx).reshape(m, k // 2)
    nibbles = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)
    meta = _pack_metadata(nibbles, xp.dtype)
    shape = compressed_shape(m, k, xp.dtype)
    out = torch.zeros(shape, dtype=xp.dtype, device=xp.device)
    raw = out.view(-1).view(torch.uint8)
    values_nbytes = m * k // 2 * xp.dtype.itemsize
    raw[:values_nbytes] = values.reshape(-1).view(torch.uint8)
    raw[values_nbytes : values_nbytes + meta.numel()] = meta
    return out


def decompress_reference(c: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """The dense (m, k) 2:4 matrix a compressed tensor stands for (a -0.0 that was dropped reads 0.0)."""
    _check_shape(m, k, c.dtype)
    raw = c.contiguous().view(-1).view(torch.uint8)
    bits = torch.uint8 if c.dtype == FP8 else torch.int16
    values_nbytes = m * k // 2 * c.dtype.itemsize
    values = raw[:values_nbytes].view(bits).reshape(m, k // 4, 2)
    meta = raw[values_nbytes : values_nbytes + metadata_nbytes(m, k, c.dtype)]
    nibbles = _unpack_metadata(meta, m, k, c.dtype).long()
    idx = torch.stack([nibbles & 3, nibbles >> 2], dim=-1)
    dense = torch.zeros(m, k // 4, 4, dtype=bits, device=c.device)
    return dense.scatter_(-1, idx, values).reshape(m, k).view(c.dtype)


def probe_matrix(m: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A CPU (m, k) matrix that exercises every rule of pruning and compression, deterministically.

    Rows cycle through: plain normal values; values rounded to halves (exact ties, zeros); +-1 only
    (all four magnitudes tie); 80 % zeros of either sign (groups with 0 or 1 nonzeros). On top, 2 %
    each of NaN, +inf, -inf, -0.0 and subnormals, and whole rows of zeros, -0.0 and NaN.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    kind = (torch.arange(m) % 4)[:, None]
    u = torch.rand(m, k, generator=g)
    x = torch.where(kind == 1, (x * 2).round() / 2, x)
    x = torch.where(kind == 2, x.sign(), x)
    x = torch.where((kind == 3) & (u < 0.8), torch.where(u < 0.4, 0.0, -0.0), x)
    v = torch.rand(m, k, generator=g)
    for i, special in enumerate((float("nan"), float("inf"), float("-inf"), -0.0)):
        x = torch.where((v >= 0.02 * i) & (v < 0.02 * (i + 1)), special, x)
    x[3::16], x[7::16], x[11::32] = 0.0, -0.0, float("nan")
    out = x.to(dtype)
    # Subnormals (exponent bits 0, mantissa != 0), either sign: bit patterns, so no rounding away.
    mantissa_bits = round(-math.log2(torch.finfo(dtype).eps))
    sub = torch.randint(1, 1 << mantissa_bits, (m, k), generator=g, dtype=torch.int32)
    sub = sub | (torch.randint(0, 2, (m, k), generator=g, dtype=torch.int32) << 15)
    bits = torch.where((v >= 0.08) & (v < 0.10), sub.to(torch.int16), out.view(torch.int16))
    return bits.view(dtype)


def same_compressed(a: torch.Tensor, b: torch.Tensor, m: int, k: int) -> bool:
    """Bit-exact equality of two compressed tensors over the bytes cuSPARSELt defines."""
    n = significant_numel(m, k, a.dtype)
    bits = torch.uint8 if a.dtype == FP8 else torch.int16
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.reshape(-1)[:n].view(bits), b.reshape(-1)[:n].view(bits))
    )
