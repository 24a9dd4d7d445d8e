"""`LynxConfig`: every knob of the lynx backend in one typed, validated object.

`torch.compile(model, backend="lynx", options={...})` and `lynx_compile.inspect(..., options=...)`
both go through `LynxConfig.from_options`, so an unknown option or a wrong type fails the same way
everywhere, naming the valid options.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch._inductor

from .calibration import Calibration

# GEMMs a DiT should keep dense by default: embedders (patch, text, timestep, caption; Qwen-Image
# names its patch and text embedders img_in / txt_in) and the final output projection / output norm
# modulation (Z-Image, like DiT's reference code: final_layer). Transformer-block GEMMs never match these.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "*embed*",
    "*caption_projection*",
    "img_in",
    "txt_in",
    "*final_layer*",
    "proj_out",
    "proj_out_*",
    "norm_out.*",
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_PATHS = ("auto", "reference")
PRECISIONS = ("bf16", "fp8")  # the sparse GEMMs' operands: the activation's own 16 bits, or float8_e4m3fn
INDUCTOR_MODES: tuple[str, ...] = tuple(torch._inductor.list_mode_options())  # torch.compile's modes


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclasses.dataclass(frozen=True)
class LynxConfig:
    """Options of the lynx backend.

    Selection of a GEMM (by its name, see the README): it must match one of ``include``, match none
    of ``exclude``, and match none of ``default_exclude`` unless an ``include`` pattern other than
    ``"*"`` names it explicitly. Then its activation dtype must be in ``dtypes`` and it must have at
    least ``min_rows`` rows (M = product of the activation's leading dims).
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    default_exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    min_rows: int = 256
    dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32")
    compensate: bool = False
    path: str = "auto"
    cost_model: bool = True
    # the cost model's bar: a GEMM goes sparse when dense_ms / (prune + sparse GEMM)_ms >= this. Above
    # 1: the per-shape measurement misses what a layer costs inside a model (the bias add cuBLAS fuses,
    # one more kernel, the producer's output no longer read straight from L2): PixArt's 1.08x layers
    # made the whole model 7% slower (docs/design.md, "Cost model")
    min_speedup: float = 1.1
    cudagraphs: bool = True
    # prune+compress in an Inductor template that takes a pointwise producer (GELU, residual add) as its
    # prologue. Off by default: it moves 35% less activation data in FLUX and wins 1.5-4% on an MLP block,
    # but whole FLUX is a tie on the H100 (tanh-GELU + selection are instruction-bound: docs/design.md,
    # "Producer fusion")
    fuse_producers: bool = False
    # add a GEMM's bias inside the sparse GEMM where an add in the graph would feed a norm or attention
    # (FLUX's q, k, v): a copy [W | b | 0...] of each such weight, kept current (passes/fold_bias.py). Costs
    # that memory (shown in the report); not with compensate (the per-row scale must not scale the
    # bias). A tie on FLUX and Wan (docs/design.md, "Bias folding")
    fold_bias: bool = False
    # a GEMM stays dense when pruning its input changes its own output by more than this (relative L2
    # error, float32), measured at compile time on the inputs of the call that compiles the graph; the
    # report then shows every GEMM's measured error. None: no budget, nothing measured
    max_layer_error: float | None = None
    # the first k denoising steps (an int) or that fraction of them (a float in (0, 1)) run dense: the dense
    # graph is compiled beside the sparse one and each call picks one by the step lynx_compile.follow_steps
    # (or set_step) reports, read at call time (steps.py). 0: always sparse
    dense_steps: int | float = 0
    # the allowed relative L2 error of each compiled graph's output: GEMMs are chosen by a knapsack over their
    # measured effect on the output (each pruned alone) against the time they save, then verified together on
    # the compiling call's inputs (passes/sensitivity.py). None: no budget, nothing measured
    error_budget: float | None = None
    dump_graphs: str | None = None  # directory: write each FX graph before and after the pass
    # Inductor's mode, as torch.compile(mode=...) gives it: torch refuses mode= together with options=,
    # so this is how both reach the backend. None: torch.compile's mode, if any
    inductor_mode: str | None = None
    # low-rank compensation: each sparse GEMM adds (x A) B, A (K x r) and B (r x N) fitted in closed form from
    # ``calibration`` (a file of lynx_compile.calibrate, or the object) to predict its pruning error. 0: off
    low_rank: int = 0
    calibration: str | os.PathLike | Calibration | None = None
    # prune each sparse GEMM's activation in groups of 4 formed in a channel order chosen from ``calibration``
    # (the channels' energies: calibration.balanced_order), each weight a copy with its columns in that order
    # (docs/design.md, "Channel order"). Changes which values pruning keeps, not what the GEMM computes
    permute_channels: bool = False
    # each sparse GEMM runs with its weight refitted to its pruned input, W G^T, G (K x K) fitted in closed form
    # from ``calibration`` (made with option refit) so that P(x) G ~ x (lynx_compile.refit). No extra work at
    # inference; a weight copy per sparse GEMM (memory, in the report). Not with low_rank
    refit: bool = False
    # "fp8": sparse GEMMs run on float8_e4m3fn operands (per-row activation and per-channel weight
    # power-of-two scales, applied after the GEMM; docs/design.md, "FP8"). Needs a 16-bit activation
    # and an sm90+ GPU; elsewhere the GEMM runs 2:4 in its own dtype, with the reason in the report.
    # Dense GEMMs stay in the model's dtype
    precision: str = "bf16"

    def __post_init__(self) -> None:
        for field in ("include", "exclude", "default_exclude", "dtypes"):
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(f"lynx option {field!r} must be a list of strings, got {value!r}")
            value = tuple(value)
            if not all(isinstance(v, str) for v in value):
                raise TypeError(f"lynx option {field!r} must be a list of strings, got {value!r}")
            object.__setattr__(self, field, value)
        bad = [d for d in self.dtypes if d not in _DTYPES]
        if bad:
            raise ValueError(f"lynx option 'dtypes': unknown dtype(s) {bad}; valid: {sorted(_DTYPES)}")
        if not isinstance(self.min_rows, int) or isinstance(self.min_rows, bool) or self.min_rows < 0:
            raise TypeError(f"lynx option 'min_rows' must be a non-negative int, got {self.min_rows!r}")
        speedup = self.min_speedup
        if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not speedup > 0:
            raise TypeError(f"lynx option 'min_speedup' must be a positive number, got {speedup!r}")
        for field in (
            "compensate",
            "cost_model",
            "cudagraphs",
            "fuse_producers",
            "fold_bias",
            "permute_channels",
            "refit",
        ):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"lynx option {field!r} must be a bool, got {getattr(self, field)!r}")
        budget = self.max_layer_error
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0):
            raise TypeError(f"lynx option 'max_layer_error' must be None or a number >= 0, got {budget!r}")
        steps = self.dense_steps
        if isinstance(steps, bool) or not (
            (isinstance(steps, int) and steps >= 0) or (isinstance(steps, float) and 0 < steps < 1)
        ):
            raise TypeError(
                f"lynx option 'dense_steps' must be an int >= 0 (steps) or a float in (0, 1) (a fraction "
                f"of the steps), got {steps!r}"
            )
        budget = self.error_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0):
            raise TypeError(f"lynx option 'error_budget' must be None or a number >= 0, got {budget!r}")
        if self.dump_graphs is not None and not isinstance(self.dump_graphs, str):
            raise TypeError(f"lynx option 'dump_graphs' must be a directory path (str), got {self.dump_graphs!r}")
        if self.path not in _PATHS:
            raise ValueError(f"lynx option 'path' must be one of {_PATHS}, got {self.path!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"lynx option 'precision' must be one of {PRECISIONS}, got {self.precision!r}")
        if self.inductor_mode is not None and self.inductor_mode not in INDUCTOR_MODES:
            raise ValueError(
                f"lynx option 'inductor_mode' must be None or one of {INDUCTOR_MODES}, got {self.inductor_mode!r}"
            )
        if not isinstance(self.low_rank, int) or isinstance(self.low_rank, bool) or self.low_rank < 0:
            raise TypeError(f"lynx option 'low_rank' must be a non-negative int, got {self.low_rank!r}")
        if self.calibration is not None and not isinstance(self.calibration, (str, os.PathLike, Calibration)):
            raise TypeError(
                "lynx option 'calibration' must be None, a path or a lynx_compile.Calibration, "
                f"got {type(self.calibration).__name__}"
            )
        if self.low_rank and self.calibration is None:
            raise ValueError(
                f"lynx option low_rank={self.low_rank} needs option 'calibration': a file written by "
                "`lynx-compile calibrate` or Calibration.save, or lynx_compile.calibrate(...)'s result"
            )
        if self.permute_channels and self.calibration is None:
            raise ValueError(
                "lynx option permute_channels needs option 'calibration': the channel order comes from the "
                "activations' energies that lynx_compile.calibrate(...) measures"
            )
        if self.refit and self.calibration is None:
            raise ValueError(
                "lynx option refit needs option 'calibration': a file of `lynx-compile calibrate -o refit=true` or "
                "lynx_compile.calibrate(..., options={'refit': True})'s result"
            )
        if self.refit and self.low_rank:
            raise ValueError(
                "lynx options 'refit' and 'low_rank' cannot be combined: both are fitted to the pruned layer's "
                "error as it is without the other, and together they would correct it twice"
            )
        if self.fold_bias and self.compensate:
            raise ValueError(
                "lynx options 'fold_bias' and 'compensate' cannot be combined: compensation scales "
                "each row of a GEMM's output, and a bias added inside the GEMM would be scaled with it"
            )
        if self.fold_bias and self.precision == "fp8":
            raise ValueError(
                "lynx options 'fold_bias' and precision='fp8' cannot be combined: the fp8 GEMM's "
                "scales are applied to its output, and a bias added inside the GEMM would be scaled too"
            )

    @classmethod
    def from_options(cls, options: LynxConfig | Mapping[str, Any] | None = None) -> LynxConfig:
        """Build from ``torch.compile(..., options=...)``; rejects unknown keys with the valid ones."""
        if options is None:
            return cls()
        if isinstance(options, LynxConfig):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"lynx options must be a dict or LynxConfig, got {type(options).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown lynx option(s) {unknown}; valid options: {valid}")
        return cls(**options)

    def select_by_name(self, name: str) -> tuple[bool, str]:
        """Whether the name-based rules select a GEMM, and why (for the report)."""
        hit = _first_match(name, self.exclude)
        if hit:
            return False, f"excluded by option exclude={hit!r}"
        if not _first_match(name, self.include):
            return False, f"not matched by option include={list(self.include)}"
        explicit = _first_match(name, [p for p in self.include if p != "*"])
        default_hit = _first_match(name, self.default_exclude)
        if default_hit and not explicit:
            return False, f"DiT default: embedders and output projection stay dense ({default_hit!r})"
        return True, f"included by {explicit!r}" if explicit else "block GEMM"

    def allows_dtype(self, dtype: torch.dtype) -> bool:
        return dtype_name(dtype) in self.dtypes


def _first_match(name: str, patterns: Iterable[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
