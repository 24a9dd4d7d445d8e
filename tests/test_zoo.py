"""Model zoo: every architecture builds tiny and runs; seeds, knobs and errors do what they say."""

import ast
import json
from pathlib import Path

import pytest
import torch

from lynx_compile import zoo

# model_config() of every architecture as the zoo's code wrote it before the configs became data
# (architectures.json; commit b0b52e8), as Python literals: tuples stay tuples
BEFORE_JSON = ast.literal_eval((Path(__file__).parent / "data" / "zoo_configs.txt").read_text())

# output of a default tiny build (128 px; Wan 128x224, 5 frames): DiT and PixArt predict noise and
# variance (2 x 4 channels); FLUX returns packed 2x2 patches, one 64-channel row per token
TINY_OUT = {
    "dit": (1, 8, 16, 16),
    "pixart": (1, 8, 16, 16),
    "sd3": (1, 16, 16, 16),
    "flux": (1, 64, 64),
    "wan": (1, 16, 2, 16, 28),
    "qwen": (1, 64, 64),
    "zimage": (1, 16, 1, 16, 16),  # its list of per-image samples, stacked
}
TINY_TOKENS = {"dit": 64, "pixart": 64, "sd3": 64, "flux": 64, "wan": 2 * 8 * 14, "qwen": 64, "zimage": 64}


def _blocks(built: zoo.ZooModel) -> int:
    model = built.model
    attr = {"wan": "blocks", "zimage": "layers"}.get(built.name, "transformer_blocks")
    return len(getattr(model, attr))


def _latents(kwargs: dict) -> torch.Tensor:
    """The noisy latent input (Z-Image takes a list, one per image)."""
    return torch.stack(kwargs["x"]) if "x" in kwargs else kwargs["hidden_states"]


def test_names():
    assert zoo.ZOO_NAMES == ("dit", "pixart", "sd3", "flux", "wan", "qwen", "zimage")


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_configs_from_json_equal_the_code_they_replaced(name):
    """Same keys, values and types (a tuple is not a list) for every size and knob."""
    before = BEFORE_JSON[name]
    knobs = {"tiny": {}, "full": {"size": "full"}, "full_depth3_width5": {"size": "full", "depth": 3, "width": 5}}
    for key, kwargs in knobs.items():
        config = zoo.model_config(name, **kwargs)
        assert config == before[key], key
        assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in before[key].items()}, key


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_tiny_forward(name):
    built = zoo.build(name)
    out = built()
    assert tuple(out.shape) == TINY_OUT[name]
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().mean() > 0.1  # random, unit-scale weights: far from zero
    assert built.tokens == TINY_TOKENS[name]
    assert built.text_tokens == (0 if name == "dit" else 8)
    assert not built.model.training
    assert not any(p.requires_grad for p in built.model.parameters())
    torch.testing.assert_close(out, zoo.sample(built.model(**built.example_kwargs)), rtol=0, atol=0)


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_no_parameter_left_zero(name):
    """diffusers zero-initialises adaLN gates and output layers; the zoo must not, or pruning is invisible."""
    built = zoo.build(name)
    zero = [n for n, p in built.model.named_parameters() if not p.any()]
    assert not zero


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_seeded_builds_are_reproducible(name):
    a, b, c = zoo.build(name, seed=3), zoo.build(name, seed=3), zoo.build(name, seed=4)
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    assert torch.equal(a(), b())
    assert not torch.equal(_latents(a.example_kwargs), _latents(c.example_kwargs))
    assert not torch.allclose(a(), c())


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_example_inputs_match_build_and_follow_seed(name):
    built = zoo.build(name, seed=5)
    frames = 5 if name == "wan" else None
    again = zoo.example_inputs(name, built.model, resolution=128, frames=frames, seed=5, text_tokens=built.text_tokens)
    fresh = zoo.example_inputs(name, built.model, resolution=128, frames=frames, seed=6, text_tokens=built.text_tokens)
    assert again.keys() == built.example_kwargs.keys() == fresh.keys()
    for key, value in built.example_kwargs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again[key], value), key
            assert fresh[key].shape == value.shape, key
    assert torch.equal(_latents(again), _latents(built.example_kwargs))
    assert not torch.equal(_latents(fresh), _latents(built.example_kwargs))


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_depth_knob(name):
    built = zoo.build(name, depth=3)
    assert _blocks(built) == 3
    if name == "flux":  # double and single stream keep FLUX's 1:2 ratio
        assert len(built.model.single_transformer_blocks) == 6
    assert tuple(built().shape) == TINY_OUT[name]


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_width_knob_sets_heads_and_keeps_head_dim(name):
    built = zoo.build(name, width=3)
    cfg = built.model.config
    if name == "zimage":
        assert cfg.n_heads == cfg.n_kv_heads == 3 and cfg.dim == 3 * 32
    else:
        assert cfg.num_attention_heads == 3 and cfg.attention_head_dim == 32
    inner = 3 * 32
    linears = [m for m in built.model.modules() if isinstance(m, torch.nn.Linear)]
    assert max(m.out_features for m in linears if m.in_features == inner) > inner  # MLPs / adaLN widen it
    if name == "pixart":
        assert cfg.cross_attention_dim == inner
    if name == "sd3":
        assert cfg.caption_projection_dim == inner
    if name == "wan":
        assert cfg.ffn_dim % 64 == 0 and cfg.ffn_dim > inner
    assert tuple(built().shape) == TINY_OUT[name]


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_resolution_and_batch_knobs(name):
    built = zoo.build(name, resolution=192, batch=2)
    out = built()
    assert out.shape[0] == 2
    if name in ("flux", "qwen"):
        assert built.tokens == 12 * 12 and out.shape[1] == built.tokens
    elif name == "wan":  # 192 x 336 px: latent 24 x 42, patch 2
        assert tuple(out.shape[2:]) == (2, 24, 42) and built.tokens == 2 * 12 * 21
    elif name == "zimage":  # one latent frame
        assert tuple(out.shape[2:]) == (1, 24, 24) and built.tokens == 12 * 12
    else:
        assert tuple(out.shape[2:]) == (24, 24) and built.tokens == 12 * 12
    assert torch.isfinite(out).all()


