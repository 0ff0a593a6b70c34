"""The dataset contract, as a property (Hypothesis): for lines and files generated in
every supported format (and broken in every way we could think of),

- accepted ⇒ the trainer reads the line through the same grammar and its encoder gives at
  least one trainable token under the real tiny model's chat template (tools included);
- refused ⇒ every message names the line ("line N: ") and says the rule, and a file's
  verdict is the verdict of its lines;
- no input crashes the validator.

Runs derandomized in the suite (the same examples every run); set
``HYPOTHESIS_PROFILE=long`` for a longer, random search.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loramill.datasets import grammar
from loramill.datasets.validation import DatasetValidator, validate_bytes

from tests.conftest import ROOT
from worker.training import data, tinymodel
from worker.training.model import load_tokenizer

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
LIMITS = {"max_line_bytes": 1 << 20, "max_json_depth": 32, "max_problems": 50}
MISSING = object()

settings.register_profile("suite", max_examples=250, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    tinymodel.ensure(MODEL_DIR)
    return load_tokenizer(MODEL_DIR)


text = st.one_of(st.just(""), st.text(max_size=12),
                 st.sampled_from(["Paris", " ", "\n", "<|end|>", "{}", "é中🙂"]))
wrong = st.one_of(st.none(), st.integers(-2, 3), st.booleans(), st.floats(allow_nan=False),
                  st.lists(st.integers(), max_size=2), st.dictionaries(text, text, max_size=1))
content = st.one_of(
    text, text, st.none(), wrong,
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "text", "image_url"]),
                                    "text": text}), max_size=3),
)
arguments = st.sampled_from(['{"city": "Paris"}', "{}", "[1]", "not json", '"x"'])
call = st.fixed_dictionaries({
    "id": st.sampled_from(["c1", "c2", ""]), "type": st.sampled_from(["function", "function",
                                                                      "other"]),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["weather", ""]),
                                       "arguments": arguments})})


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), strategy)


def drop_missing(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not MISSING}


message = st.builds(drop_missing, st.fixed_dictionaries({
    "role": st.sampled_from(["user", "user", "assistant", "assistant", "system", "developer",
                             "tool", "function", "robot"]),
    "content": maybe(content),
    "weight": maybe(st.sampled_from([0, 1, 1, 2, True])),
    "tool_calls": maybe(st.lists(call, max_size=2)),
    "tool_call_id": maybe(st.sampled_from(["c1", "c2", "c9"])),
    "name": maybe(st.sampled_from(["weather"])),
}))
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.builds(
    drop_missing, st.fixed_dictionaries({
        "name": st.sampled_from(["weather", "clock"]),
        "description": maybe(text),
        "parameters": maybe(st.just({"type": "object", "properties": {"city": {
            "type": "string"}}})),
    }))})
chat = st.builds(drop_missing, st.fixed_dictionaries({
    "messages": st.one_of(st.lists(message, max_size=5), wrong),
    "tools": maybe(st.lists(tool, max_size=2)),
    "parallel_tool_calls": maybe(st.booleans()),
}))
# a well-formed conversation, so accepted lines are common, then maybe broken
good_chat = st.builds(
    lambda system, turns, extra: {"messages": system + [
        m for q, a, w in turns for m in (
            {"role": "user", "content": q},
            {"role": "assistant", "content": a, **({"weight": w} if w is not None else {})})],
        **extra},
    st.lists(st.fixed_dictionaries({"role": st.just("system"), "content": text}), max_size=1),
    st.lists(st.tuples(text, text, st.sampled_from([None, 0, 1])), min_size=1, max_size=3),
    st.one_of(st.just({}), st.fixed_dictionaries({"tools": st.lists(tool, max_size=2)})),
)
completion = st.builds(drop_missing, st.fixed_dictionaries({
    "prompt": maybe(st.one_of(text, wrong)), "completion": maybe(st.one_of(text, text, wrong)),
    "text": st.one_of(st.just(MISSING), st.just(MISSING), text),
}))
plain = st.builds(drop_missing, st.fixed_dictionaries({
    "text": st.one_of(text, wrong), "extra": st.one_of(st.just(MISSING), st.just(MISSING),
                                                        text)}))
answer = st.fixed_dictionaries({"role": st.sampled_from(["assistant", "assistant", "user"]),
                                "content": st.one_of(text, st.none())})
preference = st.builds(drop_missing, st.fixed_dictionaries({
    "input": maybe(st.builds(drop_missing, st.fixed_dictionaries({
        "messages": st.lists(message, max_size=3), "tools": maybe(st.lists(tool, max_size=1)),
    }))),
    "preferred_output": maybe(st.lists(answer, min_size=1, max_size=2)),
    "non_preferred_output": maybe(st.lists(answer, min_size=1, max_size=2)),
}))
good_preference = st.builds(
    lambda q, a, b: {"input": {"messages": [{"role": "user", "content": q}]},
                     "preferred_output": [{"role": "assistant", "content": a}],
                     "non_preferred_output": [{"role": "assistant", "content": b}]},
    text, text, text)


def not_a_file_start(raw: bytes) -> bool:
    """A line of its own: no newline, and no byte-order mark (those mean something only at
    a file's start, where unit tests check them)."""
    return b"\n" not in raw and not raw.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf"))


line_value = st.one_of(chat, good_chat, good_chat, completion, plain, preference,
                       good_preference, wrong, text)
line_bytes = st.one_of(line_value.map(lambda v: json.dumps(v).encode()),
                       line_value.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
                       st.binary(max_size=40).filter(not_a_file_start))
WHOLE_FILE = ("file contains no examples", "file is empty")

RULE = re.compile(r"^line (\d+): \S.{8,}")


def trainable(tok: Any, example: grammar.Example) -> int:
    if isinstance(example, grammar.Preference):
        pair, _ = data.encode_pair(tok, example, 1 << 20)
        return min(pair.chosen.trainable, pair.rejected.trainable)
    encoded, _ = data.encode(tok, example, 1 << 20)
    return encoded.trainable


@given(raw=line_bytes)
def test_an_accepted_line_trains_and_a_refused_one_says_where_and_why(tok: Any,
                                                                     raw: bytes) -> None:
    report = validate_bytes(raw, **LIMITS)
    if report.ok:
        fmt, example = grammar.parse(raw)
        assert report.format == fmt and report.example_count == 1
        assert trainable(tok, example) > 0, raw
        return
    assert report.problems
    for problem in report.problems:
        if problem in WHOLE_FILE:  # a blank line alone
            assert not raw.strip()
            continue
        match = RULE.match(problem)
        assert match and match[1] == "1", problem
    with pytest.raises(grammar.LineError):
        if raw.strip():
            grammar.parse(raw)
        else:
            raise grammar.LineError(["blank"])


@given(value=line_value)
def test_the_fast_path_never_accepts_what_the_full_check_refuses(value: Any) -> None:
    try:
        line = grammar.decode(json.dumps(value).encode())
    except grammar.LineError:
        return
    fast = grammar.quick(line)
    if fast is not None:
        assert grammar.check(line) == (fast, [])


@given(lines=st.lists(line_bytes, min_size=1, max_size=5))
def test_a_file_is_the_verdict_of_its_lines(lines: list[bytes]) -> None:
    whole = validate_bytes(b"\n".join(lines) + b"\n", **LIMITS)
    formats, problems = [], []
    for number, raw in enumerate(lines, start=1):
        alone = validate_bytes(raw, **LIMITS)
        if alone.ok:
            formats.append((number, alone.format))
        problems += [re.sub(r"^line 1:", f"line {number}:", p) for p in alone.problems
                     if p not in WHOLE_FILE]
    first = formats[0][1] if formats else None
    problems += [f"line {n}: {fmt} example in a {first} file" for n, fmt in formats
                 if fmt != first]
    problems.sort(key=lambda p: int(p.split(":")[0].split()[1]))
    shown = [p if "example in a" not in p else p.split(" (formats")[0]
             for p in whole.problems if p not in WHOLE_FILE]
    assert shown == problems
    assert whole.example_count == sum(1 for _, fmt in formats if fmt == first)
    assert whole.ok == (not problems and bool(formats))


@given(lines=st.lists(line_bytes, min_size=1, max_size=8), size=st.integers(1, 400),
       limit=st.sampled_from([64, 300, 1 << 20]))
def test_the_verdict_does_not_depend_on_how_the_bytes_arrive(lines: list[bytes], size: int,
                                                              limit: int) -> None:
    """Chunks of any size (the hot path takes whole chunks of short lines, the long way
    takes the rest) give the verdict of the whole file read at once, line by line."""
    data = b"\n".join(lines) + b"\n"
    limits = {**LIMITS, "max_line_bytes": limit}
    whole = DatasetValidator(**limits)
    for line in data.split(b"\n")[:-1]:  # the long way only: one line a feed
        whole.feed(line + b"\n")
    expected = whole.finish()
    chunked = DatasetValidator(**limits)
    for i in range(0, len(data), size):
        chunked.feed(data[i : i + size])
    got = chunked.finish()
    assert (got.problems, got.problem_count, got.format, got.line_count, got.example_count,
            got.tool_examples) == (expected.problems, expected.problem_count,
                                   expected.format, expected.line_count,
                                   expected.example_count, expected.tool_examples)
