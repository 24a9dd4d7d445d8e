"""Model zoo: real diffusers DiT architectures, built from their published configs, random weights.

Demos, tests and GPU benchmarks need the real layer shapes and dataflow of the DiTs people run,
but nothing may be downloaded, so each entry is the diffusers class built from a copy of the
checkpoint's ``transformer/config.json`` (``architectures.json`` beside this file), then given
seeded random weights.
``checkpoint=`` loads a local diffusers directory instead.

=======  ===========================  ==========================================  =========================
name     diffusers class              config mirrors                              full-size inputs
=======  ===========================  ==========================================  =========================
dit      DiTTransformer2DModel        facebook/DiT-XL-2-256                       256 px: 256 tokens,
                                                                                  class label
pixart   PixArtTransformer2DModel     PixArt-alpha/PixArt-Sigma-XL-2-1024-MS      1024 px: 4096 tokens,
                                                                                  300 T5 tokens
sd3      SD3Transformer2DModel        stabilityai/stable-diffusion-3-medium-      1024 px: 4096 tokens,
                                      diffusers                                   333 = 77 CLIP + 256 T5
flux     FluxTransformer2DModel       black-forest-labs/FLUX.1-dev                1024 px: 4096 tokens,
                                                                                  512 T5 tokens, guidance
wan      WanTransformer3DModel        Wan-AI/Wan2.1-T2V-14B-Diffusers             480x832, 81 frames:
                                                                                  32760 tokens, 512 T5
qwen     QwenImageTransformer2DModel  Qwen/Qwen-Image                             1024 px: 4096 tokens,
                                                                                  256 Qwen2.5-VL tokens
zimage   ZImageTransformer2DModel     Tongyi-MAI/Z-Image-Turbo                    1024 px: 4096 tokens,
                                                                                  256 Qwen3 tokens
=======  ===========================  ==========================================  =========================

(each mirrors ``<repo>/transformer/config.json``). The GEMMs that matter, as module paths (``*``: a
block index; q/k/v/out: ``attn.to_q``, ``attn.to_k``, ``attn.to_v``, ``attn.to_out.0``):

- dit: ``transformer_blocks.*.``: q/k/v/out of ``attn1``, ``ff.net.0.proj`` / ``ff.net.2`` (GELU MLP),
  ``norm1.linear`` (adaLN-Zero, 6 x width), ``norm1.emb.timestep_embedder.linear_1/2`` (diffusers
  gives every block its own timestep and class embedders, hence 750M parameters where the paper
  counts 675M); ``proj_out_1`` (final adaLN), ``proj_out_2``; ``pos_embed.proj`` is a patchify conv.
- pixart: ``transformer_blocks.*.``: q/k/v/out of ``attn1`` (self) and ``attn2`` (cross: k/v see the
  text tokens only), ``ff.net.0.proj`` / ``ff.net.2``; ``adaln_single.linear`` (6 x width, shared by
  all blocks), ``adaln_single.emb.timestep_embedder.linear_1/2``, ``caption_projection.linear_1/2``,
  ``proj_out``.
- sd3: ``transformer_blocks.*.``: q/k/v/out, ``attn.add_q_proj/add_k_proj/add_v_proj`` and
  ``attn.to_add_out`` (text stream), ``ff.net.0.proj`` / ``ff.net.2``, ``ff_context.net.0.proj`` /
  ``ff_context.net.2``, ``norm1.linear`` / ``norm1_context.linear`` (adaLN; the last block updates
  the image stream only: no ``to_add_out`` / ``ff_context``); ``context_embedder``,
  ``time_text_embed.timestep_embedder.linear_1/2``, ``time_text_embed.text_embedder.linear_1/2``,
  ``norm_out.linear``, ``proj_out``.
- flux: ``transformer_blocks.*.`` (double stream): the same set as sd3's blocks;
  ``single_transformer_blocks.*.``: q/k/v, ``proj_mlp`` (4 x width) and ``proj_out`` (fused attention
  out + MLP down, in = 5 x width), ``norm.linear`` (adaLN); ``x_embedder``, ``context_embedder``,
  ``time_text_embed.{timestep,guidance,text}_embedder.linear_1/2``, ``norm_out.linear``,
  ``proj_out``.
- wan: ``blocks.*.``: q/k/v/out of ``attn1`` (self) and ``attn2`` (cross), ``ffn.net.0.proj`` /
  ``ffn.net.2``; ``condition_embedder.time_embedder.linear_1/2``, ``condition_embedder.time_proj``
  (6 x width, shared by all blocks), ``condition_embedder.text_embedder.linear_1/2``, ``proj_out``;
  ``patch_embedding`` is a patchify Conv3d.
- qwen: ``transformer_blocks.*.`` (double stream, FLUX's layout at 60 blocks): q/k/v/out,
  ``attn.add_q_proj/add_k_proj/add_v_proj`` and ``attn.to_add_out``, ``img_mlp.net.0.proj`` /
  ``img_mlp.net.2``, ``txt_mlp.net.0.proj`` / ``txt_mlp.net.2``, ``img_mod.1`` / ``txt_mod.1``
  (adaLN, 6 x width); ``img_in`` (patch embedder), ``txt_in`` (text embedder, from 3584),
  ``time_text_embed.timestep_embedder.linear_1/2``, ``norm_out.linear``, ``proj_out``.
- zimage: single stream (image and caption tokens in one sequence): ``layers.*.``, and before them
  ``noise_refiner.*.`` (image tokens) and ``context_refiner.*.`` (caption tokens), each with
  ``attention.to_q/to_k/to_v/to_out.0``, a SwiGLU ``feed_forward.w1`` / ``w3`` (gate and up, one
  input) and ``w2`` (down, from 8/3 x width), ``adaLN_modulation.0`` (4 x width; not in the context
  refiner); ``all_x_embedder.2-1`` (patch embedder), ``cap_embedder.1`` (from 2560),
  ``t_embedder.mlp.0/2``, ``all_final_layer.2-1.adaLN_modulation.1`` and ``.linear`` (output).
  Its forward takes lists, one latent (C, 1, h, w) and one caption (tokens, 2560) per image, and
  returns a list; ``ZooModel`` and ``sample`` stack it.

Sizes: ``size="full"`` is the published config; ``size="tiny"`` the same architecture with 2 heads
of 32 channels and 2 blocks (FLUX: 1 double-stream + 2 single-stream; Z-Image: 3 heads, so that its
SwiGLU width int(8/3 x 96) = 256 stays a multiple of 16, and one refiner block each) at 128 px
(Wan: 128x224, 5 frames), a few milliseconds on a CPU. Text encoder widths (T5 4096, CLIP pooled 2048/768) are
the real ones at every size, so inputs have the shapes the real pipelines feed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ZOO_NAMES",
    "ZooModel",
    "build",
    "example_inputs",
    "flux_pipeline",
    "model_config",
    "sample",
    "to_device_dtype",
]


@dataclass(frozen=True)
class _Arch:
    """One zoo entry (``architectures.json``): the published config and what the real pipeline feeds
    the transformer."""

    cls_name: str
    config: Mapping[str, Any]  # transformer/config.json of the mirrored checkpoint (class arguments only)
    tiny: Mapping[str, Any]  # overrides that make size="tiny"
    resolution: int  # the pipeline's default image height in pixels
    text_tokens: int  # text tokens the real pipeline passes (0: class-conditional)
    frames: int | None = None  # the pipeline's default frame count (video models only)
    # inputs the pipeline passes in float32 whatever the transformer's dtype: timesteps straight from
    # the scheduler (SD3, Wan, Z-Image), FLUX's guidance. In bf16, Z-Image's t in [0, 1] (x 1000
    # inside) is off by up to ~2 timesteps, and its tiny build's output by 4% before any pruning.
    float32_inputs: tuple[str, ...] = ()


_TINY_RESOLUTION = 128  # the tiny entries' sample_size (latent pixels) is this / 8
_TINY_FRAMES = 5
_TINY_TEXT_TOKENS = 8


def _tuples(value: Any) -> Any:
    """JSON's lists as the tuples the configs hold (``axes_dims_rope``, ``patch_size``, ...)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _load_architectures() -> dict[str, _Arch]:
    data = json.loads(resources.files(__name__).joinpath("architectures.json").read_text())
    return {
        name: _Arch(
            cls_name=entry["class"],
            config=_tuples(entry["config"]),
            tiny=_tuples(entry["tiny"]),
            resolution=entry["resolution"],
            text_tokens=entry["text_tokens"],
            frames=entry.get("frames"),
            float32_inputs=tuple(entry.get("float32_inputs", ())),
        )
        for name, entry in data.items()
        if not name.startswith("_")
    }


