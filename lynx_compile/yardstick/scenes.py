"""The yardstick's data: captioned 64x64 scenes drawn from a seeded generator, never stored.

A scene is 1-3 coloured shapes in distinct cells of a 3x3 grid on a greyish textured background.
Its caption names every attribute (``"a large red circle top left, a small blue square bottom
right, striped background"``), so what a generated image should show is known exactly and an
evaluator trained on the same renderer can grade it. The renderer is vectorised torch: it runs on
the GPU every training step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "BACKGROUNDS",
    "CELL",
    "COLOURS",
    "IGNORE",
    "IMAGE_SIZE",
    "MAX_OBJECTS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TEXT_LENGTH",
    "VOCAB",
    "Obj",
    "Scene",
    "Tokenizer",
    "caption",
    "labels",
    "parse_caption",
    "render",
    "sample_scenes",
]

IMAGE_SIZE = 64
GRID = 3
CELL = IMAGE_SIZE / GRID  # 21.33 px
MAX_OBJECTS = 3
TEXT_LENGTH = 24  # the longest caption has 23 tokens
IGNORE = -100  # label of an attribute an empty cell does not have (cross_entropy's ignore_index)

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = ("plain", "striped", "checkered", "dotted")
PALETTE = torch.tensor(
    [  # RGB in [0, 1], in COLOURS' order
        [0.90, 0.12, 0.12],
        [0.12, 0.78, 0.16],
        [0.16, 0.28, 0.95],
        [0.95, 0.88, 0.12],
        [0.90, 0.14, 0.88],
        [0.12, 0.88, 0.90],
    ]
)

# Geometry in pixels. An object's extent is RADIUS[size] times its shape's factor; the largest (the
# triangle's apex, 1.27 x 7 px above its incentre, the diamond's tips, 1.3 x 7 px) plus the jitter stays
# inside its 21.3 px cell. Small shapes differ by 1.4-1.9 px at corners and tips: still legible after blur.
RADIUS = (4.5, 7.0)
JITTER = 1.5  # uniform in [-JITTER, JITTER], x and y
COLOUR_JITTER = 0.06  # per channel, uniform
SQUARE_HALF_SIDE = 1.0
TRIANGLE_HALF_SIDE = 1.1  # equilateral, apex up, incentre at the object's centre
DIAMOND_RADIUS = 1.3  # L1 radius

_INDEX = {name: i for names in (SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS) for i, name in enumerate(names)}

VOCAB = (
    "<pad>",
    ",",
    "a",
    "background",
    *SHAPES,
    *COLOURS,
    *SIZES,
    *sorted({w for p in POSITIONS for w in p.split()}),
    *BACKGROUNDS,
)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field, allowed in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} {getattr(self, field)!r} is not one of {allowed}")


@dataclass(frozen=True)
class Scene:
    """Objects in caption order (random), each in its own cell."""

    objects: tuple[Obj, ...]
    background: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, not {len(self.objects)}")
        if len({o.position for o in self.objects}) != len(self.objects):
            raise ValueError(f"two objects share a cell: {[o.position for o in self.objects]}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background {self.background!r} is not one of {BACKGROUNDS}")


def sample_scenes(n: int, generator: torch.Generator) -> list[Scene]:
    """``n`` random scenes; the same seeded generator gives the same scenes."""
    g = {"generator": generator, "device": generator.device}
    counts = torch.randint(1, MAX_OBJECTS + 1, (n,), **g).tolist()
    cells = torch.rand(n, GRID * GRID, **g).argsort(dim=1).tolist()  # a random order of the cells
    shapes = torch.randint(len(SHAPES), (n, MAX_OBJECTS), **g).tolist()
    colours = torch.randint(len(COLOURS), (n, MAX_OBJECTS), **g).tolist()
    sizes = torch.randint(len(SIZES), (n, MAX_OBJECTS), **g).tolist()
    backgrounds = torch.randint(len(BACKGROUNDS), (n,), **g).tolist()
    return [
        Scene(
            tuple(
                Obj(SHAPES[shapes[i][j]], COLOURS[colours[i][j]], SIZES[sizes[i][j]], POSITIONS[cells[i][j]])
                for j in range(counts[i])
            ),
            BACKGROUNDS[backgrounds[i]],
        )
        for i in range(n)
    ]


def caption(scene: Scene) -> str:
    objects = ", ".join(f"a {o.size} {o.colour} {o.shape} {o.position}" for o in scene.objects)
    return f"{objects}, {scene.background} background"


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (the inverse of ``caption``); a malformed caption raises ``ValueError``."""
    *clauses, last = [c.strip() for c in text.split(",")]
    background, *rest = last.split() or [""]
    if rest != ["background"]:
        raise ValueError(f"caption {text!r} must end with '<{'|'.join(BACKGROUNDS)}> background'")
    objects = []
    for clause in clauses:
        words = clause.split()
        if len(words) < 5 or words[0] != "a":
            raise ValueError(f"{clause!r} in {text!r} is not 'a <size> <colour> <shape> <position>'")
        objects.append(Obj(size=words[1], colour=words[2], shape=words[3], position=" ".join(words[4:])))
    return Scene(tuple(objects), background)


