"""Dataset validation rules: the verdict and the line-numbered message for each bad input."""

from __future__ import annotations

import json

import pytest

from core.files.validation import DatasetValidator, validate_bytes

LIMITS = {"max_line_bytes": 400, "max_json_depth": 8, "max_problems": 20}

CHAT_OK = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}]}


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def check(data: bytes) -> list[str]:
    problems: list[str] = validate_bytes(data, **LIMITS).problems
    return problems


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "file is empty"),
    (b"\n \n", "file contains no examples"),
    (jsonl(CHAT_OK) + b"\xff\xfe{}\n", "line 2: not valid UTF-8"),
    (jsonl(CHAT_OK) + b'{"text": "x"\n', "line 2: not valid JSON"),
    (jsonl(CHAT_OK, [1, 2]), "line 2: expected a JSON object, got an array"),
    (jsonl(CHAT_OK, "just a string"), "line 2: expected a JSON object, got a string"),
    (jsonl(CHAT_OK, {"prompt": "a", "completion": "b"}),
     "line 2: prompt_completion example in a chat file"),
    (jsonl({"messages": [{"role": "user", "content": "hi"}]}),
     "line 1: messages has no assistant turn"),
    (jsonl({"messages": [{"role": "robot", "content": "x"},
                         {"role": "assistant", "content": "y"}]}),
     "line 1: messages[0].role must be one of system, developer, user, assistant"),
    (jsonl({"messages": [{"role": "user", "content": 5},
                         {"role": "assistant", "content": "y"}]}),
     "line 1: messages[0].content must be a string or an array of text parts, got an "
     "integer"),
    (jsonl({"messages": "hello"}), "line 1: messages must be an array, got a string"),
    (jsonl({"messages": [{"role": "user", "content": "x"},
                         {"role": "assistant", "content": "y", "weight": 2}]}),
     "line 1: messages[1].weight must be 0 or 1"),
    (jsonl({"prompt": "a", "completion": 3}),
     "line 1: completion must be a string, got an integer"),
    (jsonl({"prompt": "a"}), "line 1: completion is missing"),
    (jsonl({"text": None}), "line 1: text must be a string, got null"),
    (jsonl({"foo": "bar"}), "line 1: unknown key 'foo': a line holds messages"),
    (jsonl(CHAT_OK) + b'{"text": "' + b"a" * 500 + b'"}\n',
     "line 2: line is longer than the limit of 400 bytes"),
    (jsonl({**CHAT_OK, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"a": [[[[{"b": 1}]]]]}}}]}),
     "line 1: JSON is nested 10 levels deep; the limit is 8"),
])
def test_bad_input_is_named_by_line(data: bytes, expected: str) -> None:
    problems = check(data)
    assert problems, "expected a problem"
    assert problems[0].startswith(expected), problems


@pytest.mark.parametrize("rows", [
    [CHAT_OK, CHAT_OK],
    [{"prompt": "2+2=", "completion": "4"}],
    [{"text": "plain text"}],
    [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "weight": 0},
                   {"role": "user", "content": "q2"},
                   {"role": "assistant", "content": "a2", "weight": 1}]}],
])
def test_valid_formats_are_accepted(rows: list[object]) -> None:
    report = validate_bytes(jsonl(*rows), **LIMITS)
    assert report.ok, report.problems
    assert report.example_count == len(rows)


def test_counts_and_format_with_crlf_bom_and_blank_lines() -> None:
    data = b"\xef\xbb\xbf" + jsonl(CHAT_OK).replace(b"\n", b"\r\n") + b"\n" + jsonl(CHAT_OK)
    report = validate_bytes(data, **LIMITS)
    assert report.ok, report.problems
    assert (report.format, report.example_count, report.line_count) == ("chat", 2, 3)


def test_verdict_does_not_depend_on_chunking() -> None:
    data = (jsonl(CHAT_OK) * 3 + b"not json\n" + jsonl({"text": "x"})
            + b'{"text": "' + b"b" * 700 + b'"}\n' + jsonl(CHAT_OK))
    whole = validate_bytes(data, **LIMITS)
    for size in (1, 2, 7, 64, 399, 400, 401, 4096):
        validator = DatasetValidator(**LIMITS)
        for i in range(0, len(data), size):
            validator.feed(data[i : i + size])
        report = validator.finish()
        assert report.problems == whole.problems, size
        assert (report.line_count, report.example_count) == (whole.line_count,
                                                             whole.example_count)
    assert [p.split(":")[0] for p in whole.problems] == ["line 4", "line 5", "line 6"]


def test_reports_at_most_the_first_n_problems_and_counts_the_rest() -> None:
    data = b"oops\n" * 30
    report = validate_bytes(data, max_line_bytes=200, max_json_depth=8, max_problems=20)
    assert len(report.problems) == 20 and report.problem_count == 30
    assert report.problems[19].startswith("line 20:")
    assert "(and 10 more)" in report.summary()


def test_nesting_too_deep_for_the_decoder_is_a_problem_not_a_crash() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    line = (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
            b'"content": "a"}], "tools": [{"type": "function", "function": {"name": "f", '
            b'"parameters": {"a": ' + deep + b"}}}]}\n")
    report = validate_bytes(line, max_line_bytes=1 << 20, max_json_depth=32)
    assert report.problems == ["line 1: JSON is nested more than 32 levels deep"]