_ARCHS = _load_architectures()
ZOO_NAMES: tuple[str, ...] = tuple(_ARCHS)
_SIZES = ("tiny", "full")
_WAN_ASPECT = 832 / 480  # Wan's 480p is 480x832


@dataclass(frozen=True, eq=False)
class ZooModel:
    """A built zoo model with inputs that fit it, so callers need no per-architecture code."""

    name: str
    model: torch.nn.Module  # eval() and requires_grad_(False)
    example_kwargs: dict[str, Any]  # model(**example_kwargs) runs; floating tensors in the model's dtype
    tokens: int  # image (video) tokens each transformer block sees
    text_tokens: int  # text tokens, counted apart because their GEMMs are separate or concatenated

    def __call__(self) -> torch.Tensor:
        """Forward on the example inputs; the predicted sample (noise, velocity or flow) tensor."""
        with torch.no_grad():
            return sample(self.model(**self.example_kwargs))


def sample(out: Any) -> torch.Tensor:
    """The predicted sample in a transformer's output (``Transformer2DModelOutput``, the tuple of
    ``return_dict=False``, or a tensor); Z-Image's list of per-image samples stacked on dim 0."""
    out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
    return torch.stack(out) if isinstance(out, list) else out


def _arch(name: str) -> _Arch:
    try:
        return _ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO_NAMES)}") from None


