"""The grammar of one dataset line (design.md §6): the only definition of what a line may
hold, used by the upload validator, the SDK's local check and the trainer's reader.

A line is decoded by msgspec straight into the typed structs below (shape and types are
checked in C, at close to I/O speed); :func:`check` adds the rules a type cannot say (an
assistant turn to learn from, tool calls answered by id, ...) and :func:`normalise` turns
an accepted line into the one form the trainer reads (:class:`Conversation`,
:class:`Completion`, :class:`Plain`, :class:`Preference`). The trainer never looks at the
raw JSON: a line the upload accepted is read exactly the way the upload read it.

Every accepted line has at least one token to learn from under any chat template: a chat
line has an assistant message with ``weight`` 1 and content or tool calls, after a user
message; a completion and a text are not empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"
PREFERENCE = "preference"
FORMATS = (CHAT, PROMPT_COMPLETION, TEXT, PREFERENCE)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# ----- the shapes ----------------------------------------------------------------------


class _Strict(Struct, forbid_unknown_fields=True, gc=False):
    pass


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # a JSON object, encoded as a string (OpenAI's wire format)


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | UnsetType | None = UNSET
    name: str | UnsetType = UNSET
    weight: Literal[0, 1] | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    refusal: str | UnsetType | None = UNSET


class FunctionDef(_Strict):
    name: str
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class PreferenceInput(_Strict):
    messages: list[Message]
    tools: list[Tool] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET


class Line(_Strict):
    """Every key a line may have; which ones are present says the format."""

    messages: list[Message] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    functions: list[FunctionDef] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    prompt: str | UnsetType = UNSET
    completion: str | UnsetType = UNSET
    text: str | UnsetType = UNSET
    input: PreferenceInput | UnsetType = UNSET
    preferred_output: list[Message] | UnsetType = UNSET
    non_preferred_output: list[Message] | UnsetType = UNSET


KEYS = {
    CHAT: ("messages", "tools", "functions", "parallel_tool_calls"),
    PROMPT_COMPLETION: ("prompt", "completion"),
    TEXT: ("text",),
    PREFERENCE: ("input", "preferred_output", "non_preferred_output"),
}
_FORMAT_OF_KEY = {key: fmt for fmt, keys in KEYS.items() for key in keys}
_KEYS_HELP = ("messages (with tools, functions, parallel_tool_calls); prompt and completion; "
              "text; or input, preferred_output and non_preferred_output")

_decoder = msgspec.json.Decoder(Line)
decode_fast = _decoder.decode  # raises msgspec's errors; decode() words them


class LineError(ValueError):
    """A line the grammar refuses; ``problems`` are ``path: rule`` texts, no line number."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# ----- decoding ------------------------------------------------------------------------


