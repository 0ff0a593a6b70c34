"""A dataset line as token ids, and which of them are trained on: the one rendering of
the dataset contract, used by the trainer (``worker/training/data.py``) and by the
server's estimates, with any tokenizer that has a chat template (``transformers``' fast
tokenizers, duck-typed: this module imports no ML library).

Loss is taken only on what the model should learn to produce: assistant turns of chat
examples (not those with ``weight: 0``), completions, the whole of plain text, and both
answers of a preference pair.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from loramill.datasets import grammar
from loramill.datasets.grammar import Completion, Conversation, Plain, Preference

Sequence = tuple[list[int], list[bool]]  # token ids, and whether each is trained on


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def read(path: Path) -> Iterator[tuple[int, grammar.Example]]:
    """The examples of an uploaded (so validated) file, in the grammar's normalised form:
    read exactly as the upload read them, never re-interpreted here; with line numbers."""
    with path.open("rb") as fh:
        yield from parse_lines(fh)


def parse_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, grammar.Example]]:
    """:func:`read` over lines from anywhere (a stream from object storage)."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            yield number, grammar.parse(raw)[1]
        except grammar.LineError as exc:  # only a file that bypassed the upload
            raise ValueError(f"line {number}: {exc}") from None


def _ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(v) for v in value]


def _render(tok: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
            **kwargs: Any) -> list[int]:
    return _ids(_template(tok, messages, tools, **kwargs))


def _template(tok: Tokenizer, messages: list[dict[str, Any]],
              tools: list[dict[str, Any]] | None, **kwargs: Any) -> Any:
    """The chat template applied, tokenised (tools passed only when there are some)."""
    extra = {"tools": tools} if tools else {}
    return tok.apply_chat_template(messages, tokenize=True, **extra, **kwargs)


GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _chat(tok: Tokenizer, convo: Conversation) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and which of them are trained on.

    A template that marks what the assistant generates (``{% generation %}``) says it
    itself: the tokenizer's assistant-token mask, less any turn with ``weight: 0``.
    Otherwise each trained assistant turn's tokens are found by rendering the
    conversation up to it twice (with a generation prompt, then with the turn), which
    works for any template whose rendering of a prefix is a prefix of the rendering of the
    whole. The grammar guarantees a user message before the first assistant one, so no
    prefix is empty."""
    messages, tools = convo.messages, convo.tools
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and GENERATION_TAG.search(template):
        out = _template(tok, messages, tools, return_dict=True,
                        return_assistant_tokens_mask=True)
        full = _ids(out)
        mask = [bool(m) for m in out["assistant_masks"]]
        for i, trained in enumerate(convo.train):
            if messages[i]["role"] == "assistant" and not trained:
                start, end = _turn(tok, messages, tools, i, full)
                mask[start:end] = [False] * (end - start)
        return full, mask
    full = _render(tok, messages, tools)
    mask = [False] * len(full)
    for i, trained in enumerate(convo.train):
        if trained:
            start, end = _turn(tok, messages, tools, i, full)
            mask[start:end] = [True] * (end - start)
    return full, mask


def _turn(tok: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
          i: int, full: list[int]) -> tuple[int, int]:
    """Where message ``i`` lies in ``full``, from two renderings of the prefix."""
    before = _render(tok, messages[:i], tools, add_generation_prompt=True)
    upto = _closed_turn(tok, _render(tok, messages[: i + 1], tools), full)
    if full[: len(upto)] != upto or upto[: len(before)] != before:
        raise ValueError("the chat template does not render prefixes stably; "
                         "loss masking needs it to")
    return len(before), len(upto)


def _closed_turn(tok: Tokenizer, upto: list[int], full: list[int]) -> list[int]:
    """``upto`` without the end-of-text token a template puts only after a conversation's
    last message (Phi-3's does): an earlier turn, inside a longer conversation, has none."""
    eos = tok.eos_token_id
    if full[: len(upto)] != upto and upto and upto[-1] == eos and \
            full[: len(upto) - 1] == upto[:-1]:
        return upto[:-1]
    return upto


def _answer(tok: Tokenizer, prompt: Conversation,
            answer: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """A prompt and one assistant answer, trained on the answer only (a DPO sequence)."""
    return _chat(tok, Conversation([*prompt.messages, answer], [*prompt.train, True],
                                   prompt.tools))


def _plain(tok: Tokenizer, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    head = bos + _ids(tok(prompt, add_special_tokens=False)) if prompt else bos
    tail = _ids(tok(completion, add_special_tokens=False)) + eos
    return head + tail, [False] * len(head) + [True] * len(tail)


def sequences(tok: Tokenizer, example: grammar.Example) -> list[Sequence]:
    """The token ids and trained-on mask of an example: one sequence, or for a preference
    pair two (the prompt with the preferred answer, then with the other)."""
    if isinstance(example, Preference):
        return [_answer(tok, example.prompt, example.preferred),
                _answer(tok, example.prompt, example.non_preferred)]
    if isinstance(example, Conversation):
        return [_chat(tok, example)]
    if isinstance(example, Completion):
        return [_plain(tok, example.prompt, example.completion)]
    if isinstance(example, Plain):
        return [_plain(tok, "", example.text)]
    raise TypeError(f"not a dataset example: {type(example).__name__}")
