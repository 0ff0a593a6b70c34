"""Local dataset checks with the server's own code (:mod:`loramill.datasets.grammar`).

``validate(path, limits)`` gives the verdict and the messages the server's upload gives,
with the limits the server reports (``client.files.limits()``); without them, every rule
but the size limits is checked.
"""

from __future__ import annotations

from pathlib import Path

from loramill.datasets.grammar import (
    CHAT,
    FORMATS,
    PREFERENCE,
    PROMPT_COMPLETION,
    TEXT,
    LineError,
    parse,
)
from loramill.datasets.validation import DatasetValidator, Report
from loramill.types import DatasetLimits

_UNLIMITED = DatasetLimits(max_file_bytes=2**63 - 1, max_line_bytes=2**63 - 1,
                           max_json_depth=10_000)


def validate(path: str | Path, limits: DatasetLimits | None = None, *,
             max_problems: int = 20) -> Report:
    """Check a JSONL file the way the server will, reading it in 1 MiB chunks."""
    limits = limits or _UNLIMITED
    path = Path(path)
    size = path.stat().st_size
    validator = DatasetValidator(max_line_bytes=limits.max_line_bytes,
                                 max_json_depth=limits.max_json_depth,
                                 max_problems=max_problems)
    if size > limits.max_file_bytes:
        validator.problem(f"the file is {size} bytes; the server takes at most "
                          f"{limits.max_file_bytes}")
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            validator.feed(chunk)
    return validator.finish()


__all__ = ["CHAT", "FORMATS", "PREFERENCE", "PROMPT_COMPLETION", "TEXT", "DatasetLimits",
           "DatasetValidator", "LineError", "Report", "parse", "validate"]
