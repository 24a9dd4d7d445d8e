"""The self-check that guards the Triton compressor: does it write the installed cuSPARSELt's layout?

cuSPARSELt's compressed format is undocumented (``cusparselt_layout`` writes down version 0.8's), so
at the first use per (device, dtype, cuSPARSELt version, kernel variant) the kernel's bytes are
compared with ``torch._cslt_compress``'s; a mismatch, or a kernel that fails to run, sends the
layers to the slow exact path (docs/design.md, "Self-check and fallbacks").
"""

from __future__ import annotations

import itertools
import logging

import torch

from ..semantics import BIAS_COLUMNS, ORDER_BLOCK, norm_partials, round_up, with_low_rank_columns
from .cusparselt import compress_compat, compress_compat_fp8
from .cusparselt_layout import CSLT_MULTIPLE, FP8_MULTIPLE, probe_matrix, same_compressed
from .prune_compress import compile_tiles, launch, norms_buffer, tile_configs
from .prune_compress_low_rank import RANK_MULTIPLE, prune_compress_low_rank
from .prune_quantise_compress import prune_quantise_compress
from .prune_quantise_compress import tile_configs as fp8_tile_configs

log = logging.getLogger("lynx_compile")

_CHECKED: dict[tuple[str, torch.dtype, int | None, bool, bool, bool, bool, bool], bool] = {}


def fast_compress_ok(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    ones_column: bool = False,
    norms: bool = False,
    fp8: bool = False,
    low_rank: bool = False,
    ordered: bool = False,
) -> bool:
    """Whether the Triton kernel reproduces the installed cuSPARSELt's layout on this device.

    Checked once per (device, dtype, cuSPARSELt version, kernel variant) on an adversarial matrix
    (ties, zeros, -0.0, NaN, inf, subnormals, rows not a multiple of 16), with every tile
    configuration the autotuner may pick. The variants with a ones column (``fold_bias``) and with
    the norm sums (``compensate``) are kernels of their own, checked when first asked for; the norm
    sums must equal ``norm_partials`` up to float32 summation order. On a mismatch the caller must
    take the slow exact path (``torch._cslt_compress(prune_2to4(x))``): never a wrong result.
    ``fp8``: the prune + quantise + compress kernel (``prune_quantise_compress``), against
    ``torch._cslt_compress(quantise_fp8_rows(prune_2to4(x)))`` and its row scales. ``low_rank``: the kernel
    with a fused low-rank branch's columns (``prune_compress_low_rank``, with and without a ones column),
    against ``torch._cslt_compress`` of ``[x | spread_2to4(u)]`` pruned, u the kernel's own ``round(x A)``.
    ``ordered``: the kernel permuting a channel order in its tiles (``permute_channels``, with or without
    ``norms``, and the fp8 kernel), against the compression of the gathered x.
    """
    device = torch.device(device)
    key = (str(device), dtype, torch.backends.cusparselt.version(), ones_column, norms, fp8, low_rank, ordered)
    if key not in _CHECKED:
        try:
            x = probe_matrix(200, 544 if fp8 else 528, dtype, seed=0).to(device)  # K % 32 for fp8
            ok, detail = (
                _check_fp8(x, ordered)
                if fp8
                else _check_low_rank(x)
                if low_rank
                else _check(x, ones_column, norms, ordered)
            )
        except Exception as e:  # a kernel that cannot run is as unusable as a wrong one
            ok, detail = False, repr(e)
        if not ok:
            variant = (
                " with a ones column"
                if ones_column
                else " with norm sums"
                if norms
                else " + fp8 quantisation"
                if fp8
                else " with low-rank columns"
                if low_rank
                else ""
            ) + (" permuting a channel order" if ordered else "")
            log.warning(
                "lynx: Triton prune+compress%s does not match torch._cslt_compress on %s %s (cuSPARSELt %s): %s; %s",
                variant,
                device,
                dtype,
                key[2],
                detail,
                "gathering the order in the graph" if ordered else "using torch._cslt_compress",
            )
        _CHECKED[key] = ok
    return _CHECKED[key]


