"""How many columns a folded bias should add: cuSPARSELt's GEMM time at K + c for the FLUX shapes (GPU).

``fold_bias`` appends columns to the activation ([x | 1 | 0...]) and to the weight ([W | b | 0...]).
cuSPARSELt takes K in multiples of 16, but its Hopper kernels step K by 64: this times the sparse
GEMM (fastest algorithm id each, CUDA-graph replay) at c = 0, 16, 32, 64, 128 extra columns.

    python scripts/probe_bias_columns.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import gpu_slug, meta  # noqa: E402
from lynx_compile.codegen.cusparselt import _operands, best_alg, cuda_graph_ms, sparse_mm  # noqa: E402
from lynx_compile.codegen.prune_compress import prune_compress  # noqa: E402

SHAPES = [(4608, 3072, 3072), (4608, 3072, 12288), (4096, 3072, 3072), (4096, 3072, 9216), (4096, 12288, 3072)]
EXTRA = (0, 16, 32, 64, 128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    args = p.parse_args()
    rows = []
    for m, k, n in SHAPES:
        for extra in EXTRA:
            kk = k + extra
            alg = best_alg(m, kk, n, torch.bfloat16, "cuda")
            w, _, cs = _operands(m, kk, n, torch.bfloat16, torch.device("cuda"), prune_compress)
            ms = cuda_graph_ms(lambda i: sparse_mm(cs[i % len(cs)], w, alg), calls=max(20, len(cs)))
            rows.append({"m": m, "k": k, "n": n, "extra_columns": extra, "alg_id": alg, "sparse_gemm_ms": ms})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bias_columns_{gpu_slug()}.json").write_text(json.dumps({"meta": meta(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
