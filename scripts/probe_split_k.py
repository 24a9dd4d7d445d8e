"""GPU probe: does cuSPARSELt's full search result (alg id, split-k, split-k mode) beat the alg id alone?

``torch._cslt_sparse_mm_search`` returns only the algorithm id, although cuSPARSELt's search also
picks split-k and its mode; ``torch._C._cusparselt.mm_search`` returns all of them. This times, per
DiT shape: cuBLAS dense, the sparse GEMM with the searched alg id alone, with the full searched
configuration, and a sweep over alg ids x split-k (CUDA-graph replay, medians, rotating inputs).
Writes $OUT/split_k.json.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from lynx_compile.codegen.cusparselt import _operands, cuda_graph_ms  # noqa: E402
from lynx_compile.codegen.prune_compress import prune_compress  # noqa: E402

SHAPES = [(3072, 3072), (3072, 9216), (3072, 12288), (12288, 3072), (15360, 3072),
          (1536, 6144), (6144, 1536), (1152, 4608), (4608, 1152), (5120, 13824), (13824, 5120)]
MS = [4608, 4096, 16384]


def main() -> None:
    out = os.environ.get("OUT", "/tmp/out")
    dev, dtype = "cuda", torch.bfloat16
    warnings.filterwarnings("ignore")
    rows, t0 = [], time.time()
    for m, (k, n) in itertools.product(MS, SHAPES):
        if m == 16384 and (k, n) not in SHAPES[:5]:
            continue
        w, xs, cs = _operands(m, k, n, dtype, torch.device(dev), prune_compress)
        calls = max(20, len(xs))

        def sparse(alg: int, sk: int = 1, mode: int = -1, replays: int = 15) -> float:
            try:
                return cuda_graph_ms(lambda i: torch._cslt_sparse_mm(
                    cs[i % len(cs)], w.t(), alg_id=alg, split_k=sk, split_k_mode=mode), calls=calls,
                    replays=replays)
            except Exception as e:  # some (alg, split-k) pairs are refused
                return float("nan") if "CUSPARSE" in repr(e) or "cuSPARSELt" in repr(e) else -1.0

        searches = [tuple(int(v) for v in torch._C._cusparselt.mm_search(cs[0], w.t(), None, None, None, False))
                    for _ in range(2)]
        alg, sk, mode, max_alg = searches[0]
        row = {"m": m, "k": k, "n": n, "search": searches,
               "dense_ms": cuda_graph_ms(lambda i: F.linear(xs[i % len(xs)], w), calls=calls),
               "alg_only_ms": sparse(alg), "full_ms": sparse(alg, sk, mode)}
        sweep = {f"{a},1,-1": sparse(a, replays=5) for a in range(max_alg + 1)} if time.time() - t0 < 300 else {}
        sweep[f"{alg},1,-1"] = row["alg_only_ms"]
        best_a = min((v, int(key.split(",")[0])) for key, v in sweep.items() if v == v and v > 0)[1]
        for s, md in itertools.product((2, 3, 4), (1, 2)):
            sweep[f"{best_a},{s},{md}"] = sparse(best_a, s, md, replays=5)
        row["sweep"] = sweep
        best = min((v, key) for key, v in sweep.items() if v == v and v > 0)
        row["sweep_best"] = {"config": best[1], "ms": best[0]}
        rows.append(row)
        print(f"M={m} {k}->{n}: search {searches} dense {row['dense_ms']:.4f} alg-only {row['alg_only_ms']:.4f} "
              f"full {row['full_ms']:.4f} sweep-best {best[1]} {best[0]:.4f} "
              f"({row['dense_ms'] / row['alg_only_ms']:.2f}x / {row['dense_ms'] / best[0]:.2f}x) "
              f"t={time.time() - t0:.0f}s", flush=True)
        del xs, cs, w
        torch.cuda.empty_cache()
        with open(os.path.join(out, "split_k.json"), "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cusparselt": torch.backends.cusparselt.version(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
