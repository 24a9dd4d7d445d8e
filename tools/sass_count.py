"""Instructions per element of an Inductor-generated Triton kernel, compiled for sm_90 without a GPU.

    TORCH_LOGS=output_code python ... 2> run.log      # or a generated module saved to a file
    python -m tools.sass_count run.log triton_tem_fused_add_compress_2to4_gelu_0 [--warps 4]

(`python -m benchmarks.fusion --dump-code DIR` saves the generated modules of its variants; a module
file from Inductor's cache directory works as it is.)

Takes the kernel's source from the log, drops Inductor's launcher decorator, compiles it with the
installed Triton for sm_90 and disassembles it (Triton's bundled cuobjdump). Every program runs
straight-line code, so (SASS instructions x threads) / (BLOCK_M x BLOCK_K) is the issue cost per
element that docs/design.md ("Producer fusion") compares with the memory traffic's budget.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

_LOG_PREFIX = re.compile(r"^[VIWE]\d+ [^]]*\] \[[^]]*\] \[__output_code\] ")


def kernel_source(log: str, name: str) -> str:
    """The kernel's module, from an output_code log or as it is (a module file of Inductor's cache)."""
    lines = [_LOG_PREFIX.sub("", line) for line in Path(log).read_text().splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{name} = async_compile.triton(")), None)
    if start is None:
        source = "\n".join(lines)
    else:
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("''', device_str"))
        source = "\n".join(lines[start + 1 : end])
    return re.sub(r"@triton_heuristics\.\w+\(.*?\n\)\n(?=@triton\.jit)", "", source, count=1, flags=re.S)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log")
    p.add_argument("kernel")
    p.add_argument("--warps", type=int, default=4)
    args = p.parse_args()
    source = kernel_source(args.log, args.kernel)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.py"  # Triton's JIT reads the kernel's source from its file
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("kernel", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, args.kernel)
        signature = {a: "*bf16" if a.startswith(("in_ptr", "arg_")) else "*i64" for a in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(fn.arg_names))}  # Inductor's buffers are aligned
        compiled = triton.compile(
            triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={}, attrs=attrs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": args.warps, "num_stages": 1},
        )
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tools = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
        sass = subprocess.run(
            [f"{tools}/cuobjdump", "-sass", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    instructions = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    opcodes = collections.Counter(re.search(r"\*/\s+(@!?P\d+\s+)?([A-Z0-9_]+)", line).group(2) for line in instructions)
    block_m, block_k = (int(re.search(rf"{c} : tl.constexpr = (\d+)", source).group(1)) for c in ("BLOCK_M", "BLOCK_K"))
    per_element = len(instructions) * args.warps * 32 / (block_m * block_k)
    print(
        f"{args.kernel}: {len(instructions)} SASS instructions per thread, {block_m} x {block_k} tile, "
        f"{args.warps} warps: {per_element:.1f} per element"
    )
    print(" ".join(f"{op}:{n}" for op, n in opcodes.most_common(30)))


if __name__ == "__main__":
    main()
