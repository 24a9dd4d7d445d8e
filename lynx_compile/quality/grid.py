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
HEADER = 20  # the configuration names: one line (more where a long name wraps)
LINE = 12  # pixels per line of text
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
    font = ImageFont.load_default()
    names = [name_lines(name, cw, font) for name, _ in columns]
    header = HEADER + LINE * (max(len(lines) for lines in names) - 1)
    grid = Image.new("RGB", (LABEL + len(columns) * (cw + PAD) + PAD, header + n * (ch + PAD) + PAD), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for j, ((_, batch), lines) in enumerate(zip(columns, names, strict=True)):
        x = LABEL + PAD + j * (cw + PAD)
        draw.multiline_text((x, 4), "\n".join(lines), fill=_INK, font=font, spacing=LINE - 10)
        for i in range(n):
            grid.paste(_to_pil(batch[i]).resize((cw, ch), _resample(h, ch)), (x, header + PAD + i * (ch + PAD)))
    chars = max(8, LABEL // 7)
    for i, prompt in enumerate(prompts[:n]):
        lines = textwrap.wrap(prompt, chars)[: max(1, ch // 12)]
        draw.multiline_text((PAD, header + PAD + i * (ch + PAD)), "\n".join(lines), fill=_INK, font=font)
    grid.save(path)


def name_lines(name: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """A configuration's name in lines no wider than its column, broken after underscores (then anywhere):
    long names such as ``budget_hi_lowrank32_dense_steps_25pct`` ran into their neighbours' columns."""
    lines: list[str] = []
    for part in name.replace("_", "_\0").split("\0"):
        if lines and font.getlength(lines[-1] + part) <= width:
            lines[-1] += part
            continue
        while font.getlength(part) > width and len(part) > 1:  # a part wider than the column: cut it
            cut = max(i for i in range(1, len(part) + 1) if font.getlength(part[:i]) <= width or i == 1)
            lines.append(part[:cut])
            part = part[cut:]
        lines.append(part)
    return lines


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array if array.shape[2] == 3 else array[..., 0], "RGB" if array.shape[2] == 3 else "L")


def _resample(height: int, cell_height: int) -> Image.Resampling:
    return Image.Resampling.NEAREST if cell_height >= height else Image.Resampling.LANCZOS
