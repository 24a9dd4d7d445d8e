"""The denoising step the process is at, for option ``dense_steps``: the first steps of a denoising loop
run dense, the rest sparse.

The backend compiles a graph's dense and sparse versions once each and picks one per call by reading
this process-global state *at call time*, in the callable it hands Dynamo: Dynamo never sees the state,
so it guards on nothing and never recompiles when the step changes (docs/design.md, "Timestep schedule").

    lynx_compile.follow_steps(pipe)           # a diffusers pipeline: its scheduler says the step
    with lynx_compile.follow_steps(pipe):     # ... or only inside the block
        pipe(prompt)
    lynx_compile.set_step(i, total)           # a loop of one's own
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# () -> (step, total) of the step running now; either may be None (unknown)
_source: Callable[[], tuple[int | None, int | None]] | None = None


def current() -> tuple[int | None, int | None]:
    """The step running now (0-based) and the number of steps; ``(None, None)`` when nothing sets them."""
    return (None, None) if _source is None else _source()


def set_step(step: int | None, total: int | None = None) -> None:
    """Say which denoising step runs next (0-based) of ``total``; ``set_step(None)`` forgets it. A fixed step
    replaces ``follow_steps``."""
    global _source
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"set_step: step must be an int >= 0 or None, got {step!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise ValueError(f"set_step: total must be an int >= 1 or None, got {total!r}")
    _source = None if step is None else (lambda: (step, total))


class follow_steps:
    """Follow a diffusers pipeline's denoising steps: each transformer call reads ``pipe.scheduler``'s
    ``step_index`` (None before the first ``scheduler.step``: step 0) and the number of its ``timesteps``.

    In effect from the call on (one pipeline at a time: a later ``follow_steps`` or ``set_step`` replaces
    it) until ``stop()`` or the end of its ``with`` block. The scheduler is read when the compiled
    graph runs, never traced: nothing is recompiled, and the pipeline's transformer may be swapped.
    """

    def __init__(self, pipe: Any) -> None:
        global _source
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "timesteps"):
            raise TypeError(f"follow_steps needs a diffusers pipeline with a scheduler, got {type(pipe).__name__}")
        self.pipe = pipe
        self._source = self._read
        _source = self._source

    def _read(self) -> tuple[int | None, int | None]:
        scheduler = self.pipe.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None:  # set_timesteps not called yet: no denoising loop is running
            return None, None
        step = getattr(scheduler, "step_index", None)
        return (0 if step is None else int(step)), len(timesteps)

    def stop(self) -> None:
        global _source
        if _source is self._source:
            _source = None

    def __enter__(self) -> follow_steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dense_step_count(dense_steps: int | float, total: int | None) -> int | None:
    """How many of the first steps run dense: ``dense_steps`` itself, or that fraction of ``total``
    rounded half up (None when ``total`` is unknown)."""
    if isinstance(dense_steps, int):
        return dense_steps
    return None if total is None else math.floor(dense_steps * total + 0.5)


def runs_dense(dense_steps: int | float) -> bool | None:
    """Whether the step running now is one of the dense ones; None when the step (or, for a fraction,
    the number of steps) is unknown."""
    step, total = current()
    count = dense_step_count(dense_steps, total)
    return None if step is None or count is None else step < count
