"""Local dataset checks with the server's own rules."""

from __future__ import annotations

from pathlib import Path

from loramill.datasets.validation import DatasetValidator, Report

# The server's defaults (LORAMILL_MAX_LINE_BYTES, LORAMILL_MAX_JSON_DEPTH).
MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32


def validate(path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES,
             max_json_depth: int = MAX_JSON_DEPTH, max_problems: int = 20) -> Report:
    """Check a JSONL file the way the server will, reading it in 1 MiB chunks."""
    validator = DatasetValidator(max_line_bytes=max_line_bytes, max_json_depth=max_json_depth,
                                 max_problems=max_problems)
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            validator.feed(chunk)
    return validator.finish()


__all__ = ["Report", "validate"]