def decode(raw: bytes) -> Line:
    """The typed line, or :class:`LineError` saying what is wrong and where."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise LineError([_validation_message(str(exc))]) from None
    except msgspec.DecodeError as exc:
        raise LineError([_decode_message(raw, str(exc))]) from None


_ARTICLE = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
    "array": "an array", "object": "an object", "null": "null",
}
_CHOICES = {
    "role": "one of " + ", ".join(ROLES),
    "weight": "0 or 1",
    "type": "'function'",
}


def _where(path: str) -> str:
    return path[2:] if path.startswith("$.") else path.lstrip("$")


def _validation_message(text: str) -> str:
    message, _, at = text.partition(" - at `")
    where = _where(at.rstrip("`")) if at else ""
    if m := re.fullmatch(r"Expected `(.+)`, got `(.+)`", message):
        wanted = " or ".join(_ARTICLE.get(t, t) for t in m[1].split(" | "))
        got = _ARTICLE.get(m[2], m[2])
        if not where:
            return f"expected a JSON object, got {got}"
        field = re.split(r"[.\]]", where)[-1]
        if where.endswith(".content") and "array" in m[1]:
            wanted = "a string or an array of text parts"
        elif field == "type" and ".content[" in where:
            wanted = "'text'"
        elif field in _CHOICES:
            wanted = _CHOICES[field]
        return f"{where} must be {wanted}, got {got}"
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", message):
        if not where:
            return f"unknown key '{m[1]}': a line holds {_KEYS_HELP}"
        return f"{where} has an unknown key '{m[1]}'"
    if m := re.fullmatch(r"Object missing required field `(.+)`", message):
        return f"{where + '.' if where else ''}{m[1]} is missing"
    if m := re.fullmatch(r"Invalid enum value (.+)", message):
        field = re.split(r"[.\]]", where)[-1]
        if field == "type" and ".content[" in where:
            return (f"{where} must be 'text', got {m[1]} (content parts other than text "
                    "are not supported for fine-tuning)")
        choices = _CHOICES.get(field, "one of the allowed values")
        return f"{where} must be {choices}, got {m[1]}"
    if "out of range" in message:
        return (f"{where}: number out of range (integers must fit in 64 bits, numbers in "
                "a double)")
    return f"{where}: {message[0].lower()}{message[1:]}" if where else message


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _decode_message(raw: bytes, text: str) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte {err.start + 1} of the line)"
    if _SURROGATE.search(raw) and _has_lone_surrogate(raw):
        return ("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without "
                "its pair): not valid Unicode")
    reason = text.removeprefix("JSON is malformed: ")
    if "truncated" in reason:
        return "not valid JSON: the line ends inside a value"
    reason = re.sub(r"\(byte (\d+)\)", lambda m: f"at byte {int(m[1]) + 1}", reason)
    return f"not valid JSON: {reason}"


def _has_lone_surrogate(raw: bytes) -> bool:
    import json

    try:
        text = json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ----- the rules types cannot say ------------------------------------------------------


def quick(line: Line) -> str | None:
    """The format of a line that is plainly valid, without tools (the hot path of every
    upload: most lines); None sends the line to :func:`check`, which finds and words the
    problems, or accepts what this did not try. Must never accept what :func:`check`
    refuses (the property test holds the two together)."""
    if (line.tools is not UNSET or line.functions is not UNSET or line.input is not UNSET
            or line.preferred_output is not UNSET or line.non_preferred_output is not UNSET):
        return None
    messages, text = line.messages, line.text
    if messages is not UNSET:
        if (line.prompt is not UNSET or line.completion is not UNSET or text is not UNSET
                or line.parallel_tool_calls is not UNSET):
            return None
        return CHAT if _plain_chat(messages) else None
    if line.parallel_tool_calls is not UNSET:
        return None
    if text is not UNSET:
        if line.prompt is not UNSET or line.completion is not UNSET:
            return None
        return TEXT if text else None
    if line.prompt is not UNSET and line.completion:  # a str: typed
        return PROMPT_COMPLETION
    return None


def _plain_chat(messages: list[Message]) -> bool:
    """System, user and assistant messages with string content, a user message before the
    first assistant one, and an assistant message with content to learn from."""
    user = learn = False
    for m in messages:
        if (m.content.__class__ is not str or m.tool_calls is not UNSET
                or m.function_call is not UNSET or m.tool_call_id is not UNSET
                or m.refusal is not UNSET):
            return False
        role = m.role
        if role == "assistant":
            if not user:
                return False
            if m.weight != 0:
                if not m.content:  # nothing to learn from: check() says so
                    return False
                learn = True
        elif m.weight is not UNSET:
            return False
        elif role == "user":
            user = True
        elif role != "system" and role != "developer":
            return False
    return learn



def format_of(line: Line) -> tuple[str | None, list[str]]:
    """The line's format, or the problem of a line with none or with two."""
    present = [f for f in Line.__struct_fields__ if getattr(line, f) is not UNSET]
    formats = sorted({_FORMAT_OF_KEY[key] for key in present}, key=FORMATS.index)
    if len(formats) == 1:
        return formats[0], []
    if not formats:
        return None, [f"no example in this line: a line holds {_KEYS_HELP}"]
    keys = " and ".join("'" + "'/'".join(k for k in present if _FORMAT_OF_KEY[k] == f) + "'"
                        for f in formats)
    return None, [f"the line mixes formats ({keys}): a line holds one example in one "
                  "format"]


def check(line: Line) -> tuple[str | None, list[str]]:
    """(format, problems); the format is None when there are problems."""
    fmt, problems = format_of(line)
    if fmt == CHAT:
        problems = _check_chat(line)
    elif fmt == PROMPT_COMPLETION:
        problems = _check_prompt_completion(line)
    elif fmt == TEXT:
        problems = [] if line.text else ["text must not be empty"]
    elif fmt == PREFERENCE:
        problems = _check_preference(line)
    return (fmt if not problems else None), problems


def _content(message: Message) -> str | None:
    content = message.content
    if isinstance(content, list):
        return "".join(part.text for part in content)
    return None if content is UNSET else content


def _check_chat(line: Line) -> list[str]:
    messages = line.messages
    assert not isinstance(messages, UnsetType)
    problems = _check_tools(line.tools, line.functions, "")
    if not messages:
        return [*problems, "messages must not be empty"]
    problems += _check_messages(messages, "messages", line.parallel_tool_calls)
    if problems:
        return problems
    learn = [i for i, m in enumerate(messages) if m.role == "assistant" and m.weight != 0]
    if not learn:
        if any(m.role == "assistant" for m in messages):
            return ["messages has no assistant turn to learn from: every assistant "
                    "message has weight 0"]
        return ["messages has no assistant turn to learn from"]
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
    first_assistant = next(i for i, m in enumerate(messages) if m.role == "assistant")
    if first_user is None or first_user > first_assistant:
        return [f"messages[{first_assistant}] is an assistant message with no user message "
                "before it: a conversation starts with a user message (after any system "
                "message)"]
    return []