def test_frames_knob():
    built = zoo.build("wan", frames=9)
    assert built.example_kwargs["hidden_states"].shape[2] == 3
    assert built.tokens == 3 * 8 * 14
    assert built().shape[2] == 3


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_bfloat16_build(name):
    built = zoo.build(name, dtype=torch.bfloat16)
    out = built()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all() and out.float().abs().mean() > 0.1
    fp32 = {n for n, p in built.model.named_parameters() if p.dtype == torch.float32}
    if name == "wan":  # from_pretrained keeps Wan's time embedder, norms and modulation tables in float32
        keep = {"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"}
        assert fp32 and all(keep & set(n.split(".")) for n in fp32)
        assert "condition_embedder.time_embedder.linear_1.weight" in fp32
    else:
        assert not fp32
    floats = {
        k: v.dtype for k, v in built.example_kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    # as the pipelines pass them: scheduler timesteps (SD3, Wan, Z-Image) and FLUX's guidance stay float32
    float32 = {"sd3": {"timestep"}, "wan": {"timestep"}, "zimage": {"t"}, "flux": {"guidance"}}.get(name, set())
    assert {k for k, dtype in floats.items() if dtype == torch.float32} == float32
    assert all(dtype == torch.bfloat16 for k, dtype in floats.items() if k not in float32)


def test_bfloat16_draws_the_float32_weights():
    a, b = zoo.build("dit"), zoo.build("dit", dtype=torch.bfloat16)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa.to(torch.bfloat16), pb), name
    rel = (b().float() - a()).norm() / a().norm()
    assert rel < 0.05


# published totals: DiT 675M + per-block embedders (see the module docstring), PixArt-Sigma 0.6B,
# SD3-medium 2B, FLUX.1 12B, Wan2.1 14B, Qwen-Image 20B, Z-Image 6B
FULL_PARAMS = {
    "dit": 0.750e9,
    "pixart": 0.611e9,
    "sd3": 2.028e9,
    "flux": 11.90e9,
    "wan": 14.29e9,
    "qwen": 20.43e9,
    "zimage": 6.155e9,
}
FULL_TOKENS = {
    "dit": (256, 0),
    "pixart": (4096, 300),
    "sd3": (4096, 333),
    "flux": (4096, 512),
    "wan": (21 * 30 * 52, 512),
    "qwen": (4096, 256),
    "zimage": (4096, 256),
}


@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_full_size_on_meta(name):
    built = zoo.build(name, size="full", device="meta", dtype=torch.bfloat16)
    params = sum(p.numel() for p in built.model.parameters())
    assert params == pytest.approx(FULL_PARAMS[name], rel=0.005)
    assert (built.tokens, built.text_tokens) == FULL_TOKENS[name]
    shallow = zoo.build(name, size="full", depth=1, device="meta")
    kept = 5 if name == "zimage" else 1  # Z-Image's refiner stacks (2 + 2 blocks) keep their depth
    assert sum(p.numel() for p in shallow.model.parameters()) < params * (kept + 1) / 30


