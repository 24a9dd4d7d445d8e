"""The yardstick model: diffusers' ``SD3Transformer2DModel`` (an MMDiT) in pixel space, a small text
encoder, and a pipeline that samples it the way diffusers' text-to-image pipelines do.

The pipeline mirrors ``StableDiffusion3Pipeline``'s loop (``[uncond; cond]`` batch, ``t.expand``,
``scheduler.step``, ``callback_on_step_end``, a tqdm bar), so tools written for real pipelines
(``pipe.transformer = torch.compile(pipe.transformer, backend="lynx")``) run on it unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, SD3Transformer2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .scenes import IMAGE_SIZE, TEXT_LENGTH, VOCAB, Tokenizer

__all__ = [
    "FORMAT",
    "SCHEDULER_CONFIG",
    "TINY_OVERRIDES",
    "TRANSFORMER_CONFIG",
    "WEIGHTS_DIR",
    "TextEncoder",
    "YardstickPipeline",
    "build_pipeline",
    "load_pipeline",
    "save_pipeline",
]

# 13.8M parameters (27.7 MB in bf16); 64x64 RGB in patches of 4: 16x16 = 256 image tokens
TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "patch_size": 4,
    "in_channels": 3,
    "out_channels": 3,
    "num_layers": 6,
    "attention_head_dim": 64,
    "num_attention_heads": 4,
    "joint_attention_dim": 256,
    "caption_projection_dim": 256,
    "pooled_projection_dim": 256,
    "pos_embed_max_size": 16,
    "qk_norm": "rms_norm",
}
TINY_OVERRIDES: dict[str, Any] = {"num_layers": 1, "num_attention_heads": 1, "caption_projection_dim": 64}
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}
DEFAULT_GUIDANCE = 3.0  # until training's dense evaluation picks one
FORMAT = 1  # of yardstick.json
WEIGHTS_DIR = Path(__file__).parent / "weights"
STORED_DTYPE = torch.bfloat16
TRAIN_COMMAND = "python -m benchmarks.quality.train_yardstick"


class TextEncoder(nn.Module):
    """Caption tokens to the MMDiT's text inputs: per-token states (its ``encoder_hidden_states``) and
    their mean over the caption's words (its ``pooled_projections``; zeros for the empty caption)."""

    def __init__(self, vocab_size: int = len(VOCAB), width: int = 256, length: int = TEXT_LENGTH) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.norm(self.token(ids) + self.position[: ids.shape[1]])
        words = (ids != 0).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * words).sum(1) / words.sum(1).clamp(min=1)
        return hidden, pooled