def _check_tools(tools: Any, functions: Any, prefix: str) -> list[str]:
    if tools is not UNSET and functions is not UNSET:
        return [f"{prefix}tools and {prefix}functions are both given: use tools "
                "(functions is its older form)"]
    problems = []
    defined = tools if tools is not UNSET else [] if functions is UNSET else functions
    names = set()
    for i, item in enumerate(defined):
        fn = item.function if isinstance(item, Tool) else item
        where = f"{prefix}{'tools' if tools is not UNSET else 'functions'}[{i}]"
        if not fn.name:
            problems.append(f"{where} needs a function name")
        elif fn.name in names:
            problems.append(f"{where} defines function '{fn.name}' a second time")
        names.add(fn.name)
    return problems


def _check_messages(messages: list[Message], path: str,
                    parallel_tool_calls: Any) -> list[str]:
    problems: list[str] = []
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"{path}[{i}]"
        calls = [] if m.tool_calls is UNSET else m.tool_calls
        if m.role != "assistant":
            for key in ("weight", "tool_calls", "function_call", "refusal"):
                if getattr(m, key) is not UNSET:
                    problems.append(f"{where}.{key} is only allowed on assistant messages")
        if m.role != "tool" and m.tool_call_id is not UNSET:
            problems.append(f"{where}.tool_call_id is only allowed on tool messages")
        if isinstance(m.content, list) and not m.content:
            problems.append(f"{where}.content must not be an empty array")
        if m.role == "assistant":
            problems += _check_assistant(m, where, calls, parallel_tool_calls)
            call_ids.update(c.id for c in calls)
        elif m.content is UNSET:
            problems.append(f"{where}.content is missing")
        elif m.content is None:
            problems.append(f"{where}.content must be a string or an array of text "
                            "parts, got null")
        if m.role == "tool":
            if m.tool_call_id is UNSET:
                problems.append(f"{where}.tool_call_id is missing: a tool message answers "
                                "a tool call by its id")
            elif m.tool_call_id not in call_ids:
                problems.append(f"{where}.tool_call_id '{m.tool_call_id}' answers no tool "
                                "call of an earlier assistant message")
        if m.role == "function" and m.name is UNSET:
            problems.append(f"{where}.name is missing: a function message names the "
                            "function it answers")
    return problems


def _check_assistant(m: Message, where: str, calls: list[ToolCall],
                     parallel_tool_calls: Any) -> list[str]:
    problems = []
    if m.tool_calls is not UNSET and m.function_call is not UNSET:
        problems.append(f"{where} has both tool_calls and function_call: use tool_calls")
    if m.tool_calls is not UNSET and not calls:
        problems.append(f"{where}.tool_calls must not be empty")
    if parallel_tool_calls is False and len(calls) > 1:
        problems.append(f"{where} makes {len(calls)} tool calls but parallel_tool_calls "
                        "is false")
    function_calls = [*(c.function for c in calls)]
    if m.function_call is not UNSET:
        function_calls.append(m.function_call)
    for j, fn in enumerate(function_calls):
        at = (f"{where}.tool_calls[{j}].function" if j < len(calls)
              else f"{where}.function_call")
        if not fn.name:
            problems.append(f"{at}.name must not be empty")
        if _arguments(fn.arguments) is None:
            problems.append(f"{at}.arguments must be a JSON object encoded as a string")
    seen: set[str] = set()
    for j, call in enumerate(calls):
        if not call.id or call.id in seen:
            problems.append(f"{where}.tool_calls[{j}].id must be a unique, non-empty id")
        seen.add(call.id)
    if m.weight != 0 and not _content(m) and not function_calls:
        problems.append(f"{where} has nothing to learn from: an assistant message needs "
                        "content or tool_calls (or weight 0)")
    return problems


def _arguments(text: str) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return value if isinstance(value, dict) else None


def _check_prompt_completion(line: Line) -> list[str]:
    problems = [f"{key} is missing" for key in ("prompt", "completion")
                if getattr(line, key) is UNSET]
    if not problems and not line.completion:
        problems.append("completion must not be empty")
    return problems


