"""A process's clean exit, for the local stack's status (devstack/): a process the stack
started (``LORAMILL_STACK_PIECE`` names it) writes its pid to ``run/<piece>.exit`` when it
stops cleanly, so a SIGTERM is told from a crash. Elsewhere (compose, Kubernetes) nothing
is written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PIECE_VARIABLE = "LORAMILL_STACK_PIECE"


def exit_marker(home: Path, piece: str) -> Path:
    return home / "run" / f"{piece}.exit"


def mark_clean_exit() -> None:
    piece = os.environ.get(PIECE_VARIABLE)
    if piece:
        home = Path(os.environ.get("LORAMILL_HOME", ".loramill"))
        with contextlib.suppress(OSError):
            exit_marker(home, piece).write_text(str(os.getpid()))
