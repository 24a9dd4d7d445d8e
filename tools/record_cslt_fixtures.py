"""Record what cuSPARSELt's compressor returns, for the CPU tests (run on a GPU machine).

    python -m tools.record_cslt_fixtures

Writes ``tests/data/cslt_fixtures.pt`` (or ``$OUT/cslt_fixtures.pt`` when $OUT is set):
- ``cases``: raw inputs x (any M; adversarial values from ``probe_matrix``, hand-made special
  groups, plain normal values) with ``torch._cslt_compress(prune_2to4(x padded to a multiple of 16
  rows))``, cuSPARSELt's minimum (the pass pads further, to 64: ``padded_rows``). The
  bytes cuSPARSELt leaves unwritten (past ``significant_numel``) hold allocator garbage; they are
  zeroed here so the file is deterministic.
- ``shapes``: (m, k, dtype) -> the shape torch._cslt_compress returns, for ``compressed_shape``.
- ``bias_per_row_rel_err``: error of ``_cslt_sparse_mm(c, w.t(), bias)`` against a bias added per
  ROW (token) of the output: the epilogue's orientation when the activation is the sparse operand.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lynx_compile.codegen.cusparselt_layout import CSLT_MULTIPLE, probe_matrix, significant_numel
from lynx_compile.semantics import prune_2to4, round_up

DTYPES = (torch.bfloat16, torch.float16)
# (M, K): M = 1 and M % 16 != 0 (row padding), M % 64 != 0 (metadata row padding), K % 32 == 16
# (metadata column padding), K % 64 == 32 (cuSPARSELt allocates more than it writes).
SHAPES = [
    (1, 16),
    (5, 32),
    (16, 16),
    (17, 48),
    (40, 64),
    (64, 32),
    (48, 80),
    (80, 48),
    (100, 96),
    (128, 256),
    (33, 272),
]
SHAPE_TABLE_M = (16, 32, 48, 64, 80, 112, 128, 144, 1040, 4096, 4112)
SHAPE_TABLE_K = (16, 32, 48, 64, 80, 96, 112, 128, 1168, 3072, 3088)


def special_groups(dtype: torch.dtype) -> torch.Tensor:
    """32 x 128: every kind of group of 4 (ties, zeros, -0.0, NaN, inf, subnormal), rolled per row."""
    nan, inf, tiny = float("nan"), float("inf"), torch.finfo(dtype).smallest_normal / 4
    groups = [
        [0, 0, 0, 0],
        [5, 0, 0, 0],
        [0, 5, 0, 0],
        [0, 0, 5, 0],
        [0, 0, 0, 5],
        [-0.0, 0, 0, 0],
        [0, 0, -0.0, 0],
        [0, 0, 0, -0.0],
        [-0.0, -0.0, -0.0, -0.0],
        [3, -0.0, 0, 0],
        [0, 0, 3, -0.0],
        [-0.0, 0, 0, 3],
        [nan, 0, 0, 0],
        [0, 0, 0, nan],
        [nan, nan, nan, nan],
        [0, nan, 0, inf],
        [inf, -inf, nan, 1],
        [1, 1, 1, 1],
        [-1, 1, -1, 1],
        [2, -2, 1, 2],
        [1, 2, 3, 4],
        [4, 3, 2, 1],
        [tiny, 0, 0, 0],
        [0, 0, tiny, -tiny],
        [tiny, 1, 0, 0],
        [-tiny, -0.0, 0, -tiny],
        [inf, inf, inf, inf],
        [0, 7, 7, 0],
        [1, 0, 3, 4],
        [0, 2, 3, 4],
    ]
    row = torch.tensor(groups, dtype=torch.float32).reshape(-1)
    row = torch.cat([row, torch.zeros(128 - row.numel())])
    return torch.stack([torch.roll(row, 4 * r) for r in range(32)]).to(dtype)


def compress_live(x: torch.Tensor) -> torch.Tensor:
    """torch._cslt_compress(prune_2to4(x padded)), unwritten bytes zeroed, on the CPU."""
    m, k = x.shape
    m_pad = round_up(m, CSLT_MULTIPLE)
    c = torch._cslt_compress(prune_2to4(F.pad(x.cuda(), (0, 0, 0, m_pad - m)))).cpu()
    c.view(-1)[significant_numel(m_pad, k, x.dtype) :] = 0
    return c


def bias_per_row_rel_err() -> float:
    m, k, n = 256, 512, 384
    g = torch.Generator().manual_seed(0)
    x = prune_2to4(torch.randn(m, k, generator=g)).bfloat16().cuda()
    w = (torch.randn(n, k, generator=g) / k**0.5).bfloat16().cuda()
    bias = torch.randn(m, generator=g).bfloat16().cuda()
    ref = x.double() @ w.double().t() + bias.double()[:, None]
    y = torch._cslt_sparse_mm(torch._cslt_compress(x), w.t(), bias)
    return ((y.double() - ref).norm() / ref.norm()).item()


def main() -> None:
    cases = []
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for seed, (m, k) in enumerate(SHAPES):
            x = probe_matrix(m, k, dtype, seed=seed)
            cases.append({"name": f"probe_{name}_{m}x{k}", "x": x, "c": compress_live(x)})
        x = special_groups(dtype)
        cases.append({"name": f"special_{name}", "x": x, "c": compress_live(x)})
        x = torch.randn(64, 128, generator=torch.Generator().manual_seed(7)).to(dtype)
        cases.append({"name": f"randn_{name}", "x": x, "c": compress_live(x)})
    shapes = []
    for dtype in DTYPES:
        for m in SHAPE_TABLE_M:
            for k in SHAPE_TABLE_K:
                c = torch._cslt_compress(torch.zeros(m, k, dtype=dtype, device="cuda"))
                shapes.append({"m": m, "k": k, "dtype": str(dtype), "shape": tuple(c.shape)})
    data = {
        "meta": {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "cusparselt": torch.backends.cusparselt.version(),
        },
        "cases": cases,
        "shapes": shapes,
        "bias_per_row_rel_err": bias_per_row_rel_err(),
    }
    out = Path(os.environ["OUT"]) if "OUT" in os.environ else Path(__file__).resolve().parents[1] / "tests" / "data"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(data, out / "cslt_fixtures.pt")
    size = (out / "cslt_fixtures.pt").stat().st_size
    print(
        f"wrote {out / 'cslt_fixtures.pt'}: {len(cases)} cases, {len(shapes)} shapes, {size / 1e6:.2f} MB; "
        f"bias per-row rel err {data['bias_per_row_rel_err']:.2e}"
    )


if __name__ == "__main__":
    main()
