"""Streaming validation of JSONL fine-tuning datasets (design.md §6).

Splits a byte stream into lines and checks each with the grammar
(:mod:`loramill.datasets.grammar`). Pure Python plus msgspec, no service imports: the
server's upload and the SDK's local check run this same code. Feed bytes in any chunking;
the verdict and its line-numbered messages do not depend on how the bytes were split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET

from loramill.datasets import grammar
from loramill.datasets.grammar import CHAT, PREFERENCE, PROMPT_COMPLETION, TEXT, Line

__all__ = ["CHAT", "PREFERENCE", "PROMPT_COMPLETION", "TEXT", "DatasetValidator", "Report",
           "validate_bytes"]

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass
class Report:
    format: str | None = None
    line_count: int = 0
    example_count: int = 0
    tool_examples: int = 0  # examples whose rendering needs a template that knows tools
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


def _parameters(line: Line) -> list[Any]:
    tools = line.tools if line.tools is not UNSET else (
        line.input.tools if line.input is not UNSET else UNSET)
    if tools is not UNSET:
        return [t.function.parameters for t in tools if t.function.parameters is not UNSET]
    if line.functions is not UNSET:
        return [f.parameters for f in line.functions if f.parameters is not UNSET]
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
        self._head: bytearray | None = bytearray()
        self._refused = False  # the whole file is refused (UTF-16): lines are not read
        self._seen_bytes = 0

    def problem(self, message: str, line: int | None = None) -> None:
        self.report.problem_count += 1
        if len(self.report.problems) < self.max_problems:
            self.report.problems.append(f"line {line}: {message}" if line else message)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._seen_bytes += len(chunk)
        if self._head is not None:  # the first bytes, held until a BOM can be told
            self._head += chunk
            if len(self._head) < 3:
                return
            chunk = self._start()
        if self._refused:
            return
        if self._pending:
            chunk = bytes(self._pending) + chunk
            self._pending.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if (self._skipping_long_line or self.report.format is None
                or len(chunk) > self.max_line_bytes):
            for line in lines:
                self._end_line(line)
        else:
            self._plain_lines(lines)
        self._hold(tail)

    def _plain_lines(self, lines: list[bytes]) -> None:
        """The hot path: lines within the length limit, in a file whose format is known.
        A plainly valid line costs one typed decode and :func:`grammar.quick`; any other
        line (blank, invalid, with tools, of another format) takes :meth:`_end_line`,
        which gives the same verdict the long way."""
        decode, quick, report = grammar.decode_fast, grammar.quick, self.report
        fmt = report.format
        for line in lines:
            try:
                plain = quick(decode(line)) == fmt
            except (msgspec.MsgspecError, RecursionError):
                plain = False
            if plain:
                report.line_count += 1
                report.example_count += 1
            else:
                self._end_line(line)

    def _start(self) -> bytes:
        assert self._head is not None
        chunk, self._head = bytes(self._head), None
        if chunk.startswith(_UTF16_BOMS):
            self._refused = True
            self.problem("the file is UTF-16 encoded; a dataset must be UTF-8 "
                         "(save it again as UTF-8)")
        return chunk[len(_BOM):] if chunk.startswith(_BOM) else chunk

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

    def _check_line(self, raw: bytes, number: int) -> None:
        try:
            line = grammar.decode(raw)
        except grammar.LineError as exc:
            for message in exc.problems:
                self.problem(message, number)
            return
        except RecursionError:
            self.problem(f"JSON is nested more than {self.max_json_depth} levels deep",
                         number)
            return
        fmt = grammar.quick(line)
        if fmt is None:
            for parameters in _parameters(line):
                depth = _depth(parameters) + 4  # line, tools[], tool, function
                if depth > self.max_json_depth:
                    self.problem(f"JSON is nested {depth} levels deep; the limit is "
                                 f"{self.max_json_depth}", number)
                    return
            fmt, problems = grammar.check(line)
            if problems:
                for message in problems:
                    self.problem(message, number)
                return
            tools = grammar.uses_tools(line)
        else:
            tools = False
        assert fmt is not None
        if self.report.format is None:
            self.report.format, self._format_line = fmt, number
        elif fmt != self.report.format:
            self.problem(
                f"{fmt} example in a {self.report.format} file (formats are detected from "
                f"line {self._format_line}; one file holds one format)",
                number,
            )
            return
        self.report.example_count += 1
        self.report.tool_examples += tools

    def finish(self) -> Report:
        if self._head:  # a file of fewer than 3 bytes
            self._pending += self._start()
        if self._pending and not self._refused:
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
