"""Does permuting a GEMM's input channels (W's columns with them) lower the energy 2:4 pruning drops?"""

import collections

import torch

from benchmarks.studies.mean_error_cpu.mean_error import captions, pruned_gemms
from lynx_compile import yardstick
from lynx_compile.semantics import prune_2to4

torch.set_grad_enabled(False)
pipe = yardstick.load_pipeline()
gemms = pruned_gemms(pipe.transformer)
caps = collections.defaultdict(list)


def hook(name):
    def f(m, inp):
        x = inp[0].reshape(-1, inp[0].shape[-1])
        caps[name].append(x[torch.randperm(x.shape[0])[:256]].clone())

    return f


hs = [m.register_forward_pre_hook(hook(n)) for n, m in gemms.items()]
for i, p in enumerate(captions(4, 8765)):
    pipe([p], generator=torch.Generator().manual_seed(100000 + i))
for h in hs:
    h.remove()


def dropped(x, W):
    d = x - prune_2to4(x)
    return (d.square().sum() / x.square().sum()).item(), (
        (d @ W.t()).square().sum() / (x @ W.t()).square().sum()
    ).item()


tot = collections.Counter()
for name, xs in caps.items():
    X = torch.cat(xs)
    n = X.shape[0] // 2
    fit, ev = X[:n], X[n:]
    W = gemms[name].weight
    K = X.shape[1]
    e = fit.square().mean(0)
    order = e.argsort(descending=True)
    # balanced: group j takes the j-th and (K/2 + j)-th... top half spread 2 per group, paired with bottom half
    top, bot = order[: K // 2], order[K // 2 :].flip(0)
    perm = torch.stack([top[0::2], top[1::2], bot[0::2], bot[1::2]], 1).reshape(-1)
    a = dropped(ev, W)
    b = dropped(ev[:, perm], W[:, perm])
    spread = (e.max() / e.median()).item()
    tot["x0"] += a[0]
    tot["x1"] += b[0]
    tot["y0"] += a[1]
    tot["y1"] += b[1]
    tot["n"] += 1
    print(
        f"{name:45s} K={K:5d} max/median ch energy {spread:8.1f}  dropped x {a[0]:.3f}->{b[0]:.3f}  out relerr^2 "
        f"{a[1]:.3f}->{b[1]:.3f}",
        flush=True,
    )
print({k: v / tot["n"] for k, v in tot.items()})