def _round64(x: float) -> int:
    """Round a hidden size to a multiple of 64, as real configs do, so GEMMs stay tensor-core aligned."""
    return max(64, 64 * round(x / 64))


def model_config(
    name: str, *, size: str = "tiny", depth: int | None = None, width: int | None = None
) -> dict[str, Any]:
    """The constructor arguments ``build`` uses: the published config, shrunk for ``size="tiny"``.

    ``width`` is the number of attention heads (head_dim is kept, so attention kernels and rope
    layouts stay those of the real model); sizes tied to the hidden size follow it (PixArt's
    cross_attention_dim, SD3's caption_projection_dim, Wan's ffn_dim at the published ratio).
    ``depth`` is the number of transformer blocks; for FLUX it sets the double-stream blocks and
    twice as many single-stream blocks, the published 19:38 ratio; for Z-Image the main blocks (its
    two refiner stacks keep their depth).
    """
    arch = _arch(name)
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, got {size!r}")
    for knob, value in (("depth", depth), ("width", width)):
        if value is not None and value < 1:
            raise ValueError(f"{knob} must be >= 1, got {value}")
    cfg = {**arch.config, **(arch.tiny if size == "tiny" else {})}
    if name == "zimage":  # its own names: dim (= heads x 128), n_heads, n_kv_heads, n_layers
        if width is not None:
            cfg.update(dim=width * cfg["dim"] // cfg["n_heads"], n_heads=width, n_kv_heads=width)
        if depth is not None:
            cfg["n_layers"] = depth
        return cfg
    if width is not None:
        cfg["num_attention_heads"] = width
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if name == "pixart":
        cfg["cross_attention_dim"] = inner
    elif name == "sd3":
        cfg["caption_projection_dim"] = inner
    elif name == "wan":
        full_inner = arch.config["num_attention_heads"] * arch.config["attention_head_dim"]
        cfg["ffn_dim"] = _round64(arch.config["ffn_dim"] * inner / full_inner)
    if depth is not None:
        cfg["num_layers"] = depth
        if name == "flux":
            cfg["num_single_layers"] = 2 * depth
    return cfg


def _pixel_size(name: str, resolution: int) -> tuple[int, int]:
    """(height, width) in pixels; a multiple of 16 = VAE factor 8 x patch 2 (FLUX packs 2x2 instead)."""
    if resolution < 16 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16 pixels, got {resolution}")
    if name == "wan":
        return resolution, 16 * round(resolution * _WAN_ASPECT / 16)
    return resolution, resolution


def _check_frames(name: str, frames: int | None) -> None:
    """Frames are a video model's input only; silently ignoring them would mislabel a benchmark."""
    if name == "wan" and frames is None:
        raise ValueError("frames is required for wan")
    if name != "wan" and frames is not None:
        raise ValueError(f"frames does not apply to {name!r} (only to wan)")


def _latent_frames(frames: int) -> int:
    """Wan's VAE keeps the first frame and compresses the rest 4x in time."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1 (the Wan VAE's temporal factor is 4), got {frames}")
    return (frames - 1) // 4 + 1


def _tokens(name: str, resolution: int, frames: int | None) -> int:
    """Image (video) tokens the blocks see: one per 16x16 pixels (per latent frame)."""
    h, w = _pixel_size(name, resolution)
    per_frame = (h // 16) * (w // 16)
    return per_frame if frames is None else per_frame * _latent_frames(frames)


def example_inputs(
    name: str,
    model: torch.nn.Module,
    *,
    resolution: int,
    frames: int | None = None,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    text_tokens: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``model.forward`` shaped as the real pipeline passes them.

    Drawn on the CPU from a seeded generator, then moved, so a seed gives the same inputs on every
    device. ``text_tokens=None`` uses the real pipeline's count (FLUX 512, SD3 333, PixArt 300,
    Wan 512, Qwen-Image and Z-Image 256). ``frames`` (video frames, 4k+1) is required for wan and refused for
    image models. Widths (channels, text embedding sizes) come from ``model.config``, so a checkpoint works too.
    """
    arch = _arch(name)
    if type(model).__name__ != arch.cls_name:
        raise ValueError(f"{name!r} expects a {arch.cls_name}, got {type(model).__name__}")
    _check_frames(name, frames)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cfg: Any = model.config
    n_text = arch.text_tokens if text_tokens is None else text_tokens
    h, w = _pixel_size(name, resolution)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    def text(dim: int) -> torch.Tensor:
        return randn(batch, n_text, dim)

    if name == "dit":
        kwargs: dict[str, Any] = {
            "hidden_states": randn(batch, cfg.in_channels, h // 8, w // 8),
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
            "class_labels": torch.randint(0, cfg.num_embeds_ada_norm, (batch,), generator=g),
        }
    elif name == "pixart":
        kwargs = {
            "hidden_states": randn(batch, cfg.in_channels, h // 8, w // 8),
            "encoder_hidden_states": text(cfg.caption_channels),
            "encoder_attention_mask": torch.ones(batch, n_text, dtype=torch.long),  # the T5 attention mask
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},  # Sigma: no size conditioning
        }
    elif name == "sd3":
        kwargs = {
            "hidden_states": randn(batch, cfg.in_channels, h // 8, w // 8),
            "encoder_hidden_states": text(cfg.joint_attention_dim),
            "pooled_projections": randn(batch, cfg.pooled_projection_dim),
            "timestep": torch.rand(batch, generator=g) * 1000,  # flow-matching sigma x 1000
        }
    elif name == "flux":
        # the pipeline packs 2x2 latent patches of 16 channels into one 64-channel token
        gh, gw = h // 16, w // 16
        img_ids = torch.zeros(gh, gw, 3)
        img_ids[..., 1] = torch.arange(gh)[:, None]
        img_ids[..., 2] = torch.arange(gw)[None, :]
        kwargs = {
            "hidden_states": randn(batch, gh * gw, cfg.in_channels),
            "encoder_hidden_states": text(cfg.joint_attention_dim),
            "pooled_projections": randn(batch, cfg.pooled_projection_dim),
            "timestep": torch.rand(batch, generator=g),  # sigma in [0, 1]; the model scales by 1000
            "img_ids": img_ids.reshape(gh * gw, 3),
            "txt_ids": torch.zeros(n_text, 3),
        }
        if cfg.guidance_embeds:
            kwargs["guidance"] = torch.full((batch,), 3.5)  # FLUX.1-dev's default guidance scale
    elif name == "qwen":
        # as FLUX, 2x2 latent patches of 16 channels packed into 64-channel tokens; the pipeline passes
        # timestep / 1000 (sigma) and, for a prompt without padding, no text mask
        gh, gw = h // 16, w // 16
        kwargs = {
            "hidden_states": randn(batch, gh * gw, cfg.in_channels),
            "encoder_hidden_states": text(cfg.joint_attention_dim),
            "timestep": torch.rand(batch, generator=g),
            "img_shapes": [[(1, gh, gw)]] * batch,
        }
    elif name == "zimage":
        # lists, one entry per image: its latent (C, frames = 1, h/8, w/8) and its prompt's caption
        # features; t = the pipeline's (1000 - timestep) / 1000, in [0, 1]
        kwargs = {
            "x": [randn(cfg.in_channels, 1, h // 8, w // 8) for _ in range(batch)],
            "t": torch.rand(batch, generator=g),
            "cap_feats": [randn(n_text, cfg.cap_feat_dim) for _ in range(batch)],
        }
    else:  # wan
        assert frames is not None
        kwargs = {
            "hidden_states": randn(batch, cfg.in_channels, _latent_frames(frames), h // 8, w // 8),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": text(cfg.text_dim),
        }
    float32 = {key: kwargs.pop(key).to(device) for key in arch.float32_inputs if key in kwargs}
    return {**to_device_dtype(kwargs, torch.device(device), dtype), **float32}


def to_device_dtype(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in dicts and lists too) to device; floating ones to dtype, integer ones keep
    theirs."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, dict):
        return {k: to_device_dtype(v, device, dtype) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device_dtype(v, device, dtype) for v in value]
    return value


def build(
    name: str,
    *,
    size: str = "tiny",
    depth: int | None = None,
    width: int | None = None,
    resolution: int | None = None,
    frames: int | None = None,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
) -> ZooModel:
    """Build zoo model ``name`` with example inputs; see the module docstring for the sizes.

    ``depth`` / ``width``: see ``model_config``. ``resolution``: image height in pixels (square,
    except Wan: 480 -> 480x832); ``frames``: Wan video frames (4k+1). Defaults come from ``size``:
    full = the real pipeline's defaults, tiny = 128 px, 5 frames, 8 text tokens.

    Weights: diffusers zero-initialises adaLN gates and output projections, which would make
    blocks identities and pruning invisible, so the default init is skipped and every parameter
    is drawn from a generator seeded with ``seed`` on ``device`` (see ``_randomize``). Floating
    parameters are in ``dtype`` except the class's ``_keep_in_fp32_modules`` (Wan), kept in
    float32 as ``from_pretrained`` keeps them.
    ``device="meta"`` gives shapes only (parameter counts). ``checkpoint``: a local diffusers
    directory (the pipeline root or its ``transformer/``) to load instead; not with depth/width.
    """
    arch = _arch(name)
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, got {size!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    device = torch.device(device)
    tiny = size == "tiny"
    resolution = resolution if resolution is not None else (_TINY_RESOLUTION if tiny else arch.resolution)
    if name == "wan" and frames is None:
        frames = _TINY_FRAMES if tiny else arch.frames
    _check_frames(name, frames)
    text_tokens = _TINY_TEXT_TOKENS if tiny and arch.text_tokens else arch.text_tokens
    tokens = _tokens(name, resolution, frames)  # validates resolution and frames before any work
    cls = getattr(importlib.import_module("diffusers"), arch.cls_name)  # lazy: diffusers takes seconds
    if checkpoint is not None:
        if depth is not None or width is not None:
            raise ValueError("depth and width cannot be applied to a checkpoint")
        model = _load(cls, Path(checkpoint), dtype).to(device)
    else:
        config = model_config(name, size=size, depth=depth, width=width)
        # as from_pretrained does: allocate in dtype, skip the default init (it is redrawn below), and
        # allocate on the device, so a full-size model costs neither an fp32 copy nor CPU-side init
        no_init_weights = importlib.import_module("diffusers.models.modeling_utils").no_init_weights
        with torch.device(device), _default_dtype(dtype), no_init_weights():
            model = cls(**config)
        _cast(model, dtype)
        if device.type != "meta":
            _randomize(model, seed)
    model.eval().requires_grad_(False)
    kwargs = example_inputs(
        name,
        model,
        resolution=resolution,
        frames=frames,
        batch=batch,
        dtype=dtype,
        device=device,
        seed=seed,
        text_tokens=text_tokens,
    )
    return ZooModel(name=name, model=model, example_kwargs=kwargs, tokens=tokens, text_tokens=text_tokens)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created in dtype directly (torch's default dtype is process-global: restored)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _load(cls: type, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``from_pretrained`` from a local directory only: a pipeline root (has transformer/) or the transformer."""
    if not path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is not a directory")
    subfolder = "transformer" if (path / "transformer" / "config.json").is_file() else None
    config_file = path / (subfolder or "") / "config.json"
    if not config_file.is_file():
        raise ValueError(f"no config.json in {str(path)!r} or its transformer/ folder")
    found = json.loads(config_file.read_text()).get("_class_name")
    # hub DiT checkpoints predate DiTTransformer2DModel and name the generic class, which diffusers remaps
    if found not in (cls.__name__, "Transformer2DModel", None):
        raise ValueError(f"{str(config_file)!r} describes a {found}, not a {cls.__name__}")
    return cls.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype, local_files_only=True)


_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter so each layer's output depends on its input and its weights.

    Linear/conv weights ~ N(0, 1/fan_in) (unit-scale outputs), biases ~ N(0, 0.02^2), norm gains
    ~ 1 + N(0, 0.05^2), embedding tables ~ N(0, 1), other tensors (scale_shift_table) ~
    N(0, 1/dim). Drawn in float32 on the model's device, so a float32 and a bfloat16 build from
    one seed agree to rounding; devices differ (CPU and CUDA generators are different streams).
    """
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for pname, param in module.named_parameters(recurse=False):
            if isinstance(module, _WEIGHTED) and pname == "weight":
                mean, std = 0.0, 1 / math.sqrt(param[0].numel())
            elif pname == "bias":
                mean, std = 0.0, 0.02
            elif is_norm and pname == "weight":
                mean, std = 1.0, 0.05
            elif isinstance(module, torch.nn.Embedding):
                mean, std = 0.0, 1.0
            else:
                mean, std = 0.0, 1 / math.sqrt(param.shape[-1])
            draw = torch.empty(param.shape, dtype=torch.float32, device=device).normal_(mean, std, generator=g)
            param.copy_(draw)


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give floating parameters and saved buffers the dtypes ``from_pretrained(torch_dtype=)`` gives.

    That is dtype, except entries named in the class's ``_keep_in_fp32_modules`` (Wan's time
    embedder, norms and modulation tables: float32); unsaved buffers (DiT's sin-cos position table,
    Wan's float64 rope tables) keep the dtype they were computed in. ``nn.Module.to`` would cast
    them all, and diffusers' ``to`` warns about exactly that.
    """
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    saved = set(model.state_dict())

    def target(full_name: str) -> torch.dtype:
        return torch.float32 if any(part in keep for part in full_name.split(".")) else dtype

    for full_name, param in model.named_parameters():
        if param.is_floating_point():
            param.data = param.data.to(target(full_name))
    for full_name, buf in list(model.named_buffers()):
        if full_name in saved and buf.is_floating_point():
            owner, _, leaf = full_name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, buf.to(target(full_name)))


def flux_pipeline(
    *,
    size: str = "tiny",
    depth: int | None = None,
    width: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A ``diffusers.FluxPipeline`` from zoo parts with random weights, and the kwargs to call it with.

    No text encoders or tokenizers (they would need downloaded vocabularies): the call passes
    ``prompt_embeds`` / ``pooled_prompt_embeds`` of the real shapes (T5 4096-wide, CLIP 768)
    instead, which is what a serving stack that caches prompt embeddings does. The VAE is a
    one-block ``AutoencoderKL`` with FLUX's 16 latent channels and scaling/shift factors.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    built = build("flux", size=size, depth=depth, width=width, dtype=dtype, device=device, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            block_out_channels=(32,),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=32,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.to(device=device, dtype=dtype).eval(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=built.model,
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    text = built.example_kwargs["encoder_hidden_states"].shape[1]
    kwargs = {
        "prompt_embeds": torch.randn(1, text, 4096, generator=g).to(device=device, dtype=dtype),
        "pooled_prompt_embeds": torch.randn(1, 768, generator=g).to(device=device, dtype=dtype),
        "guidance_scale": 3.5,
        "output_type": "pt",
    }
    return pipe, kwargs
