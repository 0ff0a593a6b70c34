"""Streaming validation of JSONL fine-tuning datasets (design.md §6).

Pure Python with no service imports: the same rules serve the upload path and local
checks. Feed bytes in any chunking; the verdict and its line-numbered messages do not
depend on how the bytes were split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_loads: Callable[[bytes], Any]
try:  # orjson parses several times faster; json is the fallback.
    import orjson

    _loads = orjson.loads
    _DecodeError: type[ValueError] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised where orjson is absent
    import json

    _loads = json.loads
    _DecodeError = json.JSONDecodeError

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"
ROLES = ("system", "user", "assistant")
_BOM = b"\xef\xbb\xbf"


@dataclass
class Report:
    format: str | None = None
    line_count: int = 0
    example_count: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self) -> str:
        if self.ok:
            return f"{self.example_count} {self.format} examples"
        shown = "; ".join(self.problems)
        more = self.problem_count - len(self.problems)
        tail = f" (and {more} more)" if more > 0 else ""
        noun = "problem" if self.problem_count == 1 else "problems"
        return f"{self.problem_count} {noun}: {shown}{tail}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean", int: "number", float: "number", str: "string",
        list: "array", dict: "object",
    }.get(type(value), type(value).__name__)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def detect_format(example: dict[str, Any]) -> str | None:
    if "messages" in example:
        return CHAT
    if "prompt" in example or "completion" in example:
        return PROMPT_COMPLETION
    if "text" in example:
        return TEXT
    return None


def check_example(example: dict[str, Any], fmt: str) -> list[str]:
    """Problems with one parsed example of a known format, as ``path: message``."""
    if fmt == CHAT:
        return _check_chat(example)
    if fmt == PROMPT_COMPLETION:
        return _check_prompt_completion(example)
    return _check_text(example)


def _chat_is_valid(messages: list[Any]) -> bool:
    """The common case, checked without building messages (hot path of every upload)."""
    assistant = False
    for message in messages:
        if type(message) is not dict or type(message.get("content")) is not str:
            return False
        role = message.get("role")
        if role == "assistant":
            assistant = True
            if "weight" in message and (message["weight"] not in (0, 1)
                                        or type(message["weight"]) is bool):
                return False
        elif role not in ("system", "user") or "weight" in message:
            return False
    return assistant


def _check_chat(example: dict[str, Any]) -> list[str]:
    messages = example["messages"]
    if type(messages) is list and _chat_is_valid(messages):
        return []
    if not isinstance(messages, list):
        return [f"messages must be an array, got {_type_name(messages)}"]
    if not messages:
        return ["messages must not be empty"]
    problems: list[str] = []
    assistant_turns = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object, got {_type_name(message)}")
            continue
        role = message.get("role")
        if role not in ROLES:
            if role is None:
                problems.append(f"{where}.role is missing")
            else:
                problems.append(f"{where}.role must be one of {', '.join(ROLES)}")
        elif role == "assistant":
            assistant_turns += 1
        content = message.get("content")
        if not isinstance(content, str):
            kind = "missing" if content is None else f"a {_type_name(content)}"
            problems.append(f"{where}.content must be a string, got {kind}")
        weight = message.get("weight")
        if "weight" in message:
            if role != "assistant":
                problems.append(f"{where}.weight is only allowed on assistant messages")
            elif weight not in (0, 1) or isinstance(weight, bool):
                problems.append(f"{where}.weight must be 0 or 1")
    if assistant_turns == 0 and not problems:
        problems.append("messages has no assistant turn to learn from")
    return problems


def _check_prompt_completion(example: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("prompt", "completion"):
        value = example.get(key)
        if key not in example:
            problems.append(f"{key} is missing")
        elif not isinstance(value, str):
            problems.append(f"{key} must be a string, got {_type_name(value)}")
    if not problems and not example["completion"]:
        problems.append("completion must not be empty")
    return problems


def _check_text(example: dict[str, Any]) -> list[str]:
    value = example["text"]
    if not isinstance(value, str):
        return [f"text must be a string, got {_type_name(value)}"]
    if not value:
        return ["text must not be empty"]
    return []


class DatasetValidator:
    """Validates a JSONL stream line by line, holding at most one line in memory."""

    def __init__(self, *, max_line_bytes: int, max_json_depth: int, max_problems: int = 20):
        self.max_line_bytes = max_line_bytes
        self.max_json_depth = max_json_depth
        self.max_problems = max_problems
        self.report = Report()
        self._pending = bytearray()
        self._skipping_long_line = False
        self._format_line = 0
        self._started = False
        self._seen_bytes = 0

    def problem(self, message: str, line: int | None = None) -> None:
        self.report.problem_count += 1
        if len(self.report.problems) < self.max_problems:
            self.report.problems.append(f"line {line}: {message}" if line else message)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._started:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        self._seen_bytes += len(chunk)
        if self._pending:
            chunk = bytes(self._pending) + chunk
            self._pending.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for line in lines:
            self._end_line(line)
        self._hold(tail)

    def _hold(self, tail: bytes) -> None:
        if self._skipping_long_line:
            return
        if len(tail) > self.max_line_bytes:
            self._skipping_long_line = True
            self.report.line_count += 1
            self.problem(
                f"line is longer than the limit of {self.max_line_bytes} bytes",
                self.report.line_count,
            )
            return
        self._pending += tail

    def _end_line(self, line: bytes) -> None:
        if self._skipping_long_line:  # the rest of a line already reported
            self._skipping_long_line = False
            return
        self.report.line_count += 1
        number = self.report.line_count
        if len(line) > self.max_line_bytes:
            self.problem(f"line is longer than the limit of {self.max_line_bytes} bytes", number)
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        self._check_line(line, number)

    def _check_line(self, line: bytes, number: int) -> None:
        try:
            value = _loads(line)
        except (_DecodeError, RecursionError) as exc:
            self.problem(self._json_problem(line, exc), number)
            return
        if not isinstance(value, dict):
            self.problem(f"expected a JSON object, got {_type_name(value)}", number)
            return
        if line.count(b"{") + line.count(b"[") > self.max_json_depth:
            depth = _depth(value)
            if depth > self.max_json_depth:
                self.problem(
                    f"JSON is nested {depth} levels deep; the limit is {self.max_json_depth}",
                    number,
                )
                return
        fmt = detect_format(value)
        if fmt is None:
            self.problem(
                "unknown example format: expected a 'messages', 'prompt'/'completion' "
                "or 'text' key",
                number,
            )
            return
        if self.report.format is None:
            self.report.format, self._format_line = fmt, number
        elif fmt != self.report.format:
            self.problem(
                f"{fmt} example in a {self.report.format} file (formats are detected from "
                f"line {self._format_line}; one file holds one format)",
                number,
            )
            return
        problems = check_example(value, fmt)
        for message in problems:
            self.problem(message, number)
        if not problems:
            self.report.example_count += 1

    @staticmethod
    def _json_problem(line: bytes, exc: Exception) -> str:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return f"not valid UTF-8 (byte {err.start + 1} of the line)"
        if isinstance(exc, RecursionError):
            return "JSON is nested too deeply"
        column = getattr(exc, "colno", None)
        reason = getattr(exc, "msg", str(exc))
        where = f" at column {column}" if column else ""
        return f"not valid JSON: {reason}{where}"

    def finish(self) -> Report:
        if self._pending:
            self._end_line(bytes(self._pending))
            self._pending.clear()
        self._skipping_long_line = False
        if self._seen_bytes == 0:
            self.problem("file is empty")
        elif self.report.problem_count == 0 and self.report.example_count == 0:
            self.problem("file contains no examples")
        return self.report


def validate_bytes(data: bytes, **limits: int) -> Report:
    validator = DatasetValidator(**limits)
    validator.feed(data)
    return validator.finish()
