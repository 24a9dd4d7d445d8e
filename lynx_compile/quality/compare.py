"""``compare``: sample a diffusers pipeline dense and under lynx configurations, from the same noise.

Every configuration samples the same prompts from the same per-prompt seeds, so sample i of every
configuration starts from the same noise and any difference from the dense sample is what pruning
did. Each lynx configuration is ``torch.compile(transformer, backend="lynx", options=...)`` swapped
into the pipeline for its run only. Its per-GEMM error comes from ``lynx_compile.inspect`` fed the
dense run's transformer inputs at a few steps, for the GEMMs that configuration's compile made sparse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect as pyinspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import triton
from tqdm.auto import tqdm

from ..backend import reports
from ..calibrator import batched_prompts, is_pipeline
from ..config import LynxConfig
from ..inspection import inspect
from ..provenance import source_commit
from ..steps import follow_steps
from ..yardstick.evaluator import adherence, features, frechet_distance
from .grid import write_grid
from .metrics import psnr, ssim

log = logging.getLogger(__name__)

DENSE = "dense"
# What ``compare`` and ``lynx-compile quality`` run when no configurations are given: the dense model,
# pruning with every recovery option off, lynx's defaults of the day, and norm compensation.
DEFAULT_CONFIGS: dict[str, dict[str, Any] | None] = {
    DENSE: None,
    "naive": {"compensate": False},
    "defaults": {},
    "compensate": {"compensate": True},
}
STEM = "quality"  # <out>/quality.{json,md,png}
GRID_ROWS = 8  # prompts shown in the grid


@dataclasses.dataclass(frozen=True)
class Variant:
    """A configuration beyond plain lynx options. ``transform`` turns the transformer into the one
    to run (e.g. a quantized copy); it must return a new module and leave its argument unchanged,
    since the other configurations run the original. ``options=None``: run the result as it is."""

    options: LynxConfig | Mapping[str, Any] | None = None
    transform: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    # transformer calls (args, kwargs) the compiled transformer runs first: the compiling call, so that options
    # measuring at compile time (error_budget, max_layer_error) measure on them, e.g. on calibration prompts
    # disjoint from the evaluated ones. Their shapes must be the sampling's, or sampling compiles again
    warmup: Sequence[tuple[tuple[Any, ...], dict[str, Any]]] = ()


@dataclasses.dataclass
class QualityResult:
    """Rows (one per configuration, the dense one first), the images per configuration ((n, 3, H, W)
    in [0, 1], float32, on the CPU), the run's meta data and the files written."""

    rows: list[dict[str, Any]]
    images: dict[str, torch.Tensor]
    meta: dict[str, Any]
    prompts: list[str]
    dtype: str
    files: list[Path] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def table(self) -> str:
        """The rows as a markdown table."""
        lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(key, row) for key, _ in _COLUMNS) + " |")
        return "\n".join(lines)

    def path_note(self) -> str:
        """Which path the sparse GEMMs took, and what that means for the numbers."""
        paths = self.meta["path"]
        if "reference" in paths.split(","):
            return (
                f"path: {paths} on {self.meta['device']}, {self.dtype}: the reference path ran (pruning, then a "
                "dense GEMM): no speed-up, the same numbers as the GPU's cuSPARSELt path up to bf16 rounding"
            )
        return f"path: {paths} on {self.meta['device']}, {self.dtype}"

    def __str__(self) -> str:
        m = self.meta
        head = f"{m['model']}: {m['captions']} prompts, {m['steps']} steps, guidance {_number(m['guidance'])}"
        return "\n".join([head, "", self.table(), "", self.path_note()])


