"""lynx_compile: a torch.compile backend that runs DiT GEMMs on 2:4-pruned activations.

fast = torch.compile(model, backend="lynx", options={"min_rows": 256})
report = lynx_compile.inspect(model, *args, **kwargs)
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.lynx.*)
from .backend import lynx_backend, reports
from .calibration import Calibration, CalibrationMismatch
from .calibrator import calibrate
from .codegen import inductor_lowering
from .config import DEFAULT_EXCLUDE, LynxConfig
from .distill import distill
from .inspection import inspect
from .report import GemmPath, LayerReport, PruneSite, Report
from .semantics import compensation_scale, prune_2to4, prune_2to4_compensated
from .steps import follow_steps, set_step

__all__ = [
    "DEFAULT_EXCLUDE",
    "Calibration",
    "CalibrationMismatch",
    "GemmPath",
    "LayerReport",
    "LynxConfig",
    "PruneSite",
    "Report",
    "calibrate",
    "compensation_scale",
    "distill",
    "follow_steps",
    "inspect",
    "lynx_backend",
    "prune_2to4",
    "prune_2to4_compensated",
    "reports",
    "set_step",
]
__version__ = "0.1.0"

# No NullHandler: where the application configures no logging, Python's last-resort handler prints the
# fallbacks' warnings (each once) to stderr, so that none is silent. More: TORCH_LOGS=+lynx_compile (debug) or
# TORCH_LOGS=lynx_compile (info); Python: torch._logging.set_logs(modules={"lynx_compile": logging.INFO}).

inductor_lowering.register()  # prune+compress fused into producers (docs/design.md, "Producer fusion")

if "lynx" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(lynx_backend, name="lynx")
