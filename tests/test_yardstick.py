"""The quality yardstick on CPU: scenes, captions, tokenizer, renderer, evaluator maths, the pipeline and
the training script's smoke run (lynx_compile.yardstick, benchmarks/quality/train_yardstick.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.quality import train_yardstick
from lynx_compile.yardstick import (
    BACKGROUNDS,
    COLOURS,
    EVALUATOR_PATH,
    FEATURES,
    HEADS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXT_LENGTH,
    TINY_OVERRIDES,
    WEIGHTS_DIR,
    Evaluator,
    Obj,
    Scene,
    Tokenizer,
    accuracy,
    adherence,
    adherence_per_image,
    augment,
    build_pipeline,
    caption,
    frechet_distance,
    labels,
    load_evaluator,
    load_pipeline,
    parse_caption,
    predict,
    recognised,
    render,
    sample_scenes,
    save_pipeline,
)
from lynx_compile.yardstick.scenes import CELL, GRID, IGNORE

PROMPTS = [
    "a small red circle top left, plain background",
    "a large blue square center, a small green triangle bottom right, striped background",
    "a large yellow diamond right, dotted background",
]


@st.composite
def scenes(draw: st.DrawFn) -> Scene:
    cells = draw(st.lists(st.sampled_from(POSITIONS), min_size=1, max_size=3, unique=True))
    objects = tuple(
        Obj(draw(st.sampled_from(SHAPES)), draw(st.sampled_from(COLOURS)), draw(st.sampled_from(SIZES)), p)
        for p in cells
    )
    return Scene(objects, draw(st.sampled_from(BACKGROUNDS)))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- scenes, captions, tokenizer


@given(scenes())
def test_caption_round_trip(scene: Scene) -> None:
    assert parse_caption(caption(scene)) == scene


@given(scenes())
def test_tokenizer_round_trip(scene: Scene) -> None:
    tok = Tokenizer()
    ids = tok.encode(caption(scene))
    assert ids.shape == (1, TEXT_LENGTH) and ids.dtype == torch.long
    assert tok.decode(ids) == [caption(scene)]
    words = (ids[0] != 0).sum().item()
    assert (ids[0, words:] == 0).all() and (ids[0, :words] != 0).all()  # padded right


def test_tokenizer_empty_caption_and_errors() -> None:
    tok = Tokenizer()
    assert tok.encode(["", PROMPTS[0]]).shape == (2, TEXT_LENGTH)
    assert (tok.encode("") == 0).all()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("a small purple circle top, plain background")
    with pytest.raises(ValueError, match="more than 24"):
        tok.encode(", ".join(["a small red circle top"] * 5))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain background",
        "a small red circle top",
        "a red circle top, plain background",
        "a small red circle middle, plain background",
        "a small red circle top, plain",
        "a small red circle top, a large red square top, plain background",
    ],
)
def test_parse_caption_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(text)


@settings(max_examples=15)  # each example renders: keep the CPU suite fast
@given(st.integers(0, 2**31 - 1))
def test_same_seed_same_scenes_and_pixels(seed: int) -> None:
    a, b = sample_scenes(6, _seeded(seed)), sample_scenes(6, _seeded(seed))
    assert a == b
    assert all(1 <= len(s.objects) <= 3 for s in a)
    assert torch.equal(render(a, _seeded(seed + 1)), render(b, _seeded(seed + 1)))


def test_caption_order_is_random() -> None:
    """Objects come in a random order, not the cells' order: the model must read positions from words."""
    many = [s for s in sample_scenes(200, _seeded(0)) if len(s.objects) > 1]
    in_cell_order = [
        list(o.position for o in s.objects) == sorted((o.position for o in s.objects), key=POSITIONS.index)
        for s in many
    ]
    assert 0 < sum(in_cell_order) < len(many)


@given(st.lists(scenes(), min_size=1, max_size=4))
def test_labels_agree_with_scenes(batch: list[Scene]) -> None:
    lab = labels(batch)
    assert lab["shape"].shape == lab["colour"].shape == lab["size"].shape == (len(batch), 9)
    for i, scene in enumerate(batch):
        assert lab["background"][i] == BACKGROUNDS.index(scene.background)
        assert (lab["shape"][i] > 0).sum() == len(scene.objects)
        assert ((lab["colour"][i] == IGNORE) == (lab["shape"][i] == 0)).all()
        assert ((lab["size"][i] == IGNORE) == (lab["shape"][i] == 0)).all()
        for o in scene.objects:
            cell = POSITIONS.index(o.position)
            assert lab["shape"][i, cell] == SHAPES.index(o.shape) + 1
            assert lab["colour"][i, cell] == COLOURS.index(o.colour)
            assert lab["size"][i, cell] == SIZES.index(o.size)