_COLUMNS = [
    ("config", "config"),
    ("options", "options"),
    ("psnr_db", "PSNR dB"),
    ("ssim", "SSIM"),
    ("adherence", "adherence"),
    ("fid_like", "FID-like"),
    ("mean_rel_err", "mean rel_err"),
    ("sparse_gemms", "sparse GEMMs"),
    ("path", "path"),
    ("seconds", "seconds"),
]
_FORMATS = {
    "psnr_db": "{:.2f}",
    "ssim": "{:.5f}",
    "adherence": "{:.4f}",
    "fid_like": "{:.4g}",
    "mean_rel_err": "{:.4f}",
    "seconds": "{:.1f}",
}
_COLUMN_NOTES = """\
- PSNR dB, SSIM: each sample against the dense sample from the same seed and prompt, averaged over the
  prompts (PSNR: mean of the per-image dB; "inf" where every image is identical to dense, `null` in the JSON).
  SSIM: 11x11 Gaussian window (sigma 1.5), per channel, in float64.
- adherence: the share of the prompts' attributes the evaluator finds in the samples (yardstick only).
- FID-like: Frechet distance between the evaluator's features of the samples and of the reference images.
- mean rel_err: the mean over the captured steps and the GEMMs this configuration makes sparse of each GEMM's
  own relative output error (`lynx_compile.inspect`, float32, fed the dense run's inputs at those steps; with
  option low_rank, with the branch added).
- sparse GEMMs: GEMMs on 2:4 activations in this configuration's compiled graphs; path: theirs.
- seconds: wall time of the configuration's sampling, its compilation included."""


