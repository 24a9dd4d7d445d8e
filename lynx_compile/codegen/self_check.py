"""The self-check that guards the Triton compressor: does it write the installed cuSPARSELt's layout?

cuSPARSELt's compressed format is undocumented (``cusparselt_layout`` writes down version 0.8's), so
at the first use per (device, dtype, cuSPARSELt version, kernel variant) the kernel's bytes are
compared with ``torch._cslt_compress``'s; a mismatch, or a kernel that fails to run, sends the
layers to the slow exact path (docs/design.md, "Self-check and fallbacks").
"""

from __future__ import annotations

import logging

import torch

from ..semantics import BIAS_COLUMNS, norm_partials, round_up
from .cusparselt import compress_compat
from .cusparselt_layout import CSLT_MULTIPLE, probe_matrix, same_compressed
from .prune_compress import compile_tiles, launch, norms_buffer, tile_configs

log = logging.getLogger("lynx_compile")

_CHECKED: dict[tuple[str, torch.dtype, int | None, bool, bool], bool] = {}


def fast_compress_ok(device: torch.device | str, dtype: torch.dtype, *, ones_column: bool = False,
                     norms: bool = False) -> bool:
    """Whether the Triton kernel reproduces the installed cuSPARSELt's layout on this device.

    Checked once per (device, dtype, cuSPARSELt version, kernel variant) on an adversarial matrix
    (ties, zeros, -0.0, NaN, inf, subnormals, rows not a multiple of 16), with every tile
    configuration the autotuner may pick. The variants with a ones column (``fold_bias``) and with
    the norm sums (``compensate``) are kernels of their own, checked when first asked for; the norm
    sums must equal ``norm_partials`` up to float32 summation order. On a mismatch the caller must
    take the slow exact path (``torch._cslt_compress(prune_2to4(x))``): never a wrong result.
    """
    device = torch.device(device)
    key = (str(device), dtype, torch.backends.cusparselt.version(), ones_column, norms)
    if key not in _CHECKED:
        try:
            ok, detail = _check(probe_matrix(200, 528, dtype, seed=0).to(device), ones_column, norms)
        except Exception as e:  # a kernel that cannot run is as unusable as a wrong one
            ok, detail = False, repr(e)
        if not ok:
            variant = " with a ones column" if ones_column else " with norm sums" if norms else ""
            log.warning("lynx: Triton prune+compress%s does not match torch._cslt_compress on %s %s "
                        "(cuSPARSELt %s): %s; using torch._cslt_compress", variant, device, dtype, key[2], detail)
        _CHECKED[key] = ok
    return _CHECKED[key]


def _check(x: torch.Tensor, ones_column: bool, norms: bool) -> tuple[bool, str]:
    """(ok, what differs): every tile of the kernel variant against cuSPARSELt's compression of x."""
    m_pad = round_up(x.shape[0], CSLT_MULTIPLE)
    k = x.shape[1] + (BIAS_COLUMNS if ones_column else 0)
    expected = compress_compat(x, ones_column=ones_column)
    expected_norms = norm_partials(x) if norms else None
    compile_tiles(x, m_pad, ones_column, norms_buffer(x) if norms else None)
    for config in tile_configs():
        sums = norms_buffer(x) if norms else None
        if not same_compressed(launch(x, m_pad, config, ones_column, norms=sums), expected, m_pad, k):
            return False, f"layout differs (tile {config.kwargs})"
        if sums is not None and not torch.allclose(sums, expected_norms, rtol=1e-5, atol=0.0, equal_nan=True):
            return False, f"norm sums differ from norm_partials (tile {config.kwargs})"
    return True, ""
