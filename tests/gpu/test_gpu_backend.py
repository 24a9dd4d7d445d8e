"""The lynx backend on a GPU with sparse tensor cores: fast path == reference path, fused == standalone."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import rel
from torch._inductor.utils import run_and_get_code

import lynx_compile
from lynx_compile import PruneSite, prune_2to4, steps, zoo
from lynx_compile.codegen.cusparselt_layout import compress_reference, padded_rows, significant_numel
from lynx_compile.codegen.prune_compress import prune_compress
from lynx_compile.semantics import NORM_CHUNK, norm_partials

pytestmark = pytest.mark.gpu


def _run(model, kwargs, options):
    torch._dynamo.reset()
    out = zoo.sample(torch.compile(model, backend="lynx", options=options)(**kwargs))
    torch._dynamo.reset()
    return out


@pytest.mark.parametrize(
    "name, compensate",
    [(n, False) for n in ("flux", "sd3", "pixart", "wan", "dit", "qwen", "zimage")] + [("flux", True)],
)
def test_zoo_model_fast_path_matches_reference_path(name, compensate):
    """Every sparse GEMM on cuSPARSELt (cost model off: tiny shapes are not faster), vs path='reference'.

    The yardstick is the reference path in float32: the bf16 fast path must be as close to it as the
    bf16 reference path is. Both lose to bf16 rounding, which over a whole model also flips near-tie
    pruning decisions in later layers; the fast path must add nothing beyond that.
    """
    width = 3 if name == "zimage" else 4  # Z-Image's SwiGLU width int(8/3 x 384) = 1024 is 2:4-aligned
    built = zoo.build(name, width=width, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    opts = {"min_rows": 16, "cost_model": False, "fuse_producers": True, "compensate": compensate}
    with torch.no_grad():
        n = len(lynx_compile.reports())
        fast = _run(built.model, built.example_kwargs, opts)
        layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
        ref = _run(built.model, built.example_kwargs, {**opts, "path": "reference"})
        dense = built()
        kwargs32 = zoo.to_device_dtype(built.example_kwargs, torch.device("cuda"), torch.float32)  # lists too (Z-Image)
        ref32 = _run(built.model.float(), kwargs32, {**opts, "path": "reference"})
    sparse = [layer for layer in layers if layer.sparse]
    assert sparse and all(layer.path == "cusparselt" for layer in sparse), [(x.name, x.path) for x in sparse]
    fused = [layer.name for layer in sparse if layer.prune == "fused"]
    # with compensate the template sums the row norms too, where K is whole NORM_CHUNK-column chunks
    assert fused or compensate, f"fused: {fused}"
    assert not compensate or all(layer.k % NORM_CHUNK == 0 for layer in sparse if layer.prune == "fused")
    pruning, fast_vs_ref = rel(ref, dense), rel(fast, ref)
    bf16_floor, fast_vs_32 = rel(ref, ref32), rel(fast, ref32)
    print(
        f"\n{name}{' compensated' if compensate else ''}: pruning effect {pruning:.4f}, "
        f"fast vs ref {fast_vs_ref:.4f}, vs fp32 ref: bf16 ref {bf16_floor:.4f}, fast {fast_vs_32:.4f}; "
        f"fused {len(fused)}/{len(sparse)}"
    )
    assert pruning > 2e-2  # the pruning really ran
    assert fast_vs_32 < 1.5 * bf16_floor + 2e-3
    # and close to the bf16 reference path, as close as rounding lets it: in Z-Image's tiny random
    # build the bf16 reference itself lands ~0.15 from float32 where its dense model lands 0.009 (on
    # CPU): near-tie pruning flips under bf16 rounding compound there (Qwen-Image 0.015)
    assert fast_vs_ref < max(min(5e-2, pruning / 4), 1.5 * bf16_floor)


def test_error_budget_on_the_fast_path():
    """max_layer_error on a GPU: the budget picks the same GEMMs as inspect's errors say, and they run on cuSPARSELt."""
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    opts = {"min_rows": 16, "cost_model": False}
    report = lynx_compile.inspect(built.model, **built.example_kwargs, options=opts)
    errors = {layer.name: layer.rel_err for layer in report.layers if layer.sparse}
    budget = sorted(errors.values())[len(errors) // 2]
    with torch.no_grad():
        n = len(lynx_compile.reports())
        _run(built.model, built.example_kwargs, {**opts, "max_layer_error": budget})
        layers = {layer.name: layer for r in lynx_compile.reports()[n:] for layer in r.layers}
    # the compile-time measurement runs the bf16 graph eagerly, as inspect does: errors agree to rounding
    near = {name for name, e in errors.items() if abs(e - budget) < 1e-3 * budget}
    sparse = {name for name, layer in layers.items() if layer.sparse}
    assert sparse - near == {name for name, e in errors.items() if e <= budget} - near
    assert sparse and all(layers[name].path == "cusparselt" for name in sparse)


def test_fused_lowering_equals_standalone_kernel_on_gpu():
    m, k = 4096 + 500, 3072  # rows padded to 4608 inside the fused kernel
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[7, :8] = 0
    x[9, 4:8] = float("inf")
    rows = padded_rows(m)
    fused = torch.compile(lambda t: torch.ops.lynx.compress_2to4(t * 2, rows, PruneSite.FUSED.value), dynamic=False)(x)
    standalone = prune_compress(x * 2, rows=rows).reshape(-1).view(torch.int64)
    n = significant_numel(rows, k, x.dtype) * 2 // 8
    assert torch.equal(fused[:n], standalone[:n])
    live = torch._cslt_compress(prune_2to4(F.pad(x * 2, (0, 0, 0, rows - m)))).reshape(-1).view(torch.int64)
    assert torch.equal(fused[:n], live[:n])
    reference = compress_reference(prune_2to4(F.pad(x * 2, (0, 0, 0, rows - m)))).reshape(-1).view(torch.int64)
    assert torch.equal(reference[:n], live[:n])


def test_compensated_template_gives_cusparselts_bytes_and_the_sums():
    """compensate with fuse_producers: the template with bias + GELU as its prologue writes cuSPARSELt's
    bytes of the pruned GELU as compiled, and the norm sums up to float32 summation order, in one kernel."""
    m, k = 4096 + 500, 3072
    g = torch.Generator().manual_seed(k)
    h, b = torch.randn(m, k, generator=g).bfloat16().cuda(), torch.randn(k, generator=g).bfloat16().cuda()
    h[3, 5] = float("inf")
    rows = padded_rows(m)

    def fused(h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.lynx.compress_2to4_norms(F.gelu(h + b, approximate="tanh"), rows, PruneSite.FUSED.value)

    torch._dynamo.reset()
    (got, norms), code = run_and_get_code(torch.compile(fused, dynamic=False), h, b)
    assert "= torch.ops.lynx.compress_2to4_norms" not in "\n".join(code)  # the template ran, not the op
    x = torch.compile(lambda h, b: F.gelu(h + b, approximate="tanh"))(h, b)  # the producer, rounded as compiled
    live = torch._cslt_compress(prune_2to4(F.pad(x, (0, 0, 0, rows - m)))).reshape(-1).view(torch.int64)
    n = significant_numel(rows, k, x.dtype) * 2 // 8
    assert torch.equal(got[:n], live[:n])
    torch.testing.assert_close(norms, norm_partials(x), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_mlp_block_prunes_inside_the_gelu_kernel():
    """fc1 -> GELU -> fc2: GELU's output is never written dense; its kernel writes the compressed bytes."""
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU("tanh"), torch.nn.Linear(2048, 512))
    mlp = mlp.cuda().to(torch.bfloat16).eval().requires_grad_(False)
    x = torch.randn(1000, 512, device="cuda", dtype=torch.bfloat16)
    opts = {"min_rows": 16, "cost_model": False, "default_exclude": (), "fuse_producers": True}
    outs = {}
    with torch.no_grad():
        for name, model, inp, extra in [
            ("fast", mlp, x, {}),
            ("ref", mlp, x, {"path": "reference"}),
            ("ref32", copy.deepcopy(mlp).float(), x.float(), {"path": "reference"}),
        ]:
            torch._dynamo.reset()
            n = len(lynx_compile.reports())
            outs[name], code = run_and_get_code(torch.compile(model, backend="lynx", options={**opts, **extra}), inp)
            if name == "fast":
                prune = {layer.name: layer.prune for r in lynx_compile.reports()[n:] for layer in r.layers}
                kernels = re.findall(r"^(triton_\w+) = async_compile\.triton", "\n".join(code), flags=re.M)
    assert prune == {"0": "triton", "2": "fused"}, prune  # fc1 reads the graph input: nothing to fuse
    # fc1's bias + GELU inside the prune+compress template; fc2's bias add
    assert len(kernels) == 2, kernels
    assert [k for k in kernels if "gelu" in k and "compress" in k and k.startswith("triton_tem_")], kernels
    assert not [k for k in kernels if "gelu" in k and "compress" not in k], kernels  # GELU never written dense
    dense = mlp(x)
    pruning, fast_vs_ref = rel(outs["ref"], dense), rel(outs["fast"], outs["ref"])
    print(
        f"\nmlp: pruning effect {pruning:.4f}, fast vs ref {fast_vs_ref:.4f}, vs fp32 ref: "
        f"bf16 ref {rel(outs['ref'], outs['ref32']):.4f}, fast {rel(outs['fast'], outs['ref32']):.4f}"
    )
    assert fast_vs_ref < min(5e-2, pruning / 4)  # as in the zoo test


def test_folded_biases_match_reference_path_and_follow_weight_updates_under_cuda_graphs():
    """fold_bias on FLUX: q/k/v add their bias inside cuSPARSELt; in-place weight updates between CUDA
    graph replays reach the folded copies (the compiled model then equals a fresh compile)."""
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    opts = {"min_rows": 16, "cost_model": False, "fold_bias": True}
    model, kwargs = built.model, built.example_kwargs
    with torch.no_grad():
        n = len(lynx_compile.reports())
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="lynx", options=opts)
        fast = [compiled(**kwargs, return_dict=False)[0].clone() for _ in range(3)][-1]  # graphs recorded, replayed
        layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
        ref = _run(model, kwargs, {**opts, "path": "reference"})
        dense = built()
        block = model.single_transformer_blocks[0]
        block.attn.to_q.weight.mul_(-1.5)
        block.attn.to_v.bias.add_(0.5)
        updated = compiled(**kwargs, return_dict=False)[0].clone()  # the graph pool is reused below
        fresh = _run(model, kwargs, opts)
    folded = [layer.name for layer in layers if layer.bias_folded]
    assert any(name == "single_transformer_blocks.0.attn.to_q" for name in folded), folded
    assert not any(name.endswith("proj_mlp") for name in folded), folded  # feeds a GELU: compressed apart
    pruning, fast_vs_ref = rel(ref, dense), rel(fast, ref)
    print(
        f"\nflux fold_bias: {len(folded)} folded, pruning effect {pruning:.4f}, fast vs ref {fast_vs_ref:.4f}, "
        f"updated vs fresh {rel(updated, fresh):.2e}"
    )
    assert fast_vs_ref < min(5e-2, pruning / 4)
    assert rel(updated, fast) > 1e-2  # the update changed the output
    assert rel(updated, fresh) < 1e-3  # and the folded copies followed it


def test_dense_steps_switch_on_the_fast_path_with_cuda_graphs(monkeypatch):
    """Option dense_steps on cuSPARSELt with CUDA graphs (the default): the first steps equal dense, the rest the
    plain sparse compile, and nothing recompiles per step."""
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    options = {"cost_model": False, "min_rows": 16}
    with torch.no_grad():
        dense = built()
        sparse = _run(built.model, built.example_kwargs, options).clone()
        compiles = []
        inner = lynx_compile.backend.compile_fx
        monkeypatch.setattr(lynx_compile.backend, "compile_fx", lambda *a, **k: compiles.append(1) or inner(*a, **k))
        compiled = torch.compile(built.model, backend="lynx", options={**options, "dense_steps": 2})
        outs = []
        for step in range(4):
            steps.set_step(step, 4)
            outs.append(zoo.sample(compiled(**built.example_kwargs)).clone())
            if step == 0:
                first = len(compiles)
        steps.set_step(None)
    assert rel(outs[0], dense) < 2e-2 and rel(outs[1], dense) < 2e-2
    assert rel(outs[2], sparse) < 1e-2 and rel(outs[3], sparse) < 1e-2 and rel(outs[2], dense) > 5e-2
    assert any("dense_steps=2" in note for note in lynx_compile.reports()[-1].notes)
    assert len(compiles) == first and first % 2 == 0  # a dense and a sparse graph per Dynamo graph, at step 0 only
    torch._dynamo.reset()


def test_output_error_budget_on_the_fast_path():
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        dense = built()
        out = _run(built.model, built.example_kwargs, {"cost_model": False, "min_rows": 16, "error_budget": 0.1})
    assert rel(out, dense) <= 0.1 * 1.05  # bf16: the compiled graph rounds a little differently from the measuring run
    layers = lynx_compile.reports()[-1].layers
    assert any(layer.sparse and layer.path == "cusparselt" for layer in layers)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_channel_order_fast_path_matches_reference_path(precision):
    """permute_channels on cuSPARSELt (the gather before the prune kernel or in the template's prologue, the
    weights' column-permuted copies) gives the reference path's result up to bf16 rounding, as without it."""
    built = zoo.build("flux", width=4, resolution=256, batch=2, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        calibration = lynx_compile.calibrate(
            built.model, [built.example_kwargs], options={"min_rows": 16, "permute_channels": True}, progress=False
        )
        opts = {
            "min_rows": 16,
            "cost_model": False,
            "fuse_producers": True,
            "precision": precision,
            "permute_channels": True,
            "calibration": calibration,
        }
        n = len(lynx_compile.reports())
        fast = _run(built.model, built.example_kwargs, opts)
        layers = [layer for r in lynx_compile.reports()[n:] for layer in r.layers]
        ref = _run(built.model, built.example_kwargs, {**opts, "path": "reference"})
        plain = _run(built.model, built.example_kwargs, {**opts, "permute_channels": False, "path": "reference"})
        dense = built()
    sparse = [layer for layer in layers if layer.sparse]
    assert sparse and all(layer.path == "cusparselt" and "channels permuted" in layer.reason for layer in sparse)
    pruning, fast_vs_ref = rel(ref, dense), rel(fast, ref)
    print(
        f"\nflux {precision} permuted: pruning effect {pruning:.4f} (unpermuted {rel(plain, dense):.4f}), "
        f"fast vs ref {fast_vs_ref:.4f}"
    )
    assert pruning > 2e-2 and not torch.equal(ref, plain)  # pruned, in another order
    assert fast_vs_ref < min(5e-2, pruning / 4)
