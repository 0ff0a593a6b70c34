"""Dataset validation lives in the SDK package (``loramill.datasets``), so a CI pipeline's
local check and the server give the same verdict with the same messages: one
implementation, never two copies of the rules."""

from loramill.datasets.grammar import CHAT, FORMATS, PREFERENCE, PROMPT_COMPLETION, TEXT
from loramill.datasets.validation import DatasetValidator, Report, validate_bytes

__all__ = ["CHAT", "FORMATS", "PREFERENCE", "PROMPT_COMPLETION", "TEXT", "DatasetValidator",
           "Report", "validate_bytes"]
