"""The standalone prune+compress kernels compile for sm_90, every tile and variant, without a GPU.

The other CPU tests run the kernels in Triton's interpreter, which accepts code that Triton's code
generator refuses: the first kernel with compensation's sums (session 13) reused a name with another
type in a second ``if`` block and only failed on the GPU. Compiling to a cubin here (Triton ships
ptxas) catches that class of error. It runs in a subprocess: the interpreter, switched on for this
test session, replaces ``triton.jit`` kernels with Python ones.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import itertools
import torch
import triton
from triton.backends.compiler import GPUTarget

from lynx_compile.codegen import prune_compress as pc

kernel = pc.prune_compress_kernel
names = kernel.arg_names
pointers = {"x_ptr": "*bf16", "values_ptr": "*bf16", "meta_ptr": "*i64", "bytes_ptr": "*u8", "norms_ptr": "*fp32"}
abs_mask, mag_max = pc.MAGNITUDE_BITS[torch.bfloat16]
variants = [(False, False), (True, False), (False, True)]
for config, (norms, ones_column) in itertools.product(pc.tile_configs(), variants):
    constexprs = dict(ABS_MASK=abs_mask, MAG_MAX=mag_max, ONES_COLUMN=ones_column, NORMS=norms,
                      TAIL_BLOCK=pc.TAIL_BLOCK, NORM_CHUNK=pc.NORM_CHUNK, **config.kwargs)
    signature = {a: pointers.get(a, "constexpr" if a in constexprs else "i32") for a in names}
    source = triton.compiler.ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(a),): v for a, v in constexprs.items()},
        attrs={(names.index(a),): [["tt.divisibility", 16]] for a in pointers})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
    assert compiled.asm["cubin"], config
    print("compiled", config, "norms" if norms else "", "ones_column" if ones_column else "")
"""

LOW_RANK_SCRIPT = r"""
import itertools
import torch
import triton
from triton.backends.compiler import GPUTarget

from lynx_compile.codegen import prune_compress as pc
from lynx_compile.codegen import prune_compress_low_rank as lr

kernel = lr.prune_compress_low_rank_kernel
names = kernel.arg_names
pointers = {"x_ptr": "*bf16", "a_ptr": "*bf16", "u_ptr": "*bf16", "values_ptr": "*bf16", "meta_ptr": "*i64",
            "bytes_ptr": "*u8"}
abs_mask, mag_max = pc.MAGNITUDE_BITS[torch.bfloat16]
for config, ones_column in itertools.product(lr.tile_configs(), (False, True)):
    constexprs = dict(ABS_MASK=abs_mask, MAG_MAX=mag_max, ONES_COLUMN=ones_column, R_PAD=32,
                      TAIL_BLOCK=pc.TAIL_BLOCK, **config.kwargs)
    signature = {a: pointers.get(a, "constexpr" if a in constexprs else "i32") for a in names}
    source = triton.compiler.ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(a),): v for a, v in constexprs.items()},
        attrs={(names.index(a),): [["tt.divisibility", 16]] for a in pointers})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
    assert compiled.asm["cubin"], config
    print("compiled", config, "ones_column" if ones_column else "")
"""


def _compile(script: str) -> str:
    """Run ``script`` without the interpreter; its stdout (skips where Triton has no ptxas)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode and "ptxas" in run.stderr and "No such file" in run.stderr:
        pytest.skip("this Triton has no ptxas to compile with")
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


def test_kernel_compiles_for_sm90_with_every_tile_and_variant():
    assert _compile(SCRIPT).count("compiled") == 9


def test_low_rank_kernel_compiles_for_sm90_with_every_tile_and_variant():
    assert _compile(LOW_RANK_SCRIPT).count("compiled") == 6
