"""End to end on the yardstick: channel permutations fitted from calibration channel energies, PSNR vs dense."""

import collections
import sys
import time

import torch

from benchmarks.studies.mean_error_cpu.mean_error import captions, pruned_gemms
from lynx_compile import yardstick
from lynx_compile.quality import metrics
from lynx_compile.semantics import prune_2to4

N = int(sys.argv[1])
RULES = sys.argv[2].split(",")
torch.set_grad_enabled(False)
pipe = yardstick.load_pipeline()
gemms = pruned_gemms(pipe.transformer)
energy = collections.defaultdict(float)
rows = collections.defaultdict(list)


def ehook(name):
    def f(m, inp):
        x = inp[0].reshape(-1, inp[0].shape[-1]).double()
        energy[name] = energy[name] + x.square().sum(0)
        rows[name].append(x[torch.randperm(x.shape[0])[:64]])

    return f


hs = [m.register_forward_pre_hook(ehook(n)) for n, m in gemms.items()]
for i, p in enumerate(captions(8, 8765)):
    pipe([p], generator=torch.Generator().manual_seed(100000 + i))
for h in hs:
    h.remove()


def balanced(e):
    K = e.numel()
    order = e.argsort(descending=True)
    top, bot = order[: K // 2], order[K // 2 :].flip(0)
    return torch.stack([top[0::2], top[1::2], bot[0::2], bot[1::2]], 1).reshape(-1)


def blocked(e, B):
    K = e.numel()
    B = min(B, K)
    return torch.cat([b * B + balanced(e[b * B : (b + 1) * B]) for b in range(K // B)])


def dropped_groups(xg):
    # xg: rows, groups, 4 -> per group dropped energy summed over rows
    s = xg.square()
    top2 = s.topk(2, dim=-1).values.sum(-1)
    return (s.sum(-1) - top2).sum(0)


def optimise(X, perm, iters=3000):
    K = X.shape[1]
    G = K // 4
    perm = perm.clone()
    cost = dropped_groups(X[:, perm].reshape(-1, G, 4))
    g = torch.Generator().manual_seed(0)
    for _it in range(iters):
        a, b = torch.randint(0, K, (2,), generator=g).tolist()
        ga, gb = a // 4, b // 4
        if ga == gb:
            continue
        p2 = perm.clone()
        p2[a], p2[b] = perm[b], perm[a]
        idx = torch.tensor([ga, gb])
        new = dropped_groups(X[:, p2.reshape(G, 4)[idx].reshape(-1)].reshape(-1, 2, 4))
        if new.sum() < cost[idx].sum():
            perm = p2
            cost[idx] = new
    return perm


def perm_for(rule, e, name=None, W=None):
    if rule == "perm_w":
        return balanced(e * W.double().square().sum(0))
    if rule == "perm_opt":
        return optimise(torch.cat(rows[name]), balanced(e))
    if rule == "naive":
        return None
    if rule == "perm":
        return balanced(e)
    if rule.startswith("perm_b"):
        return blocked(e, int(rule[6:]))


scenes = yardstick.sample_scenes(N, torch.Generator().manual_seed(4321))
prompts = [yardstick.caption(s) for s in scenes]


def sample():
    return torch.cat(
        [
            pipe(
                prompts[i : i + 8], generator=[torch.Generator().manual_seed(j) for j in range(i, min(i + 8, N))]
            ).images
            for i in range(0, N, 8)
        ]
    )


def hook(perm):
    def f(m, inp):
        x = inp[0]
        if perm is None:
            return (prune_2to4(x),)
        y = torch.empty_like(x)
        y[..., perm] = prune_2to4(x[..., perm])
        return (y,)

    return f


dense = sample()
for rule in RULES:
    hs = [m.register_forward_pre_hook(hook(perm_for(rule, energy[n], n, m.weight))) for n, m in gemms.items()]
    t0 = time.time()
    imgs = sample()
    for h in hs:
        h.remove()
    print(
        rule,
        f"PSNR {metrics.psnr(imgs, dense).mean().item():.2f} SSIM {metrics.ssim(imgs, dense).mean().item():.4f} "
        f"{time.time() - t0:.0f}s",
        flush=True,
    )
