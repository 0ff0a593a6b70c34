"""Dataset validation lives in the SDK package (``loramill.datasets``), so a CI pipeline's
local check and the server give the same verdict with the same messages: one
implementation, never two copies of the rules."""

from loramill.datasets.validation import (
    CHAT,
    PROMPT_COMPLETION,
    TEXT,
    DatasetValidator,
    Report,
    check_example,
    detect_format,
    validate_bytes,
)

__all__ = ["CHAT", "PROMPT_COMPLETION", "TEXT", "DatasetValidator", "Report",
           "check_example", "detect_format", "validate_bytes"]