def _check(x: torch.Tensor, ones_column: bool, norms: bool, ordered: bool) -> tuple[bool, str]:
    """(ok, what differs): every tile of the kernel variant against cuSPARSELt's compression of x (with
    ``ordered``, of x gathered in a channel order)."""
    m_pad = round_up(x.shape[0], CSLT_MULTIPLE)
    k = x.shape[1] + (BIAS_COLUMNS if ones_column else 0)
    order = block_order(x.shape[1]).to(x.device) if ordered else None
    gathered = x if order is None else x[:, order].contiguous()
    expected = compress_compat(gathered, ones_column=ones_column)
    expected_norms = norm_partials(gathered) if norms else None
    compile_tiles(x, m_pad, ones_column, norms_buffer(x) if norms else None, order)
    for config in tile_configs():
        sums = norms_buffer(x) if norms else None
        got = launch(x, m_pad, config, ones_column, norms=sums, order=order)
        if not same_compressed(got, expected, m_pad, k):
            return False, f"layout differs (tile {config.kwargs})"
        if sums is not None and not torch.allclose(sums, expected_norms, rtol=1e-5, atol=0.0, equal_nan=True):
            return False, f"norm sums differ from norm_partials (tile {config.kwargs})"
    return True, ""


def block_order(k: int) -> torch.Tensor:
    """A channel order of k channels as ``permute_channels`` makes them (within blocks of ``ORDER_BLOCK``), fixed
    and far from the identity: each block reversed."""
    return torch.cat([torch.arange(s, min(s + ORDER_BLOCK, k)).flip(0) for s in range(0, k, ORDER_BLOCK)])


def _check_low_rank(x: torch.Tensor) -> tuple[bool, str]:
    """(ok, what differs): every tile of the low-rank kernel, with and without a ones column, against
    cuSPARSELt's compression of ``[x | spread_2to4(u)]`` pruned (u = x @ a: torch's GEMM, not checked here;
    the probe's NaN and inf rows give NaN and inf columns of u)."""
    m_pad = round_up(x.shape[0], CSLT_MULTIPLE)
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(x.shape[1], 2 * RANK_MULTIPLE, generator=g) / 16).to(x.device, x.dtype)
    for ones_column, config in itertools.product((False, True), tile_configs()):
        got, u = prune_compress_low_rank(x, a, m_pad, ones_column, config)
        operand = with_low_rank_columns(x, u)
        expected = compress_compat(operand, m_pad, ones_column)
        if not same_compressed(got, expected, m_pad, operand.shape[1] + (BIAS_COLUMNS if ones_column else 0)):
            return False, f"layout differs (tile {config.kwargs}, ones column {ones_column})"
    return True, ""


def _check_fp8(x: torch.Tensor, ordered: bool) -> tuple[bool, str]:
    """(ok, what differs): the fp8 kernel against cuSPARSELt's compression of the quantised pruning (with
    ``ordered``, of x gathered in a channel order)."""
    m_pad = round_up(x.shape[0], FP8_MULTIPLE)
    order = block_order(x.shape[1]).to(x.device) if ordered else None
    expected, expected_scale = compress_compat_fp8(x if order is None else x[:, order], m_pad)
    for config in fp8_tile_configs(ordered):
        got, scale = prune_quantise_compress(x, m_pad, config, order=order)
        if not same_compressed(got, expected, m_pad, x.shape[1]):
            return False, f"fp8 layout differs (tile {config.kwargs})"
        if not torch.equal(scale.nan_to_num(), expected_scale.nan_to_num()) or not torch.equal(
            scale.isnan(), expected_scale.isnan()
        ):
            return False, f"fp8 row scales differ (tile {config.kwargs})"
    return True, ""
