"""Which code produced a result: every results file is stamped with it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent


def source_commit() -> str:
    """``LYNX_COMMIT`` if set (a copy of the tree without its git history, as on a rented GPU, gets it from the
    script that sent it), else git HEAD of this checkout, ``-dirty`` with local changes; ``unknown`` outside git."""
    if os.environ.get("LYNX_COMMIT"):
        return os.environ["LYNX_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_CHECKOUT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