def test_bad_scenes_raise() -> None:
    with pytest.raises(ValueError, match="colour"):
        Obj("circle", "purple", "small", "top")
    with pytest.raises(ValueError, match="share a cell"):
        Scene((Obj("circle", "red", "small", "top"), Obj("square", "red", "small", "top")), "plain")
    with pytest.raises(ValueError, match="1 to 3"):
        Scene((), "plain")


# ---------------------------------------------------------------- renderer


def test_render_range_shape_determinism() -> None:
    batch = sample_scenes(16, _seeded(1))
    images = render(batch, _seeded(2))
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, render(batch, _seeded(2)))
    assert not torch.equal(images, render(batch, _seeded(3)))  # jitter and textures come from the generator


@settings(max_examples=20)
@given(st.lists(scenes(), min_size=1, max_size=4), st.integers(0, 1000))
def test_objects_are_where_labels_say(batch: list[Scene], seed: int) -> None:
    """A large object covers its cell's centre (jitter 1.5 px < its inradius) in its palette colour
    (+- the colour jitter); an empty cell's centre is background grey (R = G = B)."""
    batch = [Scene(tuple(Obj(o.shape, o.colour, "large", o.position) for o in s.objects), s.background) for s in batch]
    images = render(batch, _seeded(seed)) / 2 + 0.5
    lab = labels(batch)
    for i in range(len(batch)):
        for cell in range(GRID * GRID):
            cx, cy = int((cell % GRID + 0.5) * CELL), int((cell // GRID + 0.5) * CELL)
            centre = images[i, :, cy - 1 : cy + 2, cx - 1 : cx + 2].mean((1, 2))
            if lab["shape"][i, cell] > 0:
                assert (centre - PALETTE[lab["colour"][i, cell]]).abs().max() < 0.07
            else:
                assert (centre - centre.mean()).abs().max() < 1e-6


def test_render_device_argument() -> None:
    batch = sample_scenes(3, _seeded(0))
    assert torch.equal(render(batch, _seeded(1), device=torch.device("cpu")), render(batch, _seeded(1)))


# ---------------------------------------------------------------- evaluator


def test_evaluator_shapes_and_size() -> None:
    ev = Evaluator().eval()
    x = render(sample_scenes(4, _seeded(0)), _seeded(0))
    out = ev(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (4, *s) for k, s in HEADS.items()}
    assert ev.features(x).shape == (4, FEATURES)
    assert sum(p.numel() for p in ev.parameters()) <= 1_000_000


def test_augment_is_seeded_and_in_range() -> None:
    x = render(sample_scenes(4, _seeded(0)), _seeded(0))
    a = augment(x, _seeded(5))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, augment(x, _seeded(5))) and not torch.equal(a, x)


def _exact_moments(mean: torch.Tensor, cov: torch.Tensor, n: int = 500, seed: int = 0) -> torch.Tensor:
    """n samples whose sample mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, mean.numel(), generator=_seeded(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: cov(z) = I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_identical_sets_is_zero() -> None:
    feats = torch.randn(300, 16, generator=_seeded(0))
    assert abs(frechet_distance(feats, feats.clone())) < 1e-8


def test_frechet_distance_of_non_finite_features_is_nan() -> None:
    """Images with nan (a broken configuration) give nan, not an eigh error that loses every other row."""
    feats = torch.randn(50, 8, generator=_seeded(0))
    broken = feats.clone()
    broken[3, 2] = math.nan
    assert math.isnan(frechet_distance(broken, feats)) and math.isnan(frechet_distance(feats, broken))


def test_frechet_distance_known_gaussians() -> None:
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2
    f64 = {"dtype": torch.float64}
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0], **f64), torch.tensor([1.0, 1.0, 0.0], **f64)
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25], **f64), torch.tensor([9.0, 1.0, 0.25], **f64)
    expected = (mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()  # 5 + 4 + 1 = 10
    a, b = _exact_moments(mu_a, torch.diag(var_a)), _exact_moments(mu_b, torch.diag(var_b), seed=1)
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)
    # a rotated covariance against the identity: tr(I) + tr(Sb) - 2 tr(sqrt(Sb)), eigenvalues 4 and 9
    angle = torch.tensor(0.6, dtype=torch.float64)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    cov_b = rot @ torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64)) @ rot.T
    zero = torch.zeros(2, dtype=torch.float64)
    a, b = _exact_moments(zero, torch.eye(2, dtype=torch.float64)), _exact_moments(zero, cov_b, seed=1)
    assert frechet_distance(a, b) == pytest.approx(2 + 13 - 2 * (2 + 3), rel=1e-9)


def test_frechet_distance_symmetric_and_errors() -> None:
    a = torch.randn(200, 8, generator=_seeded(0)) @ torch.randn(8, 8, generator=_seeded(1))
    b = torch.randn(150, 8, generator=_seeded(2)) @ torch.randn(8, 8, generator=_seeded(3)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert frechet_distance(a, b) > 0
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(a, b[:, :4])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


class _Oracle(nn.Module):
    """An 'evaluator' whose logits are given: adherence's bookkeeping without a trained CNN."""

    def __init__(self, logits: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.logits = logits
        self.anchor = nn.Parameter(torch.zeros(()))  # gives predict() a device

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.logits


def _perfect_logits(batch: list[Scene]) -> dict[str, torch.Tensor]:
    lab = labels(batch)
    return {name: nn.functional.one_hot(lab[name].clamp(min=0), shape[-1]).float() for name, shape in HEADS.items()}


def test_adherence_on_hand_made_logits() -> None:
    batch = sample_scenes(5, _seeded(3))
    images = torch.rand(5, 3, 64, 64)
    logits = _perfect_logits(batch)
    total = sum(1 + 3 * len(s.objects) for s in batch)
    assert adherence(_Oracle(logits), images, batch) == 1.0
    assert torch.equal(adherence_per_image(_Oracle(logits), images, batch), torch.ones(5))
    assert accuracy(logits, batch) == {name: 1.0 for name in HEADS}
    # one object's colour wrong: exactly one attribute of all lost
    cell = POSITIONS.index(batch[2].objects[0].position)
    wrong = {k: v.clone() for k, v in logits.items()}
    wrong["colour"][2, cell] = wrong["colour"][2, cell].roll(1)
    assert adherence(_Oracle(wrong), images, batch) == pytest.approx(1 - 1 / total)
    per_image = adherence_per_image(_Oracle(wrong), images, batch)
    assert per_image[2] == pytest.approx(1 - 1 / (1 + 3 * len(batch[2].objects)))
    assert (per_image[[0, 1, 3, 4]] == 1).all()
    # predictions in empty cells are not graded; a wrong background costs one attribute per image
    extra = {k: v.clone() for k, v in logits.items()}
    extra["background"] = extra["background"].roll(1, dims=1)
    hits, counts = recognised(extra, batch)
    assert torch.equal(hits, counts - 1)


def test_predict_takes_images_in_0_1() -> None:
    ev = Evaluator().eval()
    x = render(sample_scenes(3, _seeded(0)), _seeded(0))
    assert torch.allclose(predict(ev, x / 2 + 0.5)["shape"], ev(x)["shape"], atol=1e-5)


# ---------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = build_pipeline(seed=0, config_overrides=TINY_OVERRIDES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _batch_sizes(pipe) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: sizes.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    return sizes, handle


def _gens(*seeds: int) -> list[torch.Generator]:
    return [_seeded(s) for s in seeds]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_pipeline_samples_with_and_without_cfg(tiny_pipe, guidance: float) -> None:
    sizes, handle = _batch_sizes(tiny_pipe)
    try:
        images = tiny_pipe(PROMPTS[:2], num_inference_steps=2, guidance_scale=guidance, generator=_gens(0, 1)).images
    finally:
        handle.remove()
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and torch.isfinite(images).all()
    assert sizes == [4 if guidance > 1 else 2] * 2  # one call per step on [uncond; cond]


def test_pipeline_default_guidance_and_output_types(tiny_pipe) -> None:
    sizes, handle = _batch_sizes(tiny_pipe)
    try:
        tiny_pipe.default_guidance_scale = 2.0
        pil = tiny_pipe(PROMPTS[0], num_inference_steps=1, generator=_seeded(0), output_type="pil").images
        tiny_pipe.default_guidance_scale = 1.0
        (arr,) = tiny_pipe(PROMPTS[0], num_inference_steps=1, generator=_seeded(0), output_type="np", return_dict=False)
    finally:
        handle.remove()
    assert sizes == [2, 1]
    assert pil[0].size == (64, 64) and arr.shape == (1, 64, 64, 3)


def test_per_prompt_generators_make_samples_independent(tiny_pipe) -> None:
    kw = {"num_inference_steps": 2, "guidance_scale": 3.0}
    a = tiny_pipe([PROMPTS[0], PROMPTS[1]], generator=_gens(7, 8), **kw).images
    b = tiny_pipe([PROMPTS[0], PROMPTS[2]], generator=_gens(7, 9), **kw).images
    alone = tiny_pipe([PROMPTS[0]], generator=_gens(7), **kw).images
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[0], alone[0], atol=1e-5)
    assert not torch.allclose(a[1], b[1], atol=1e-3)


def test_callback_on_step_end(tiny_pipe) -> None:
    calls = []

    def callback(pipe, i, t, kwargs):
        calls.append((i, float(t), tuple(kwargs)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    images = tiny_pipe(
        PROMPTS[:2], num_inference_steps=3, guidance_scale=2.0, generator=_gens(0, 1), callback_on_step_end=callback
    ).images
    assert [c[0] for c in calls] == [0, 1, 2] and all(c[2] == ("latents",) for c in calls)
    assert calls[0][1] == pytest.approx(1000.0)
    assert torch.allclose(images, torch.full_like(images, 0.5))  # the last step's latents replaced


def test_pipeline_bad_inputs(tiny_pipe) -> None:
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_pipe(PROMPTS[:2], num_inference_steps=1, generator=_gens(0))
    with pytest.raises(ValueError, match="vocabulary"):
        tiny_pipe("a small purple circle top, plain background", num_inference_steps=1)
    with pytest.raises(ValueError, match="latents of shape"):
        tiny_pipe(PROMPTS[0], num_inference_steps=1, latents=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="caption_projection_dim"):
        build_pipeline(config_overrides={"num_layers": 1, "num_attention_heads": 1})


def test_full_config_parameter_count() -> None:
    pipe = build_pipeline()
    assert sum(p.numel() for p in pipe.transformer.parameters()) == 13_834_288
    assert pipe.dtype == torch.float32 and pipe.device == torch.device("cpu")


def test_save_load_round_trip(tmp_path) -> None:
    pipe = build_pipeline(seed=1, config_overrides=TINY_OVERRIDES, dtype=torch.bfloat16)  # bf16: stored exactly
    pipe.default_guidance_scale, pipe.record = 2.5, {"steps": 3}
    save_pipeline(pipe, tmp_path)
    loaded = load_pipeline(tmp_path)
    for p in (pipe, loaded):
        p.set_progress_bar_config(disable=True)
    assert loaded.dtype == torch.bfloat16 and loaded.default_guidance_scale == 2.5 and loaded.record == {"steps": 3}
    kw = {"num_inference_steps": 2}
    assert torch.equal(
        pipe(PROMPTS[:2], generator=_gens(0, 1), **kw).images, loaded(PROMPTS[:2], generator=_gens(0, 1), **kw).images
    )
    assert loaded.to(torch.float32).dtype == torch.float32


def test_saved_shards_fit_16_mib(tmp_path) -> None:
    save_pipeline(build_pipeline(), tmp_path)
    shards = list((tmp_path / "transformer").glob("*.safetensors"))
    assert len(shards) == 2 and all(s.stat().st_size < 16 * 2**20 for s in shards)
    assert sum(s.stat().st_size for s in shards) < 28e6  # bf16


def test_load_refuses_another_vocabulary_and_missing_weights(tmp_path) -> None:
    save_pipeline(build_pipeline(config_overrides=TINY_OVERRIDES), tmp_path)
    meta = json.loads((tmp_path / "yardstick.json").read_text())
    meta["vocabulary"] = [*meta["vocabulary"], "purple"]
    (tmp_path / "yardstick.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="vocabulary"):
        load_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="train_yardstick"):
        load_pipeline(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train_yardstick"):
        load_evaluator(tmp_path / "nowhere" / "evaluator.safetensors")


# ---------------------------------------------------------------- training script


def test_train_script_tiny_writes_every_artefact(tmp_path, capsys) -> None:
    out = tmp_path / "weights"
    result = train_yardstick.main(
        ["--device", "cpu", "--tiny", "--steps", "2", "--evaluator-steps", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    done = [line for line in printed.splitlines() if line.startswith("YARDSTICK_DONE")]
    assert len(done) == 1 and "steps=2 " in done[0]
    for name in (
        "yardstick.json",
        "text_encoder.safetensors",
        "transformer/config.json",
        "evaluator.safetensors",
        "evaluator.json",
        "loss.png",
        "samples.png",
        "MODEL_CARD.md",
        "train_log.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.partial"))
    record = result["record"]
    assert record["steps"] == 2 and record["complete"] and math.isfinite(record["final_loss"])
    assert set(record["evaluation"]["per_guidance"]) == {"1.0", "2.0", "3.0", "4.0", "5.0"}
    pipe = load_pipeline(out)
    assert pipe.default_guidance_scale == record["evaluation"]["guidance"]
    assert load_evaluator(out / "evaluator.safetensors").accuracy.keys() == HEADS.keys()
    assert len(json.loads((out / "train_log.json").read_text())["loss"]) == 2
    assert "python -m benchmarks.quality.train_yardstick --device cpu --tiny" in (out / "MODEL_CARD.md").read_text()


def test_train_script_compile_failure_falls_back_and_checkpoints(tmp_path, monkeypatch, caplog) -> None:
    """A torch.compile that fails on the first step: a warning, then eager; --save-every-minutes 0 saves
    the EMA weights after every step (a killed run keeps its last one)."""

    def broken_compile(fn):
        def compiled(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return compiled

    def load(out, **kwargs):  # nothing was written: a fresh tiny pipeline with the last record saved
        pipe = build_pipeline(config_overrides=TINY_OVERRIDES)
        pipe.record = saves[-1]
        return pipe

    saves: list[dict] = []
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(train_yardstick, "save_pipeline", lambda pipe, out: saves.append(dict(pipe.record)))
    monkeypatch.setattr(train_yardstick, "load_pipeline", load)
    with caplog.at_level("WARNING"):
        result = train_yardstick.main(
            [
                "--device",
                "cpu",
                "--tiny",
                "--steps",
                "3",
                "--evaluator-steps",
                "1",
                "--compile",
                "--save-every-minutes",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
    assert "torch.compile of the training step failed (RuntimeError: no compiler here)" in caplog.text
    # every step, the end of training, then the evaluated pipeline
    assert [(r["steps"], r["complete"]) for r in saves] == [(1, False), (2, False), (3, False), (3, False), (3, True)]
    assert not result["record"]["compiled"]


def test_train_script_rejects_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        train_yardstick.parse_args(["--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_adaln_zero_init_makes_the_output_zero() -> None:
    pipe = build_pipeline(config_overrides=TINY_OVERRIDES)
    train_yardstick.adaln_zero_init(pipe.transformer)
    hidden, pooled = pipe.text_encoder(pipe.tokenizer.encode(PROMPTS[:1]))
    out = pipe.transformer(
        hidden_states=torch.randn(1, 3, 64, 64),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=hidden,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    assert (out == 0).all()


# ---------------------------------------------------------------- the committed trained files


@pytest.mark.skipif(
    not EVALUATOR_PATH.is_file(),
    reason=f"no trained evaluator in {WEIGHTS_DIR} yet "
    "(python -m benchmarks.quality.train_yardstick; the lead commits its files)",
)
def test_committed_evaluator_reads_fresh_renders() -> None:
    ev = load_evaluator()
    batch = sample_scenes(256, _seeded(98765))
    images = render(batch, _seeded(98766)) / 2 + 0.5
    acc = accuracy(predict(ev, images), batch)
    assert all(v > 0.98 for v in acc.values()), acc
    assert adherence(ev, images, batch) > 0.98


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "yardstick.json").is_file(),
    reason=f"no trained yardstick in {WEIGHTS_DIR} "
    "yet (python -m benchmarks.quality.train_yardstick; the lead commits its files)",
)
def test_committed_pipeline_loads_and_samples() -> None:
    pipe = load_pipeline(dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.record["complete"] and pipe.default_guidance_scale in (1.0, 2.0, 3.0, 4.0, 5.0)
    images = pipe(PROMPTS[:1], num_inference_steps=2, generator=_gens(0)).images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