def _check_preference(line: Line) -> list[str]:
    problems = [f"{key} is missing" for key in KEYS[PREFERENCE] if getattr(line, key) is UNSET]
    if problems:
        return problems
    source = line.input
    assert isinstance(source, PreferenceInput)
    problems = _check_tools(source.tools, UNSET, "input.")
    if not source.messages:
        return [*problems, "input.messages must not be empty"]
    problems += _check_messages(source.messages, "input.messages", source.parallel_tool_calls)
    if source.messages[-1].role == "assistant":
        problems.append("input.messages ends with an assistant message: the outputs are "
                        "the assistant's answer to it")
    if not any(m.role == "user" for m in source.messages):
        problems.append("input.messages has no user message")
    outputs = []
    for key in ("preferred_output", "non_preferred_output"):
        output = getattr(line, key)
        if len(output) != 1 or output[0].role != "assistant":
            problems.append(f"{key} must be an array of exactly one assistant message")
            continue
        problems += _check_messages(output, key, source.parallel_tool_calls)
        if output[0].weight is not UNSET:
            problems.append(f"{key}[0].weight is not allowed in a preference example")
        outputs.append(msgspec.json.encode(output[0]))
    if not problems and outputs[0] == outputs[1]:
        problems.append("preferred_output and non_preferred_output are the same: there is "
                        "no preference to learn")
    return problems


def uses_tools(line: Line) -> bool:
    """Whether rendering the line needs a chat template that knows tools."""
    if line.tools is not UNSET or line.functions is not UNSET:
        return True
    messages: list[Message] = [] if line.messages is UNSET else line.messages
    if line.input is not UNSET:
        if line.input.tools is not UNSET:
            return True
        for part in (line.input.messages, line.preferred_output, line.non_preferred_output):
            messages += [] if part is UNSET else part
    return any(m.role in ("tool", "function") or m.tool_calls is not UNSET
               or m.function_call is not UNSET for m in messages)


# ----- the normalised form the trainer reads -------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """Messages as chat templates take them (content a string or None, tool-call
    arguments as objects), each with whether the loss is taken on it."""

    messages: list[dict[str, Any]]
    train: list[bool]
    tools: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Completion:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Plain:
    text: str


@dataclass(frozen=True)
class Preference:
    prompt: Conversation  # no message trained on
    preferred: dict[str, Any]
    non_preferred: dict[str, Any]


Example = Conversation | Completion | Plain | Preference


def parse(raw: bytes) -> tuple[str, Example]:
    """Decode, check and normalise one line: what the trainer reads. Raises
    :class:`LineError` for a line the upload would refuse."""
    line = decode(raw)
    fmt, problems = check(line)
    if problems or fmt is None:
        raise LineError(problems)
    return fmt, normalise(line, fmt)


def normalise(line: Line, fmt: str) -> Example:
    if fmt == CHAT:
        assert not isinstance(line.messages, UnsetType)
        return _conversation(line.messages, line.tools, line.functions)
    if fmt == PROMPT_COMPLETION:
        return Completion(prompt=str(line.prompt), completion=str(line.completion))
    if fmt == TEXT:
        return Plain(text=str(line.text))
    source = line.input
    assert isinstance(source, PreferenceInput)
    assert not isinstance(line.preferred_output, UnsetType)
    assert not isinstance(line.non_preferred_output, UnsetType)
    prompt = _conversation(source.messages, source.tools, UNSET)
    return Preference(
        prompt=Conversation(prompt.messages, [False] * len(prompt.messages), prompt.tools),
        preferred=_message(line.preferred_output[0]),
        non_preferred=_message(line.non_preferred_output[0]),
    )


def _conversation(messages: list[Message], tools: Any, functions: Any) -> Conversation:
    if tools is not UNSET:
        defined = [_tool(t.function) for t in tools]
    elif functions is not UNSET:
        defined = [_tool(f) for f in functions]
    else:
        defined = None
    return Conversation(
        messages=[_message(m) for m in messages],
        train=[m.role == "assistant" and m.weight != 0 for m in messages],
        tools=defined,
    )


def _tool(fn: FunctionDef) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": fn.name}
    if fn.description is not UNSET:
        spec["description"] = fn.description
    if fn.parameters is not UNSET:
        spec["parameters"] = fn.parameters
    return {"type": "function", "function": spec}


_TEMPLATE_ROLE = {"function": "tool", "developer": "system"}


def _message(m: Message) -> dict[str, Any]:
    """A message in the form Hugging Face chat templates render: the legacy ``function``
    role and ``function_call`` become ``tool`` and ``tool_calls``, and ``developer``
    (OpenAI's newer name for the system role) becomes ``system``."""
    role = _TEMPLATE_ROLE.get(m.role, m.role)
    out: dict[str, Any] = {"role": role, "content": _content(m)}
    calls = [] if m.tool_calls is UNSET else [
        {"id": c.id, "type": "function",
         "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
        for c in m.tool_calls]
    if m.function_call is not UNSET:
        calls.append({"type": "function", "function": {
            "name": m.function_call.name, "arguments": _arguments(m.function_call.arguments)}})
    if calls:
        out["tool_calls"] = calls
    if m.tool_call_id is not UNSET:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not UNSET:
        out["name"] = m.name
    return out
