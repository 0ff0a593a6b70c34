"""The dataset grammar: the issue's findings (an accepted line the trainer then choked on
or misread), OpenAI's chat format in full, and the normalised form the trainer reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from loramill.datasets import grammar
from loramill.datasets.grammar import Completion, Conversation, LineError, Plain, Preference
from loramill.datasets.validation import validate_bytes

LIMITS = {"max_line_bytes": 1 << 20, "max_json_depth": 32}
USER = {"role": "user", "content": "What is the weather in Paris?"}
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [{
    "id": "call_1", "type": "function",
    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
FINAL = {"role": "assistant", "content": "It is 21 degrees in Paris."}


def problems(*rows: object) -> list[str]:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    found: list[str] = validate_bytes(data, **LIMITS).problems
    return found


def ok(row: object) -> grammar.Example:
    report = validate_bytes(json.dumps(row).encode(), **LIMITS)
    assert report.ok, report.problems
    return grammar.parse(json.dumps(row).encode())[1]


# ----- the findings: lines the upload used to accept and training then failed on -------

@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "hi"}],                       # assistant only
    [{"role": "assistant", "content": "hi"}, USER, FINAL],          # assistant first
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}, USER],
])
def test_an_assistant_message_before_any_user_message_is_refused(messages: list[Any]) -> None:
    assert problems({"messages": messages}) == [
        f"line 1: messages[{next(i for i, m in enumerate(messages) if m['role'] == 'assistant')}]"
        " is an assistant message with no user message before it: a conversation starts "
        "with a user message (after any system message)"]


@pytest.mark.parametrize("extra", [{"text": "ZZZZ"}, {"text": None}, {"messages": []}])
def test_a_line_with_keys_of_two_formats_is_refused(extra: dict[str, Any]) -> None:
    found = problems({"prompt": "2+2=", "completion": "4", **extra})
    assert len(found) == 1
    assert found[0].startswith("line 1: ")
    assert "mixes formats" in found[0] or "must be a string, got null" in found[0], found


def test_mixed_format_message_names_the_keys() -> None:
    assert problems({"prompt": "a", "completion": "b", "text": "c"}) == [
        "line 1: the line mixes formats ('prompt'/'completion' and 'text'): a line holds "
        "one example in one format"]


def test_every_assistant_turn_with_weight_0_is_refused_by_line() -> None:
    line = {"messages": [USER, {**FINAL, "weight": 0}]}
    assert problems({"messages": [USER, FINAL]}, line) == [
        "line 2: messages has no assistant turn to learn from: every assistant message has "
        "weight 0"]


def test_an_empty_assistant_message_to_learn_from_is_refused() -> None:
    assert problems({"messages": [USER, {"role": "assistant", "content": ""}]}) == [
        "line 1: messages[1] has nothing to learn from: an assistant message needs content "
        "or tool_calls (or weight 0)"]


# ----- OpenAI's chat format in full -------------------------------------------------

def test_tool_calling_is_accepted_and_normalised_for_chat_templates() -> None:
    example = ok({"messages": [USER, CALL, ANSWER, FINAL], "tools": TOOLS,
                  "parallel_tool_calls": False})
    assert isinstance(example, Conversation)
    assert example.tools == TOOLS
    assert example.train == [False, True, False, True]
    call = example.messages[1]
    assert call["content"] is None
    assert call["tool_calls"][0]["function"] == {"name": "get_weather",
                                                 "arguments": {"city": "Paris"}}
    assert example.messages[2] == {"role": "tool", "content": "{\"temp\": 21}",
                                   "tool_call_id": "call_1"}


def test_legacy_functions_become_tools() -> None:
    example = ok({"functions": [TOOLS[0]["function"]], "messages": [
        USER, {"role": "assistant", "function_call": CALL["tool_calls"][0]["function"]},
        {"role": "function", "name": "get_weather", "content": "21"}, FINAL]})
    assert isinstance(example, Conversation)
    assert example.tools == TOOLS
    assert example.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert example.messages[2]["role"] == "tool"


def test_the_developer_role_is_the_system_role() -> None:
    example = ok({"messages": [{"role": "developer", "content": "Be brief."}, USER, FINAL]})
    assert isinstance(example, Conversation)
    assert example.messages[0] == {"role": "system", "content": "Be brief."}


def test_content_as_text_parts_is_joined() -> None:
    example = ok({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                     {"type": "text", "text": "world"}]}, FINAL]})
    assert isinstance(example, Conversation)
    assert example.messages[0]["content"] == "Hello, world"


@pytest.mark.parametrize(("messages", "extra", "expected"), [
    ([{"role": "user", "content": None}, FINAL], {},
     "messages[0].content must be a string or an array of text parts, got null"),
    ([{"role": "user"}, FINAL], {}, "messages[0].content is missing"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, FINAL],
     {}, "messages[0].content[0].type must be 'text', got 'image_url' (content parts other "
     "than text are not supported for fine-tuning)"),
    ([USER, {**CALL, "tool_calls": [{**CALL["tool_calls"][0],
                                     "function": {"name": "f", "arguments": "[1]"}}]}, FINAL],
     {}, "messages[1].tool_calls[0].function.arguments must be a JSON object encoded as a "
     "string"),
    ([USER, CALL, {**ANSWER, "tool_call_id": "call_9"}, FINAL], {},
     "messages[2].tool_call_id 'call_9' answers no tool call of an earlier assistant message"),
    ([USER, CALL, {"role": "tool", "content": "21"}, FINAL], {},
     "messages[2].tool_call_id is missing: a tool message answers a tool call by its id"),
    ([USER, {**CALL, "tool_calls": [CALL["tool_calls"][0],
                                    {**CALL["tool_calls"][0], "id": "call_2"}]}, FINAL],
     {"parallel_tool_calls": False},
     "messages[1] makes 2 tool calls but parallel_tool_calls is false"),
    ([{**USER, "weight": 1}, FINAL], {}, "messages[0].weight is only allowed on assistant "
     "messages"),
    ([USER, {**FINAL, "weight": True}], {}, "messages[1].weight must be 0 or 1, got a boolean"),
    ([{"role": "user", "content": [{"type": 1, "text": "x"}]}, FINAL], {},
     "messages[0].content[0].type must be 'text', got an integer"),
    ([{"role": "robot", "content": "x"}, FINAL], {},
     "messages[0].role must be one of system, developer, user, assistant, tool, function, "
     "got 'robot'"),
    ([USER, FINAL], {"tools": TOOLS, "functions": [TOOLS[0]["function"]]},
     "tools and functions are both given: use tools (functions is its older form)"),
])
def test_unsupported_or_broken_chat_lines_say_what_and_where(
        messages: list[Any], extra: dict[str, Any], expected: str) -> None:
    assert problems({"messages": messages, **extra}) == [f"line 1: {expected}"]


# ----- preference (DPO) ---------------------------------------------------------------

PREFERENCE = {"input": {"messages": [USER]},
              "preferred_output": [FINAL],
              "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}


def test_the_preference_format_is_accepted_and_normalised() -> None:
    example = ok(PREFERENCE)
    assert isinstance(example, Preference)
    assert example.prompt.messages == [USER]
    assert example.preferred == {**FINAL}
    assert example.non_preferred["content"] == "No idea."
    report = validate_bytes(json.dumps(PREFERENCE).encode(), **LIMITS)
    assert report.format == "preference"


@pytest.mark.parametrize(("row", "expected"), [
    ({**PREFERENCE, "non_preferred_output": PREFERENCE["preferred_output"]},
     "preferred_output and non_preferred_output are the same: there is no preference to "
     "learn"),
    ({**PREFERENCE, "preferred_output": [FINAL, FINAL]},
     "preferred_output must be an array of exactly one assistant message"),
    ({**PREFERENCE, "input": {"messages": [USER, FINAL]}},
     "input.messages ends with an assistant message: the outputs are the assistant's "
     "answer to it"),
    ({k: v for k, v in PREFERENCE.items() if k != "input"}, "input is missing"),
])
def test_broken_preference_lines_say_what(row: dict[str, Any], expected: str) -> None:
    assert problems(row) == [f"line 1: {expected}"]


def test_completion_and_text_normalise() -> None:
    assert ok({"prompt": "2+2=", "completion": "4"}) == Completion("2+2=", "4")
    assert ok({"text": "plain"}) == Plain("plain")


def test_parse_refuses_what_the_validator_refuses() -> None:
    with pytest.raises(LineError) as caught:
        grammar.parse(b'{"prompt": "a", "completion": "b", "text": "ZZZZ"}')
    assert "mixes formats" in str(caught.value)


# ----- bytes the SDK's json fallback used to crash on -----------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b'{"text": "\xff"}\n', "line 1: not valid UTF-8 (byte 11 of the line)"),
    ('{"text": "x"}\n'.encode("utf-16"),
     "the file is UTF-16 encoded; a dataset must be UTF-8 (save it again as UTF-8)"),
    (b'{"text": ' + b"9" * 4400 + b"}\n",
     "line 1: text: number out of range (integers must fit in 64 bits, numbers in a double)"),
    (b'{"text": NaN}\n', "line 1: not valid JSON: invalid character at byte 10"),
    (b'{"text": "\\ud800 lone"}\n',
     "line 1: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
     "pair): not valid Unicode"),
])
def test_hostile_bytes_get_a_message_not_a_crash(data: bytes, expected: str) -> None:
    assert validate_bytes(data, **LIMITS).problems == [expected]


def test_a_surrogate_pair_is_fine() -> None:
    assert ok({"text": "\U0001F600"}) == Plain("\U0001F600")
    report = validate_bytes(b'{"text": "\\ud83d\\ude00"}', **LIMITS)
    assert report.ok, report.problems
