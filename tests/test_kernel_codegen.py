"""The Triton kernels compile for sm_90, every tile and variant, without a GPU.

The other CPU tests run the kernels in Triton's interpreter, which accepts code that Triton's code
generator refuses: the first kernel with compensation's sums (session 13) reused a name with another
type in a second ``if`` block and only failed on the GPU. Compiling to a cubin here (Triton ships
ptxas) catches that class of error, and compiles the code the interpreter never runs (the fp8
kernel's hardware e4m3 conversion). It runs in a subprocess: the interpreter, switched on for this
test session, replaces ``triton.jit`` kernels with Python ones.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from lynx_compile.codegen.prune_compress import MAGNITUDE_BITS, TAIL_BLOCK
from lynx_compile.semantics import FP8_SCALE_EXP_MIN, NORM_CHUNK

# argv[1]: {"module", "kernel", "pointers", "tiles" (the module's function, or null: one fixed launch),
# "variants": [constexpr dicts]}; every tile x variant is compiled, each prints a line "compiled ..."
SCRIPT = r"""
import importlib, itertools, json, sys
import triton
from triton.backends.compiler import GPUTarget

spec = json.loads(sys.argv[1])
module = importlib.import_module(spec["module"])
kernel = getattr(module, spec["kernel"])
names = kernel.arg_names
tiles = getattr(module, spec["tiles"])() if spec["tiles"] else [triton.Config({}, num_warps=4)]
for config, variant in itertools.product(tiles, spec["variants"]):
    constexprs = {**variant, **config.kwargs}
    signature = {a: spec["pointers"].get(a, "constexpr" if a in constexprs else "i32") for a in names}
    source = triton.compiler.ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(a),): v for a, v in constexprs.items()},
        attrs={(names.index(a),): [["tt.divisibility", 16]] for a in spec["pointers"]})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
    assert compiled.asm["cubin"], config
    print("compiled", config, variant)
"""

BF16, FP16 = (
    {"ABS_MASK": MAGNITUDE_BITS[t][0], "MAG_MAX": MAGNITUDE_BITS[t][1]} for t in (torch.bfloat16, torch.float16)
)
TAIL = {"TAIL_BLOCK": TAIL_BLOCK}


def _compile(spec: dict) -> str:
    """Compile ``spec``'s kernel without the interpreter; its stdout (skips where Triton has no ptxas)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=600
    )
    if run.returncode and "ptxas" in run.stderr and "No such file" in run.stderr:
        pytest.skip("this Triton has no ptxas to compile with")
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


def test_kernel_compiles_for_sm90_with_every_tile_and_variant():
    """Plain, with a ones column, with compensation's sums, and with low-rank columns (with and without a
    ones column): the runtime branch to the gather of u compiles beside the plain load; and gathering a channel
    order (permute_channels), plain and with the sums."""
    variants = [
        {
            **BF16,
            **TAIL,
            "ONES_COLUMN": ones,
            "LOW_RANK": low_rank,
            "NORMS": norms,
            "ORDERED": ordered,
            "NORM_CHUNK": NORM_CHUNK,
        }
        for ones, low_rank, norms, ordered in [
            (False, False, False, False),
            (True, False, False, False),
            (False, False, True, False),
            (False, True, False, False),
            (True, True, False, False),
            (False, False, False, True),
            (False, False, True, True),
        ]
    ]
    pointers = {
        "x_ptr": "*bf16",
        "u_ptr": "*bf16",
        "values_ptr": "*bf16",
        "meta_ptr": "*i64",
        "bytes_ptr": "*u8",
        "norms_ptr": "*fp32",
        "order_ptr": "*i64",
    }
    spec = dict(
        module="lynx_compile.codegen.prune_compress",
        kernel="prune_compress_kernel",
        pointers=pointers,
        tiles="tile_configs",
        variants=variants,
    )
    assert _compile(spec).count("compiled") == 21


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fp8_kernel_compiles_for_sm90_with_the_hardware_conversion(dtype):
    """Every tile, with x and its row amax in ``dtype`` and the e4m3 conversion instruction the GPU path uses;
    plain and permuting a channel order in its tiles (permute_channels)."""
    bits, bf16 = (BF16, True) if dtype == "bf16" else (FP16, False)
    spec = dict(
        module="lynx_compile.codegen.prune_quantise_compress",
        kernel="quantise_compress_kernel",
        pointers={
            "x_ptr": f"*{dtype}",
            "amax_ptr": f"*{dtype}",
            "values_ptr": "*u8",
            "meta_ptr": "*u8",
            "scale_ptr": "*fp32",
            "order_ptr": "*i64",
        },
        tiles="tile_configs",
        variants=[
            {**bits, "IS_BF16": bf16, "EXP_MIN": FP8_SCALE_EXP_MIN, "HW_CAST": True, "ORDERED": ordered}
            for ordered in (False, True)
        ],
    )
    assert _compile(spec).count("compiled") == 10
