"""Which 2:4 selection rule keeps the yardstick's images closest to dense? Forward pre-hooks on the 69 block GEMMs."""

import itertools
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.studies.mean_error_cpu.mean_error import pruned_gemms
from lynx_compile import yardstick
from lynx_compile.quality import metrics
from lynx_compile.semantics import keep_mask_2to4, prune_2to4

N = int(sys.argv[1]) if len(sys.argv) > 1 else 16
RULES = sys.argv[2].split(",") if len(sys.argv) > 2 else ["naive", "wnorm", "gram", "gram_obs", "wnorm_obs"]
torch.set_grad_enabled(False)
pipe = yardstick.load_pipeline()
scenes = yardstick.sample_scenes(N, torch.Generator().manual_seed(4321))
prompts = [yardstick.caption(s) for s in scenes]
PAIRS = list(itertools.combinations(range(4), 2))  # kept pairs


def sample():
    out = []
    for i in range(0, N, 8):
        out.append(
            pipe(
                prompts[i : i + 8], generator=[torch.Generator().manual_seed(j) for j in range(i, min(i + 8, N))]
            ).images
        )
    return torch.cat(out)


def make_hook(rule, W):
    W = W.double()
    G = W.t() @ W  # K x K
    K = W.shape[1]
    cn = G.diagonal().sqrt()
    gb = G.reshape(K // 4, 4, K // 4, 4).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (K/4, 4, 4) group Grams

    def hook(mod, inp):
        x = inp[0]
        shp = x.shape
        xd = x.reshape(-1, K).double()
        if rule == "naive":
            y = prune_2to4(xd)
        elif rule.startswith("wnorm"):
            m = keep_mask_2to4(xd * cn)
            y = xd * m
            if rule.endswith("obs"):
                y = obs(xd, m)
        elif rule.startswith("gram"):
            g = xd.reshape(-1, K // 4, 4)
            errs = []
            for kept in PAIRS:
                d = [i for i in range(4) if i not in kept]
                xdd = g[..., d]  # rows, groups, 2
                gdd = gb[:, d][:, :, d]  # groups, 2, 2
                if rule.endswith("obs"):
                    # error after optimal adjustment of kept: x_D^T (G_DD - G_DK G_KK^-1 G_KD) x_D
                    gkk = gb[:, list(kept)][:, :, list(kept)]
                    gkd = gb[:, list(kept)][:, :, d]
                    schur = gdd - gkd.transpose(1, 2) @ torch.linalg.solve(gkk, gkd)
                    gdd = schur
                e = torch.einsum("rgi,gij,rgj->rg", xdd, gdd, xdd)
                errs.append(e)
            idx = torch.stack(errs, -1).argmin(-1)  # rows, groups
            m = torch.zeros_like(g, dtype=torch.bool)
            for p, kept in enumerate(PAIRS):
                sel = idx == p
                for k in kept:
                    m[..., k] |= sel
            m = m.reshape(-1, K)
            y = xd * m
            if rule.endswith("obs"):
                y = obs(xd, m)
        return (y.to(x.dtype).reshape(shp), *tuple(inp[1:]))

    def obs(xd, m):
        # kept values += G_KK^-1 G_KD x_D per group
        g = xd.reshape(-1, K // 4, 4)
        mm = m.reshape(-1, K // 4, 4)
        y = g * mm
        for kept in PAIRS:
            d = [i for i in range(4) if i not in kept]
            sel = mm[..., list(kept)].all(-1)
            if not sel.any():
                continue
            gkk = gb[:, list(kept)][:, :, list(kept)]
            gkd = gb[:, list(kept)][:, :, d]
            T = torch.linalg.solve(gkk, gkd)  # groups, 2, 2
            delta = torch.einsum("gij,rgj->rgi", T, g[..., d])
            yk = y[..., list(kept)] + delta
            y[..., list(kept)] = torch.where(sel[..., None], yk, y[..., list(kept)])
        return y.reshape(-1, K)

    return hook


t0 = time.time()
dense = sample()
print("dense", time.time() - t0, flush=True)
gemms = pruned_gemms(pipe.transformer)
res = {}
for rule in RULES:
    hs = [m.register_forward_pre_hook(make_hook(rule, m.weight)) for m in gemms.values()]
    t0 = time.time()
    imgs = sample()
    for h in hs:
        h.remove()
    p = metrics.psnr(imgs, dense).mean().item()
    s = metrics.ssim(imgs, dense).mean().item()
    res[rule] = (p, s)
    print(rule, f"PSNR {p:.2f} SSIM {s:.4f}", f"{time.time() - t0:.0f}s", flush=True)
Path(__file__).with_name(f"selection_rules_{N}.json").write_text(json.dumps(res, indent=1) + "\n")