def test_flux_full_inputs():
    built = zoo.build("flux", size="full", device="meta", resolution=512)
    kw = built.example_kwargs
    assert kw["hidden_states"].shape == (1, 32 * 32, 64)
    assert kw["encoder_hidden_states"].shape == (1, 512, 4096)
    assert kw["img_ids"].shape == (32 * 32, 3) and kw["txt_ids"].shape == (512, 3)
    assert kw["guidance"].shape == (1,) and kw["pooled_projections"].shape == (1, 768)


def test_qwen_full_inputs():
    built = zoo.build("qwen", size="full", device="meta", resolution=512, batch=2)
    kw = built.example_kwargs
    assert kw["hidden_states"].shape == (2, 32 * 32, 64)
    assert kw["encoder_hidden_states"].shape == (2, 256, 3584)
    assert kw["timestep"].shape == (2,) and kw["img_shapes"] == [[(1, 32, 32)]] * 2
    assert "encoder_hidden_states_mask" not in kw  # what the pipeline passes for unpadded prompts


def test_zimage_full_inputs_are_per_image_lists():
    built = zoo.build("zimage", size="full", device="meta", resolution=512, batch=2)
    kw = built.example_kwargs
    assert [x.shape for x in kw["x"]] == [(16, 1, 64, 64)] * 2
    assert [c.shape for c in kw["cap_feats"]] == [(256, 2560)] * 2
    assert kw["t"].shape == (2,)
    cfg = built.model.config
    assert int(cfg.dim / 3 * 8) == 10240 and cfg.dim // cfg.n_heads == 128  # SwiGLU width, head dim


def test_flux_img_ids_are_grid_positions():
    ids = zoo.build("flux").example_kwargs["img_ids"]
    assert torch.equal(ids[:, 0], torch.zeros(64))
    assert torch.equal(ids[9], torch.tensor([0.0, 1.0, 1.0]))  # row 1, column 1 of the 8 x 8 grid


def test_checkpoint_round_trip(tmp_path):
    built = zoo.build("sd3", seed=7)
    built.model.save_pretrained(tmp_path / "transformer")  # a pipeline's layout
    loaded = zoo.build("sd3", seed=7, checkpoint=tmp_path)
    for (name, a), b in zip(built.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # same weights and inputs; freshly loaded storage may take another CPU GEMM path: rounding only
    torch.testing.assert_close(loaded(), built(), rtol=1e-5, atol=1e-5)
    direct = zoo.build("sd3", seed=7, checkpoint=tmp_path / "transformer")
    torch.testing.assert_close(direct(), built(), rtol=1e-5, atol=1e-5)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        zoo.build("sd3", checkpoint=tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no config\.json"):
        zoo.build("sd3", checkpoint=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ValueError, match="describes a FluxTransformer2DModel"):
        zoo.build("sd3", checkpoint=tmp_path)
    with pytest.raises(ValueError, match="depth and width"):
        zoo.build("sd3", checkpoint=tmp_path, depth=2)


@pytest.mark.parametrize("builder", [zoo.build, zoo.model_config])
def test_bad_name_lists_valid_names(builder):
    with pytest.raises(ValueError, match=r"unknown zoo model 'sdxl'.*dit, pixart, sd3, flux, wan, qwen, zimage"):
        builder("sdxl")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("dit", {"size": "huge"}, "size must be one of"),
        ("dit", {"resolution": 100}, "multiple of 16"),
        ("dit", {"depth": 0}, "depth must be >= 1"),
        ("dit", {"width": 0}, "width must be >= 1"),
        ("dit", {"batch": 0}, "batch must be >= 1"),
        ("flux", {"frames": 5}, "frames does not apply to 'flux'"),
        ("wan", {"frames": 8}, "4k\\+1"),
        ("dit", {"dtype": torch.int32}, "floating dtype"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo.build(name, **kwargs)


def test_example_inputs_errors():
    model = zoo.build("dit").model
    with pytest.raises(ValueError, match="'flux' expects a FluxTransformer2DModel"):
        zoo.example_inputs("flux", model, resolution=128)
    wan = zoo.build("wan").model
    with pytest.raises(ValueError, match="frames is required for wan"):
        zoo.example_inputs("wan", wan, resolution=128)


def test_import_does_not_load_diffusers():
    import subprocess
    import sys

    code = "import sys, lynx_compile.zoo; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
