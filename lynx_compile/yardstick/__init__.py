"""The quality yardstick: a text-to-image DiT trained here, and an evaluator that grades its images.

The zoo's models have random weights, so nothing there can say whether 2:4 activation pruning keeps
images good. The yardstick is a small diffusers ``SD3Transformer2DModel`` (MMDiT) trained on
procedurally generated captioned scenes (``scenes``); since every scene comes from a known caption,
an evaluator CNN trained on the same renderer (``evaluator``) can check whether a sampled image shows
what its caption asks for (*adherence*) and how far its samples lie from real renders (a Fréchet
distance on its features). Train both with ``python -m benchmarks.quality.train_yardstick``; the
trained files live in ``weights/``.

    pipe = load_pipeline(device="cuda")                       # the trained yardstick, bf16
    images = pipe(captions, generator=[torch.Generator().manual_seed(i) for i in range(n)]).images
    score = adherence(load_evaluator(device="cuda"), images, scenes)
"""

from .evaluator import (
    ARCHITECTURE,
    EVALUATOR_PATH,
    FEATURES,
    HEADS,
    Evaluator,
    accuracy,
    adherence,
    adherence_per_image,
    augment,
    features,
    frechet_distance,
    load_evaluator,
    predict,
    recognised,
    save_evaluator,
)
from .model import (
    SCHEDULER_CONFIG,
    TINY_OVERRIDES,
    TRANSFORMER_CONFIG,
    WEIGHTS_DIR,
    TextEncoder,
    YardstickPipeline,
    build_pipeline,
    load_pipeline,
    save_pipeline,
)
from .scenes import (
    BACKGROUNDS,
    COLOURS,
    IGNORE,
    IMAGE_SIZE,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXT_LENGTH,
    VOCAB,
    Obj,
    Scene,
    Tokenizer,
    caption,
    labels,
    parse_caption,
    render,
    sample_scenes,
)

__all__ = [
    "ARCHITECTURE",
    "BACKGROUNDS",
    "COLOURS",
    "EVALUATOR_PATH",
    "FEATURES",
    "HEADS",
    "IGNORE",
    "IMAGE_SIZE",
    "PALETTE",
    "POSITIONS",
    "SCHEDULER_CONFIG",
    "SHAPES",
    "SIZES",
    "TEXT_LENGTH",
    "TINY_OVERRIDES",
    "TRANSFORMER_CONFIG",
    "VOCAB",
    "WEIGHTS_DIR",
    "Evaluator",
    "Obj",
    "Scene",
    "TextEncoder",
    "Tokenizer",
    "YardstickPipeline",
    "accuracy",
    "adherence",
    "adherence_per_image",
    "augment",
    "build_pipeline",
    "caption",
    "features",
    "frechet_distance",
    "labels",
    "load_evaluator",
    "load_pipeline",
    "parse_caption",
    "predict",
    "recognised",
    "render",
    "sample_scenes",
    "save_evaluator",
    "save_pipeline",
]