class Tokenizer:
    """One id per word of the fixed vocabulary (``<pad>`` = 0, ``,`` a word of its own); pads right."""

    def __init__(self, vocabulary: Sequence[str] = VOCAB, length: int = TEXT_LENGTH) -> None:
        if vocabulary[0] != "<pad>" or len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary must start with '<pad>' and hold no word twice")
        self.vocabulary = tuple(vocabulary)
        self.length = length
        self.ids = {w: i for i, w in enumerate(self.vocabulary)}

    def encode(self, captions: str | Iterable[str], length: int | None = None) -> torch.Tensor:
        """``(n, length)`` token ids; an unknown word or a caption over ``length`` tokens raises ``ValueError``."""
        length = self.length if length is None else length
        captions = [captions] if isinstance(captions, str) else list(captions)
        rows = []
        for text in captions:
            words = text.replace(",", " , ").split()
            unknown = [w for w in words if w not in self.ids or w == "<pad>"]
            if unknown:
                raise ValueError(f"caption {text!r}: words {unknown} are not in the vocabulary {self.vocabulary[1:]}")
            if len(words) > length:
                raise ValueError(f"caption {text!r} has {len(words)} tokens, more than {length}")
            rows.append([self.ids[w] for w in words] + [0] * (length - len(words)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [" ".join(self.vocabulary[i] for i in row if i != 0).replace(" ,", ",") for row in ids.tolist()]


def labels(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """The evaluator's targets, per cell (in POSITIONS' order): ``shape`` 0 = empty, 1..4; ``colour``,
    ``size`` (IGNORE where empty); per image ``background``."""
    cells = [[(0, IGNORE, IGNORE)] * (GRID * GRID) for _ in scenes]
    for row, scene in zip(cells, scenes, strict=True):
        for o in scene.objects:
            row[_INDEX[o.position]] = (_INDEX[o.shape] + 1, _INDEX[o.colour], _INDEX[o.size])
    shape, colour, size = torch.tensor(cells, dtype=torch.long).reshape(len(scenes), GRID * GRID, 3).unbind(-1)
    background = torch.tensor([_INDEX[s.background] for s in scenes], dtype=torch.long)
    return {"shape": shape, "colour": colour, "size": size, "background": background}


def render(
    scenes: Sequence[Scene], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(n, 3, 64, 64)`` float32 images in [-1, 1]. The random parts (position and colour jitter,
    texture parameters) are drawn on the generator's device, so a seeded generator gives the same
    pixels on any ``device`` up to float rounding."""
    n = len(scenes)
    rnd = {"generator": generator, "device": generator.device if generator is not None else "cpu"}
    # (n, MAX_OBJECTS, 4): shape, colour, size, cell of each object slot; -1 where a scene has fewer objects
    slots = torch.tensor(
        [
            [(_INDEX[o.shape], _INDEX[o.colour], _INDEX[o.size], _INDEX[o.position]) for o in s.objects]
            + [(-1, -1, -1, -1)] * (MAX_OBJECTS - len(s.objects))
            for s in scenes
        ],
        dtype=torch.long,
    ).reshape(n, MAX_OBJECTS, 4)
    background = torch.tensor([_INDEX[s.background] for s in scenes], dtype=torch.long)
    jitter = (torch.rand(n, MAX_OBJECTS, 2, **rnd) * 2 - 1) * JITTER
    colour_jitter = (torch.rand(n, MAX_OBJECTS, 3, **rnd) * 2 - 1) * COLOUR_JITTER
    texture = torch.rand(n, 8, **rnd)  # grey, amplitude, period, angle, phases x/y, dot radius, dot sign
    jitter, colour_jitter, texture, slots, background = (
        t.to(device) for t in (jitter, colour_jitter, texture, slots, background)
    )

    coords = torch.arange(IMAGE_SIZE, device=device, dtype=torch.float32) + 0.5
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)  # broadcast to (n, H, W)
    image = _background(background, texture, x, y).unsqueeze(1).expand(n, 3, IMAGE_SIZE, IMAGE_SIZE)

    for j in range(MAX_OBJECTS):
        shape, colour, size, cell = slots[:, j].unbind(-1)
        present = shape >= 0
        cx = ((cell.clamp(min=0) % GRID).float() + 0.5) * CELL + jitter[:, j, 0]
        cy = ((cell.clamp(min=0) // GRID).float() + 0.5) * CELL + jitter[:, j, 1]
        radius = torch.tensor(RADIUS, device=device)[size.clamp(min=0)]
        dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
        sdf = _sdf(shape.clamp(min=0), dx, dy, radius.view(-1, 1, 1))
        alpha = ((0.5 - sdf).clamp(0, 1) * present.view(-1, 1, 1)).unsqueeze(1)  # 1 px soft edge
        rgb = (PALETTE.to(device)[colour.clamp(min=0)] + colour_jitter[:, j]).clamp(0, 1).view(n, 3, 1, 1)
        image = image * (1 - alpha) + rgb * alpha
    return image * 2 - 1


def _sdf(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of each image's shape; ``shape`` (n,), the rest broadcast."""
    ax, ay = dx.abs(), dy.abs()
    circle = torch.sqrt(dx * dx + dy * dy) - r
    qx, qy = ax - r * SQUARE_HALF_SIDE, ay - r * SQUARE_HALF_SIDE
    square = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2) + torch.maximum(qx, qy).clamp(max=0)
    diamond = (ax + ay - r * DIAMOND_RADIUS) / math.sqrt(2)
    triangle = _triangle(ax, -dy, r * TRIANGLE_HALF_SIDE)
    select = shape.view(-1, 1, 1)
    return torch.where(
        select == 0, circle, torch.where(select == 1, square, torch.where(select == 2, triangle, diamond))
    )


def _triangle(px: torch.Tensor, py: torch.Tensor, half_side: torch.Tensor) -> torch.Tensor:
    """Exact SDF of an equilateral triangle, apex up (``py`` points up), incentre at 0 (Inigo Quilez's
    ``sdEquilateralTriangle``); ``px`` = |x|."""
    k = math.sqrt(3.0)
    px = px - half_side
    py = py + half_side / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(max=0).maximum(-2 * half_side)
    return -torch.sqrt(px * px + py * py) * torch.sign(py)


def _background(kind: torch.Tensor, u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, H, W) greyish textures, low contrast: base grey 0.3-0.65, amplitude 0.05-0.10."""
    p = lambda k: u[:, k].view(-1, 1, 1)
    grey, amplitude = 0.30 + 0.35 * p(0), 0.05 + 0.05 * p(1)
    angle, phase_x, phase_y = math.pi * p(3), 2 * math.pi * p(4), 2 * math.pi * p(5)
    # striped: soft square wave across a random direction, period 6-10 px
    across = x * torch.cos(angle) + y * torch.sin(angle)
    striped = torch.tanh(3 * torch.sin(2 * math.pi * across / (6 + 4 * p(2)) + phase_x))
    # checkered: axis-aligned checks of 4-7 px
    period = 8 + 6 * p(2)
    checkered = torch.tanh(3 * torch.sin(2 * math.pi * x / period + phase_x)) * torch.tanh(
        3 * torch.sin(2 * math.pi * y / period + phase_y)
    )
    # dotted: soft dots of radius 1.3-2 px on a 7-10 px lattice, lighter or darker than the grey
    spacing = 7 + 3 * p(2)
    ddx = torch.remainder(x - spacing * p(4), spacing) - spacing / 2
    ddy = torch.remainder(y - spacing * p(5), spacing) - spacing / 2
    dots = (1.3 + 0.7 * p(6) + 0.5 - torch.sqrt(ddx * ddx + ddy * ddy)).clamp(0, 1)
    dotted = 1.5 * dots * torch.where(p(7) < 0.5, -1.0, 1.0)
    k = kind.view(-1, 1, 1)
    texture = torch.where(k == 1, striped, torch.where(k == 2, checkered, torch.where(k == 3, dotted, 0.0)))
    return grey + amplitude * texture