class YardstickPipeline:
    """Text to 64x64 images, ``StableDiffusion3Pipeline``'s sampling loop without a VAE."""

    def __init__(
        self,
        transformer: nn.Module,
        text_encoder: TextEncoder,
        tokenizer: Tokenizer,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_guidance_scale: float = DEFAULT_GUIDANCE,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.default_guidance_scale = default_guidance_scale
        self.record = dict(record or {})  # how it was trained and evaluated (yardstick.json's "record")
        self._progress_bar_config: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def to(
        self, *args: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> YardstickPipeline:
        """``pipe.to("cuda")``, ``pipe.to(torch.bfloat16)``, ``pipe.to("cuda", torch.bfloat16)`` or keywords."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        for module in (self.transformer, self.text_encoder):
            _move(module, device, dtype)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_bar_config = kwargs

    @torch.compiler.disable
    def progress_bar(self, total: int) -> tqdm:
        return tqdm(total=total, **self._progress_bar_config)

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer.encode(prompts).to(self.device)
        return self.text_encoder(ids)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 28,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n, device, dtype = len(prompts), self.device, self.dtype
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        cfg = guidance_scale > 1
        if output_type not in ("pt", "pil", "np", "latent"):
            raise ValueError(f"output_type {output_type!r} is not one of 'pt', 'pil', 'np', 'latent'")
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} prompts: pass one per prompt")
        unknown = set(callback_on_step_end_tensor_inputs) - {"latents", "prompt_embeds", "pooled_prompt_embeds"}
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not pipeline tensors")

        prompt_embeds, pooled_prompt_embeds = self.encode_prompt([""] * n + prompts if cfg else prompts)
        shape = (n, self.transformer.config.in_channels, IMAGE_SIZE, IMAGE_SIZE)
        if latents is None:  # float32 noise on the generators' device, as diffusers draws it
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device=device, dtype=dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                latent_model_input = torch.cat([latents] * 2) if cfg else latents
                timestep = t.expand(latent_model_input.shape[0])
                noise_pred = self.transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    pooled_projections=pooled_prompt_embeds,
                    return_dict=False,
                )[0]
                if cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "pooled_prompt_embeds": pooled_prompt_embeds,
                    }
                    requested = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, requested)
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    pooled_prompt_embeds = outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)
                bar.update()

        images = latents if output_type == "latent" else _postprocess(latents, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _move(module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
    """``nn.Module.to``: diffusers' ``ModelMixin.to`` warns about float32-only modules on every dtype cast,
    even for a model that has none (the SD3 transformer)."""
    return nn.Module.to(module, device=device, dtype=dtype)


def _postprocess(latents: torch.Tensor, output_type: str) -> torch.Tensor | list[Image.Image] | Any:
    """[-1, 1] pixels to what diffusers' ``VaeImageProcessor.postprocess`` returns for ``output_type``."""
    images = (latents.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]


def _transformer_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    config = {**TRANSFORMER_CONFIG, **(overrides or {})}
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    if config["caption_projection_dim"] != inner:
        raise ValueError(
            f"caption_projection_dim {config['caption_projection_dim']} must equal num_attention_heads x "
            f"attention_head_dim = {inner} (the MMDiT's text stream has the image stream's width)"
        )
    if config["pooled_projection_dim"] != config["joint_attention_dim"]:
        raise ValueError("pooled_projection_dim must equal joint_attention_dim: both are the text encoder's width")
    return config


def build_pipeline(
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> YardstickPipeline:
    """The yardstick's architecture with seeded random weights (the global RNG is left as it was)."""
    config = _transformer_config(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**config)
        text_encoder = TextEncoder(len(VOCAB), config["joint_attention_dim"], TEXT_LENGTH)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe = YardstickPipeline(transformer, text_encoder, Tokenizer(), scheduler)
    return pipe.to(device=device, dtype=dtype)


def save_pipeline(pipe: YardstickPipeline, directory: str | os.PathLike, max_shard_size: str = "15MB") -> None:
    """``directory/transformer/`` (diffusers format, shards under 16 MiB), ``text_encoder.safetensors`` and
    ``yardstick.json``, weights in bf16. Each part is written beside its place and then moved in, so a run
    killed while saving leaves the previous checkpoint whole."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "transformer.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _move(copy.deepcopy(pipe.transformer), None, STORED_DTYPE).save_pretrained(partial, max_shard_size=max_shard_size)
    state = {k: v.detach().to(STORED_DTYPE).contiguous().cpu() for k, v in pipe.text_encoder.state_dict().items()}
    save_file(state, directory / "text_encoder.safetensors.partial")
    meta = {
        "format": FORMAT,
        "vocabulary": list(pipe.tokenizer.vocabulary),
        "text_length": pipe.tokenizer.length,
        "text_width": pipe.text_encoder.token.embedding_dim,
        "scheduler": dict(SCHEDULER_CONFIG),
        "default_guidance_scale": pipe.default_guidance_scale,
        "record": pipe.record,
    }
    (directory / "yardstick.json.partial").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(directory / "transformer", ignore_errors=True)
    os.replace(partial, directory / "transformer")
    os.replace(directory / "text_encoder.safetensors.partial", directory / "text_encoder.safetensors")
    os.replace(directory / "yardstick.json.partial", directory / "yardstick.json")


def load_pipeline(
    directory: str | os.PathLike | None = None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> YardstickPipeline:
    """The pipeline ``save_pipeline`` wrote (default: the trained one shipped in the package's ``weights/``),
    in ``dtype`` (default: bf16, as stored)."""
    directory = WEIGHTS_DIR if directory is None else Path(directory)
    meta_path = directory / "yardstick.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no trained yardstick in {directory} ({meta_path.name} is missing): train one with "
            f"`{TRAIN_COMMAND} --out {directory}` (about 5 minutes on an H100)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')}, this code reads format {FORMAT}: retrain")
    if tuple(meta["vocabulary"]) != VOCAB or meta["text_length"] != TEXT_LENGTH:
        raise ValueError(
            f"{meta_path} was trained with vocabulary {meta['vocabulary']} and {meta['text_length']} "
            f"tokens, this code has {list(VOCAB)} and {TEXT_LENGTH}: its captions would be misread; "
            f"retrain with `{TRAIN_COMMAND}`"
        )
    dtype = STORED_DTYPE if dtype is None else dtype
    # low_cpu_mem_usage=False: 28 MB gain nothing from accelerate's loader, and it may not be installed
    transformer = SD3Transformer2DModel.from_pretrained(
        directory / "transformer", torch_dtype=dtype, low_cpu_mem_usage=False
    )
    text_encoder = TextEncoder(len(VOCAB), meta["text_width"], TEXT_LENGTH)
    text_encoder.load_state_dict(load_file(directory / "text_encoder.safetensors"))
    scheduler = FlowMatchEulerDiscreteScheduler(**meta["scheduler"])
    pipe = YardstickPipeline(
        transformer, text_encoder, Tokenizer(), scheduler, meta["default_guidance_scale"], meta["record"]
    )
    return pipe.to(device=device, dtype=dtype)