def compare(
    pipe: Any,
    prompts: Sequence[str | Mapping[str, Any]],
    configs: Mapping[str, Variant | LynxConfig | Mapping[str, Any] | None] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int = 28,
    guidance_scale: float | None = None,
    *,
    pipe_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    evaluator: Any = None,
    scenes: Sequence[Any] | None = None,
    reference_images: torch.Tensor | None = None,
    rel_err_steps: Sequence[int] | None = None,
    rel_err_rows: int | None = None,
    model: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> QualityResult:
    """Sample ``prompts`` dense and under each lynx configuration and measure what pruning did.

    Each lynx configuration is compiled afresh: ``torch.compiler.reset()`` runs before each (other
    compiled functions of the process compile again on their next call).

    ``prompts``: text, or for pipelines without text encoders dicts of per-prompt pipeline kwargs
    (``prompt_embeds``, ...), batched along dim 0. ``seeds``: one per prompt (default 0..n-1).
    ``configs``: name -> lynx options, ``Variant`` or ``None`` (dense); default ``DEFAULT_CONFIGS``.
    ``"dense"`` (the transformer as it is, eager) always runs, first. ``batch_size``: prompts per
    pipeline call (the classifier-free guidance doubles it inside). ``evaluator`` with ``scenes`` (one
    per prompt) gives adherence; with ``reference_images`` ((m, 3, H, W) in [0, 1]) the FID-like
    distance (both: ``lynx_compile.yardstick.evaluator``). The per-GEMM error is measured at the
    steps ``rel_err_steps`` (default every 4th) of the first batch, on ``rel_err_rows`` of its
    transformer's batch rows spread over the batch (default: all). ``out``: a directory for
    ``quality.{json,md,png}``, written after each configuration (a run cut short keeps what it measured).
    """
    variants = _variants(DEFAULT_CONFIGS if configs is None else configs)
    runner = _Runner(pipe, prompts, seeds, steps, guidance_scale, pipe_kwargs, batch_size)
    transformer, prompts = pipe.transformer, runner.prompts
    if scenes is not None and len(scenes) != len(prompts):
        raise ValueError(f"{len(scenes)} scenes for {len(prompts)} prompts: give one scene per prompt")
    capture_steps = set(range(0, steps, 4) if rel_err_steps is None else rel_err_steps)
    bar = runner.bar = tqdm(
        total=len(variants) * len(runner.batches) * steps, disable=not progress, desc="quality", unit="step"
    )

    rows: list[dict[str, Any]] = []
    images: dict[str, torch.Tensor] = {}
    captured: dict[int, Inputs] = {}
    reference_features = None
    if evaluator is not None and reference_images is not None:
        reference_features = features(evaluator, reference_images)
    grade = functools.partial(_grade, images=images, evaluator=evaluator, scenes=scenes, reference=reference_features)
    result = QualityResult(
        rows,
        images,
        _meta(transformer, pipe, model, len(prompts), steps, runner.guidance),
        [p if isinstance(p, str) else f"prompt {i}" for i, p in enumerate(prompts)],
        str(_dtype(transformer)).removeprefix("torch."),
    )
    with torch.no_grad(), bar, runner.quiet(), follow_steps(pipe):  # for option dense_steps
        for name, variant in variants.items():
            bar.set_postfix_str(name)
            if name == DENSE:
                hook = transformer.register_forward_pre_hook(
                    runner.capture(captured, capture_steps, rel_err_rows), with_kwargs=True
                )
                try:
                    images[name], seconds = runner.sample(transformer)
                finally:
                    hook.remove()
                rows.append(grade(_row(name, None, seconds, sparse=[], rel_err=None)))
            else:
                images[name], row = _sample_variant(runner, transformer, name, variant, list(captured.values()))
                rows.append(grade(row))
            result.meta["path"] = ",".join(
                sorted({p for r in rows for p in r["path"].split(",") if p != DENSE}) or [DENSE]
            )
            if out is not None:  # after every configuration: a run cut short keeps what it measured
                result.files = write(result, Path(out))
    return result


def _sample_variant(
    runner: _Runner, transformer: torch.nn.Module, name: str, variant: Variant, captured: list[Inputs]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sample one configuration (a fresh compile for a lynx one): its images and its row, ungraded."""
    module = variant.transform(transformer) if variant.transform else transformer
    options = None if variant.options is None else LynxConfig.from_options(variant.options)
    if options is None:
        images, seconds = runner.sample(module)
        return images, _row(name, variant, seconds, sparse=[], rel_err=None)
    # A fresh compile, so that this configuration's reports are its own: Dynamo would otherwise reuse
    # code compiled for an equal configuration (of this or another instance of the same model class).
    torch.compiler.reset()
    before = len(reports())
    compiled = torch.compile(module, backend="lynx", options=options, dynamic=False)
    for args, kwargs in variant.warmup:
        compiled(*args, **kwargs)
    images, seconds = runner.sample(compiled)
    new = reports()[before:]
    if not new:
        raise RuntimeError(
            f"config {name!r}: torch.compile never called the lynx backend (the transformer "
            "ran eagerly), so its images are not lynx's"
        )
    sparse = [layer for report in new for layer in report.layers if layer.sparse]
    rel_err = _mean_rel_err(module, captured, options, {layer.name for layer in sparse}) if sparse else 0.0
    return images, _row(name, variant, seconds, sparse=sparse, rel_err=rel_err)


def _grade(
    row: dict[str, Any],
    *,
    images: dict[str, torch.Tensor],
    evaluator: Any,
    scenes: Sequence[Any] | None,
    reference: torch.Tensor | None,
) -> dict[str, Any]:
    """``row`` with its metrics: against the dense samples (sampled first), and by the evaluator."""
    sample = images[row["config"]]
    row["nonfinite"] = (~sample.isfinite()).float().mean().item()  # share of nan/inf pixels: 0 unless broken
    if row["nonfinite"]:
        log.warning(
            "lynx quality: config %r drew %.2f%% nan or inf pixels; its metrics are not meaningful",
            row["config"],
            100 * row["nonfinite"],
        )
    if row["config"] != DENSE:
        row["psnr_db"] = _finite_or_none(psnr(sample, images[DENSE]).mean().item())
        row["ssim"] = _finite_or_none(ssim(sample, images[DENSE]).mean().item())
    if evaluator is not None and scenes is not None:
        row["adherence"] = float(adherence(evaluator, sample, list(scenes)))
    if reference is not None:
        row["fid_like"] = _finite_or_none(frechet_distance(features(evaluator, sample), reference))
    return row


def _meta(
    transformer: torch.nn.Module, pipe: Any, model: str | None, captions: int, steps: int, guidance: float | None
) -> dict[str, Any]:
    """The run's meta data, once (its commit asks git); ``path`` grows with the rows."""
    device = _device(transformer)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": source_commit(),
        "date": datetime.date.today().isoformat(),
        "model": model or _model_name(pipe, transformer),
        "captions": captions,
        "steps": steps,
        "guidance": guidance,
        "path": DENSE,
    }


def write(result: QualityResult, out: Path) -> list[Path]:
    """``out/quality.json``, ``.md`` and ``.png`` (the grid); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / STEM
    files = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    files[0].write_text(result.to_json() + "\n")
    m = result.meta
    shown = result.prompts[:GRID_ROWS]
    files[1].write_text(
        "\n".join(
            [
                "# Image quality: dense against lynx",
                "",
                f"{m['model']}: {m['captions']} prompts, {m['steps']} steps, guidance {_number(m['guidance'])}. "
                f"{m['device']}, torch {m['torch']}, Triton {m['triton']}, commit {m['commit']}, {m['date']}.",
                "",
                result.path_note() + ".",
                "",
                result.table(),
                "",
                _COLUMN_NOTES,
                "",
                f"Grid `{files[2].name}`: rows are the first {len(shown)} prompts, columns the configurations:",
                "",
                *(f"{i + 1}. {p}" for i, p in enumerate(shown)),
                "",
            ]
        )
    )
    write_grid(files[2], {name: imgs[:GRID_ROWS] for name, imgs in result.images.items()}, shown)
    return files


Inputs = tuple[tuple[Any, ...], dict[str, Any]]  # a transformer call's positional and keyword arguments


def transformer_inputs(
    pipe: Any,
    prompts: Sequence[str | Mapping[str, Any]],
    at_steps: Sequence[int],
    seeds: Sequence[int] | None = None,
    steps: int = 28,
    guidance_scale: float | None = None,
    *,
    pipe_kwargs: Mapping[str, Any] | None = None,
    rows: int | None = None,
) -> dict[int, Inputs]:
    """The transformer's inputs (copies) at ``at_steps`` of sampling ``prompts`` in one batch, as ``compare``
    captures them in its dense run: feed them to ``lynx_compile.inspect(pipe.transformer, *args, **kwargs)``."""
    runner = _Runner(pipe, prompts, seeds, steps, guidance_scale, pipe_kwargs, len(list(prompts)))
    captured: dict[int, Inputs] = {}
    hook = pipe.transformer.register_forward_pre_hook(runner.capture(captured, set(at_steps), rows), with_kwargs=True)
    try:
        with torch.no_grad(), runner.quiet():
            runner.sample(pipe.transformer)
    finally:
        hook.remove()
    return captured


class _Runner:
    """Runs the pipeline over every batch of prompts with fresh per-prompt generators, and follows
    its steps (for the progress bar and for capturing the transformer's inputs)."""

    def __init__(
        self,
        pipe: Any,
        prompts: Sequence[str | Mapping[str, Any]],
        seeds: Sequence[int] | None,
        steps: int,
        guidance_scale: float | None,
        pipe_kwargs: Mapping[str, Any] | None,
        batch_size: int,
    ) -> None:
        if not is_pipeline(pipe):
            raise TypeError(
                f"compare needs a diffusers pipeline with a .transformer module; {type(pipe).__name__} "
                f"has {type(getattr(pipe, 'transformer', None)).__name__}"
            )
        params = pyinspect.signature(pipe.__call__).parameters
        if "callback_on_step_end" not in params:
            raise TypeError(
                f"{type(pipe).__name__}.__call__ takes no callback_on_step_end: compare follows the steps "
                "through it (every diffusers DiT pipeline has it)"
            )
        prompts = list(prompts)
        if not prompts:
            raise ValueError("compare needs at least one prompt")
        if not all(isinstance(p, str) for p in prompts) and not all(isinstance(p, Mapping) for p in prompts):
            raise TypeError("prompts must all be strings, or all dicts of per-prompt pipeline kwargs")
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.pipe, self.prompts, self.seeds = pipe, prompts, seeds
        self.bar = tqdm(disable=True)  # compare sets its own
        self.guidance = _guidance(pipe, guidance_scale, params)
        self.call_kwargs = {**(pipe_kwargs or {}), "num_inference_steps": steps, "output_type": "pt"}
        if guidance_scale is not None:
            self.call_kwargs["guidance_scale"] = guidance_scale
        self.user_callback = self.call_kwargs.pop("callback_on_step_end", None)
        self.batches = [range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
        self.step = 0  # the step the next transformer call belongs to
        self.first_batch = True

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """The pipeline's own progress bar off (ours counts every configuration's steps), then as it was."""
        before = getattr(self.pipe, "_progress_bar_config", None)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(**{**(before or {}), "disable": True})
        try:
            yield
        finally:
            if hasattr(self.pipe, "set_progress_bar_config"):
                self.pipe.set_progress_bar_config(**(before or {}))

    def sample(self, transformer: torch.nn.Module) -> tuple[torch.Tensor, float]:
        """Images of every prompt with ``transformer`` in the pipeline, and the seconds it took."""
        original = self.pipe.transformer
        device = _device(original)
        self.pipe.transformer = transformer
        try:
            _sync(device)
            t0 = time.perf_counter()
            images = [self._call(batch).float().cpu() for batch in self._batches()]
            _sync(device)
            return torch.cat(images), time.perf_counter() - t0
        finally:
            self.pipe.transformer = original

    def _batches(self) -> Iterator[range]:
        for i, batch in enumerate(self.batches):
            self.first_batch = i == 0
            yield batch

    def _call(self, batch: range) -> torch.Tensor:
        self.step = 0
        generators = [torch.Generator().manual_seed(self.seeds[i]) for i in batch]
        prompt_kwargs = batched_prompts([self.prompts[i] for i in batch])
        out = self.pipe(**self.call_kwargs, **prompt_kwargs, generator=generators, callback_on_step_end=self._on_step)
        images = out.images if hasattr(out, "images") else out[0]
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != len(batch):
            raise RuntimeError(
                f"{type(self.pipe).__name__} returned {type(images).__name__} "
                f"{tuple(getattr(images, 'shape', ()))} for {len(batch)} prompts with output_type='pt'; "
                "compare needs (n, 3, H, W) images in [0, 1]"
            )
        return images

    def _on_step(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self.step = i + 1
        self.bar.update(1)
        if self.user_callback is not None:
            return self.user_callback(pipe, i, t, callback_kwargs)
        return callback_kwargs

    def capture(self, into: dict[int, Inputs], steps: set[int], rows: int | None) -> Callable[..., None]:
        """A forward pre-hook keeping the transformer's first call at each of ``steps`` of the first batch."""

        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.first_batch and self.step in steps and self.step not in into:
                into[self.step] = _rows(args, kwargs, rows)

        return hook


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any], rows: int | None) -> Inputs:
    """Copies of a call's inputs, with ``rows`` of the batch (evenly spread, so that both halves of a
    classifier-free guidance batch are in) of every tensor whose first dim is the batch."""
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    if first is None or first.dim() == 0:
        raise RuntimeError("the transformer was called without a batched tensor input: nothing to measure on")
    batch = first.shape[0]
    index = None
    if rows is not None and rows < batch:
        index = torch.linspace(0, batch - 1, max(rows, 1)).round().long().unique()

    def take(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if index is not None and v.dim() > 0 and v.shape[0] == batch:
            return v[index.to(v.device)].clone()
        return _copy(v)

    return tuple(take(a) for a in args), {k: take(v) for k, v in kwargs.items()}


def _copy(v: torch.Tensor) -> torch.Tensor:
    """A copy with v's broadcast dims kept broadcast (stride 0): a pipeline passes ``t.expand(batch)`` as the
    timestep, and a contiguous copy fails Dynamo's stride guard, so a warm-up call made from it would compile a
    graph that sampling then compiles again (with option error_budget, measured again on the sampling's call)."""
    broadcast = [d for d in range(v.dim()) if v.stride(d) == 0 and v.shape[d] > 1]
    if not broadcast:
        return v.clone()
    base = v[tuple(slice(0, 1) if d in broadcast else slice(None) for d in range(v.dim()))]
    return base.clone().expand(v.shape)


def _variants(configs: Mapping[str, Any]) -> dict[str, Variant]:
    """Name -> Variant, every lynx option checked now (before any sampling), the dense one first."""
    if not isinstance(configs, Mapping):
        raise TypeError(f"configs must map names to lynx options, got {type(configs).__name__}")
    variants = {DENSE: Variant()}
    for name, value in configs.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"config names must be non-empty strings, got {name!r}")
        variant = value if isinstance(value, Variant) else Variant(options=value)
        if name == DENSE:
            if variant != Variant():
                raise ValueError(f"config {DENSE!r} is the transformer as it is: it takes no options, got {value!r}")
            continue
        if variant.options is not None:
            LynxConfig.from_options(variant.options)
        if variant.transform is not None and not callable(variant.transform):
            raise TypeError(f"config {name!r}: transform must be callable, got {variant.transform!r}")
        variants[name] = variant
    return variants


def _options_json(variant: Variant | None) -> dict[str, Any] | None:
    if variant is None or variant.options is None:
        return None
    if isinstance(variant.options, LynxConfig):  # what differs from the defaults
        default = LynxConfig()
        return {
            f.name: _jsonable(getattr(variant.options, f.name))
            for f in dataclasses.fields(LynxConfig)
            if getattr(variant.options, f.name) != getattr(default, f.name)
        }
    return {k: _jsonable(v) for k, v in variant.options.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value if value is None or isinstance(value, (str, int, float, bool, list, dict)) else str(value)


def _row(name: str, variant: Variant | None, seconds: float, *, sparse: list[Any], rel_err: float | None) -> dict:
    return {
        "config": name,
        "options": _options_json(variant),
        "psnr_db": None,
        "ssim": 1.0 if name == DENSE else None,
        "adherence": None,
        "fid_like": None,
        "mean_rel_err": rel_err,
        "sparse_gemms": len(sparse),
        "seconds": seconds,
        "path": ",".join(sorted({layer.path for layer in sparse})) or DENSE,
    }


def _mean_rel_err(
    module: torch.nn.Module, captured: list[Inputs], options: LynxConfig, sparse: set[str]
) -> float | None:
    """Mean of ``rel_err`` over the captured calls and the GEMMs named in ``sparse``."""
    errors = []
    for args, kwargs in captured:
        by_name = {
            layer.name: layer.rel_err if layer.rel_err_low_rank is None else layer.rel_err_low_rank
            for layer in inspect(module, *args, options=options, **kwargs).layers
        }
        missing = sparse - by_name.keys()
        if missing:
            log.warning(
                "lynx quality: inspect did not see the sparse GEMMs %s; mean_rel_err leaves them out", sorted(missing)
            )
        errors.extend(by_name[name] for name in sorted(sparse & by_name.keys()) if by_name[name] is not None)
    return sum(errors) / len(errors) if errors else None


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if key == "psnr_db" and value is None and row["config"] != DENSE:
        return "inf"
    if value is None:
        return "-"
    if key == "options":
        return "`" + json.dumps(value) + "`"
    return _FORMATS[key].format(value) if key in _FORMATS else _number(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _guidance(pipe: Any, given: float | None, call_params: Mapping[str, pyinspect.Parameter]) -> float | None:
    """The guidance scale the pipeline will use: the given one, else its default."""
    if given is not None:
        return float(given)
    default = getattr(pipe, "default_guidance_scale", None)
    if default is None and "guidance_scale" in call_params:
        default = call_params["guidance_scale"].default
    return float(default) if isinstance(default, (int, float)) else None


def _model_name(pipe: Any, transformer: torch.nn.Module) -> str:
    config = getattr(pipe, "config", None)
    path = config.get("_name_or_path") if isinstance(config, Mapping) else None
    name = f"{type(pipe).__name__} ({type(transformer).__name__})"
    return f"{path}: {name}" if path else name


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
