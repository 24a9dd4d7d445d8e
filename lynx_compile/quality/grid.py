"""The image grid people look at: one row per prompt, one column per configuration, dense first.

Cells are scaled so that small samples (the yardstick's 64 px) are big enough to see and large ones
(1024 px) keep the file reasonable: integer upscaling (nearest, no invented detail) to at least
``MIN_CELL`` pixels, downscaling to at most ``MAX_CELL``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 4
HEADER = 20  # the configuration names
LABEL = 160  # the prompts, left of each row
MIN_CELL = 128
MAX_CELL = 512
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)


def cell_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of one image in the grid."""
    side = max(height, width)
    if side < MIN_CELL:
        k = MIN_CELL // side + (MIN_CELL % side > 0)
        return height * k, width * k
    if side > MAX_CELL:
        return max(1, round(height * MAX_CELL / side)), max(1, round(width * MAX_CELL / side))
    return height, width


def write_grid(path: Path, images: Mapping[str, torch.Tensor], prompts: Sequence[str]) -> None:
    """``images``: name -> (n, 3, H, W) in [0, 1], the same n and size for all; one row per prompt."""
    columns = list(images.items())
    n, _, h, w = columns[0][1].shape
    ch, cw = cell_size(h, w)
    grid = Image.new("RGB", (LABEL + len(columns) * (cw + PAD) + PAD, HEADER + n * (ch + PAD) + PAD), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for j, (name, batch) in enumerate(columns):
        x = LABEL + PAD + j * (cw + PAD)
        draw.text((x, 4), name, fill=_INK, font=font)
        for i in range(n):
            grid.paste(_to_pil(batch[i]).resize((cw, ch), _resample(h, ch)), (x, HEADER + PAD + i * (ch + PAD)))
    chars = max(8, LABEL // 7)
    for i, prompt in enumerate(prompts[:n]):
        lines = textwrap.wrap(prompt, chars)[: max(1, ch // 12)]
        draw.multiline_text((PAD, HEADER + PAD + i * (ch + PAD)), "\n".join(lines), fill=_INK, font=font)
    grid.save(path)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array if array.shape[2] == 3 else array[..., 0], "RGB" if array.shape[2] == 3 else "L")


def _resample(height: int, cell_height: int) -> Image.Resampling:
    return Image.Resampling.NEAREST if cell_height >= height else Image.Resampling.LANCZOS
