"""Where does lynx's compile time go on the GPU? Times each phase separately, printing as it goes."""

import time

import torch
import torch.nn.functional as F

import lynx_compile
from lynx_compile.codegen import cusparselt
from lynx_compile.ops import padded_rows


def stamp(what: str, t0: float) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    print(f"{what}: {t - t0:.1f} s", flush=True)
    return t


m, k, n = 4608, 3072, 12288
dt = torch.bfloat16
t = time.perf_counter()
alg = cusparselt.best_alg(m, k, n, dt, torch.device("cuda"))
t = stamp(f"best_alg search ({m},{k},{n}) -> {alg}", t)
alg = cusparselt.best_alg(m, k, n, dt, torch.device("cuda"))
t = stamp("best_alg cached", t)
print(cusparselt.measure_costs(m, k, n, dt, alg), flush=True)
t = stamp("measure_costs", t)
x = torch.randn(m, k, device="cuda", dtype=dt)
rows = padded_rows(m)
torch.ops.lynx.compress_2to4(x, rows, "triton")
t = stamp("standalone Triton prune_compress first call (autotune)", t)
fused = torch.compile(lambda a: torch.ops.lynx.compress_2to4(F.gelu(a), rows, "inductor"), dynamic=False)
fused(x)
t = stamp("compile + run of the fused lowering (gelu -> compress)", t)
for _ in range(3):
    fused(x)
t = stamp("3 more calls", t)
from lynx_compile.codegen.prune_compress import _prune_compress_kernel, prune_compress  # noqa: E402

xs = cusparselt.rotating_inputs(lambda: torch.randn(m, k, device="cuda", dtype=dt), m * k * 2)
fused_ms = cusparselt.cuda_graph_ms(lambda i: fused(xs[i % len(xs)]), calls=len(xs))
split_ms = cusparselt.cuda_graph_ms(lambda i: prune_compress(F.gelu(xs[i % len(xs)]), rows=rows), calls=len(xs))
gelu_ms = cusparselt.cuda_graph_ms(lambda i: F.gelu(xs[i % len(xs)]), calls=len(xs))
print(f"gelu->compress ({m}x{k}): fused {fused_ms:.4f} ms, gelu + standalone kernel {split_ms:.4f} ms, "
      f"gelu alone {gelu_ms:.4f} ms", flush=True)
t = stamp("kernel timings", t)
lin = torch.nn.Linear(k, n).cuda().to(dt).requires_grad_(False)
with torch.no_grad():
    f = torch.compile(lin, backend="lynx", options={"cost_model": False, "fuse_producers": False})
    f(x)
    t = stamp("lynx compile of one Linear, standalone kernel", t)
    torch._dynamo.reset()
    g = torch.compile(lambda a: lin(F.gelu(a)), backend="lynx", options={"cost_model": False})
    g(x)
    t = stamp("lynx compile of gelu + Linear, fused", t)
    for _ in range(3):
        g(x)
    t = stamp("3 more calls (cudagraph record)", t)
for shape in [(4096, 12288), (512, 3072), (200, 1152), (1, 3072)]:  # other sizes: compiled again, or shared?
    prune_compress(torch.randn(*shape, device="cuda", dtype=dt))
t = stamp("standalone kernel on 4 more shapes", t)
print(f"standalone kernel: {sum(len(cache[0]) for cache in _prune_compress_kernel.device_caches.values())} compiled variants "
      "(tile configs x specialisations)", flush=True)
