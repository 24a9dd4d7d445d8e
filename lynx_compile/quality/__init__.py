"""What pruning does to images: dense and lynx samples from the same noise, side by side and measured.

A per-GEMM error says how far one layer's output moves; a user needs to know whether the pictures
change. ``compare`` samples a diffusers pipeline dense and under lynx configurations from the same
seeds and reports PSNR and SSIM against the dense samples, the per-GEMM error over the steps, and
(with the yardstick's evaluator) prompt adherence and a FID-like distance, with an image grid.
"""

from .compare import DEFAULT_CONFIGS, DENSE, QualityResult, Variant, compare, transformer_inputs, write
from .metrics import psnr, ssim

__all__ = [
    "DEFAULT_CONFIGS",
    "DENSE",
    "QualityResult",
    "Variant",
    "compare",
    "psnr",
    "ssim",
    "transformer_inputs",
    "write",
]
