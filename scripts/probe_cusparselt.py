"""One-off GPU probe: record what torch._cslt_compress writes for inputs designed to reveal its layout.

Run on the GPU machine; writes $OUT/probe.pt for offline analysis on a CPU machine.
"""

import os
import sys
import traceback

import torch

sys.path.insert(0, os.getcwd())
from lynx_compile.codegen.reference import prune_2to4  # noqa: E402

out_dir = os.environ.get("OUT", "/tmp/out")
dev = "cuda"
torch.manual_seed(0)
res: dict = {"meta": {
    "torch": torch.__version__,
    "cusparselt": torch.backends.cusparselt.version(),
    "gpu": torch.cuda.get_device_name(),
    "cap": torch.cuda.get_device_capability(),
}}
print(res["meta"])
for name in ["_cslt_compress", "_cslt_sparse_mm", "_cslt_sparse_mm_search"]:
    for ov in getattr(torch.ops.aten, name).overloads():
        print(name, getattr(getattr(torch.ops.aten, name), ov)._schema)


def distinct_bits(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """n distinct finite nonzero values of dtype (as a float tensor), by bit pattern."""
    allbits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    vals = allbits.view(dtype).float()
    ok = torch.isfinite(vals) & (vals != 0)
    pool = allbits[ok]
    if n <= pool.numel():
        idx = torch.randperm(pool.numel(), generator=g)[:n]
    else:  # large shapes: values repeat, analysis uses the small ones
        idx = torch.randint(0, pool.numel(), (n,), generator=g)
    return pool[idx].view(dtype)


PATTERNS = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)


def layout_probe(m: int, k: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    pat = torch.randint(0, 6, (m, k // 4), generator=g)
    mask = PATTERNS[pat].reshape(m, k)
    x = torch.zeros(m, k, dtype=dtype)
    x[mask] = distinct_bits(int(mask.sum()), dtype, g)
    return x


def special_groups(dtype: torch.dtype) -> torch.Tensor:
    """Rows of groups: all-zero, single nonzeros, -0.0, NaN, inf, 3 and 4 nonzeros."""
    nan, inf = float("nan"), float("inf")
    groups = [
        [0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5],
        [-0.0, 0, 0, 0], [0, -0.0, 0, 0], [0, 0, -0.0, 0], [0, 0, 0, -0.0],
        [-0.0, -0.0, 0, 0], [0, 0, -0.0, -0.0], [3, -0.0, 0, 0], [0, 0, 3, -0.0], [-0.0, 0, 0, 3],
        [nan, 0, 0, 0], [0, 0, 0, nan], [nan, nan, 0, 0], [0, nan, 0, inf], [inf, -inf, 0, 0],
        [0, 0, 7, 0], [1, 2, 3, 0], [1, 2, 3, 4], [0, 2, 3, 4], [1, 0, 3, 4],
    ]
    row = torch.tensor(groups, dtype=torch.float32).reshape(-1)
    k = 128
    row = torch.cat([row, torch.zeros(k - row.numel())])
    x = row.repeat(32, 1)
    # vary rows: shift groups so each special group sits in different column positions too
    for r in range(32):
        x[r] = torch.roll(row, shifts=4 * r)
    return x.to(dtype)


g = torch.Generator().manual_seed(1234)
shapes = [(16, 16), (16, 32), (32, 16), (32, 32), (32, 64), (64, 32), (64, 64), (64, 128), (128, 64),
          (128, 128), (128, 256), (256, 128), (48, 80), (80, 48), (16, 48), (256, 512), (1024, 256),
          (8, 16), (24, 32), (17, 32), (32, 24), (32, 40), (32, 8), (33, 64)]
cases = []
for dtype in (torch.bfloat16, torch.float16):
    for (m, k) in shapes:
        for kind in ("layout", "random"):
            if kind == "layout":
                x = layout_probe(m, k, dtype, g)
            else:
                x = prune_2to4(torch.randn(m, k, generator=g).to(dtype))
            entry = {"dtype": str(dtype), "m": m, "k": k, "kind": kind, "x": x.clone()}
            try:
                c = torch._cslt_compress(x.to(dev))
                torch.cuda.synchronize()
                entry["c"] = c.cpu()
                entry["c_shape"] = tuple(c.shape)
            except Exception as e:  # record which shapes are refused
                entry["error"] = repr(e)[:300]
            cases.append(entry)
    x = special_groups(dtype)
    c = torch._cslt_compress(x.to(dev)).cpu()
    cases.append({"dtype": str(dtype), "m": 32, "k": 128, "kind": "special", "x": x, "c": c, "c_shape": tuple(c.shape)})
res["cases"] = cases
for e in cases:
    if e["kind"] != "random":
        print(e["dtype"], e["m"], e["k"], e["kind"], e.get("c_shape"), e.get("error", ""))

# GEMM semantics: alpha vector, bias, transpose_result, search
chk = {}
try:
    m, k, n = 256, 512, 384
    x = prune_2to4(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
    b = torch.randn(n, device=dev, dtype=torch.bfloat16)
    a = torch.rand(m, device=dev, dtype=torch.float32) + 0.5
    c = torch._cslt_compress(x)
    ref = x.float() @ w.float().t()
    def rel(y, r):
        return ((y.float() - r).norm() / r.norm()).item()
    y = torch._cslt_sparse_mm(c, w.t())
    chk["plain"] = rel(y, ref)
    y = torch._cslt_sparse_mm(c, w.t(), b)
    chk["bias"] = rel(y, ref + b.float())
    for name, alpha in (("alpha_f32", a), ("alpha_bf16", a.bfloat16())):
        try:
            y = torch._cslt_sparse_mm(c, w.t(), b, alpha)
            chk[name + "_rowscale_then_bias"] = rel(y, a[:, None] * ref + b.float())
            chk[name + "_rowscale_incl_bias"] = rel(y, a[:, None] * (ref + b.float()))
        except Exception as e:
            chk[name] = repr(e)[:300]
    y = torch._cslt_sparse_mm(c, w.t(), b, transpose_result=True)
    chk["transpose_result_shape"] = tuple(y.shape)
    chk["transpose_result"] = rel(y.t(), ref + b.float())
    chk["search"] = repr(torch._cslt_sparse_mm_search(c, w.t()))
    # odd M padded? compress with 250 rows
    try:
        torch._cslt_compress(x[:250].contiguous())
        chk["m250"] = "ok"
    except Exception as e:
        chk["m250"] = repr(e)[:200]
except Exception:
    chk["error"] = traceback.format_exc()
print(chk)
res["gemm"] = chk
torch.save(res, os.path.join(out_dir, "probe.pt"))
print("saved")
