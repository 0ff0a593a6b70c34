"""Dataset → token ids and loss targets.

Lines are read through the dataset grammar (``loramill.datasets.grammar``), the same code
the upload validated them with. Loss is taken only on what the model should learn to
produce: assistant turns of chat examples (not those with ``weight: 0``), completions,
the whole of plain text, and both answers of a preference pair. Targets
are shifted here, inside each example, so packing never trains one example to predict the
start of the next.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from loramill.datasets import grammar
from loramill.datasets.grammar import Completion, Conversation, Plain, Preference

IGNORE = -100


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


class NoTrainableTokens(ValueError):
    """The dataset has nothing to learn from (every target masked or truncated away)."""


@dataclass(frozen=True)
class Example:
    """One tokenised example, as compact arrays of 32-bit ids (4 bytes a token, where a
    Python list of ints costs 8 bytes a token plus an object of 28 for most ids): a 1 GiB
    upload (~250 M tokens) is held in ~2 GB instead of ~16 GB."""

    input_ids: array[int]
    targets: array[int]  # targets[t] is the token to predict after input_ids[t], or IGNORE
    trainable: int

    @classmethod
    def of(cls, input_ids: list[int], targets: list[int]) -> Example:
        return cls(array("i", input_ids), array("i", targets),
                   sum(1 for t in targets if t != IGNORE))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """input ids and targets as int64 tensors (copies: the arrays stay as they are)."""
        return (torch.frombuffer(self.input_ids, dtype=torch.int32).long(),
                torch.frombuffer(self.targets, dtype=torch.int32).long())

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Pair:
    """A DPO example: the prompt with the preferred and with the other answer."""

    chosen: Example
    rejected: Example

    @property
    def trainable(self) -> int:
        return min(self.chosen.trainable, self.rejected.trainable)

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


@dataclass(frozen=True)
class Dataset:
    examples: list[Any]  # Example, or Pair for a preference file
    truncated: int
    dropped_lines: list[int]  # examples truncated to nothing to train on, by line

    @property
    def dropped(self) -> int:
        return len(self.dropped_lines)

    @property
    def trainable_tokens(self) -> int:
        return sum(e.trainable for e in self.examples)


def read(path: Path) -> Iterator[tuple[int, grammar.Example]]:
    """The examples of an uploaded (so validated) file, in the grammar's normalised form:
    read exactly as the upload read them, never re-interpreted here; with line numbers."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
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
    extra = {"tools": tools} if tools else {}
    return _ids(tok.apply_chat_template(messages, tokenize=True, **extra, **kwargs))


def _chat(tok: Tokenizer, convo: Conversation) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and which of them are trained on.

    Each trained assistant turn's tokens are found by rendering the conversation up to it
    twice (with a generation prompt, then with the turn) — this works for any chat
    template whose rendering of a prefix is a prefix of the rendering of the whole. The
    grammar guarantees a user message before the first assistant one, so no prefix is
    empty."""
    messages, tools = convo.messages, convo.tools
    full = _render(tok, messages, tools)
    mask = [False] * len(full)
    for i, trained in enumerate(convo.train):
        if not trained:
            continue
        before = _render(tok, messages[:i], tools, add_generation_prompt=True)
        upto = _closed_turn(tok, _render(tok, messages[: i + 1], tools), full)
        if full[: len(upto)] != upto or upto[: len(before)] != before:
            raise ValueError("the chat template does not render prefixes stably; "
                             "loss masking needs it to")
        for t in range(len(before), len(upto)):
            mask[t] = True
    return full, mask


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


def _example(ids: list[int], mask: list[bool], max_len: int) -> tuple[Example, bool]:
    truncated = len(ids) > max_len
    ids, mask = ids[:max_len], mask[:max_len]
    targets = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example.of(ids, targets), truncated


def encode(tok: Tokenizer, example: grammar.Example, max_len: int) -> tuple[Example, bool]:
    """One supervised example with shifted targets, truncated to ``max_len``; also whether
    it was."""
    if isinstance(example, Conversation):
        ids, mask = _chat(tok, example)
    elif isinstance(example, Completion):
        ids, mask = _plain(tok, example.prompt, example.completion)
    elif isinstance(example, Plain):
        ids, mask = _plain(tok, "", example.text)
    else:
        raise ValueError("a preference example trains a dpo job, not a supervised one")
    return _example(ids, mask, max_len)


def encode_pair(tok: Tokenizer, example: Preference, max_len: int) -> tuple[Pair, bool]:
    """A preference example: the prompt with each answer, trained on the answers only."""
    chosen, chosen_cut = _example(*_answer(tok, example.prompt, example.preferred), max_len)
    rejected, rejected_cut = _example(*_answer(tok, example.prompt, example.non_preferred),
                                      max_len)
    return Pair(chosen, rejected), chosen_cut or rejected_cut


def load(path: Path, tok: Tokenizer, max_len: int) -> Dataset:
    examples: list[Any] = []
    truncated, dropped = 0, []
    for number, row in read(path):
        example: Example | Pair
        if isinstance(row, Preference):
            example, was_truncated = encode_pair(tok, row, max_len)
        else:
            example, was_truncated = encode(tok, row, max_len)
        truncated += was_truncated
        if example.trainable == 0:  # what it trains on lies beyond max_len
            dropped.append(number)
            continue
        examples.append(example)
    if not examples:
        raise NoTrainableTokens(
            f"no example has a token to train on within the model's context of {max_len} "
            f"tokens: what every example trains on lies beyond it ({lines(dropped)}); "
            "shorten the examples"
        )
    return Dataset(examples=examples, truncated=truncated, dropped_lines=dropped)


def lines(numbers: list[int], shown: int = 10) -> str:
    """``lines 3, 17, 20 and 4 more``: line numbers for a message."""
    head = ", ".join(str(n) for n in numbers[:shown])
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return f"line{'s' if len(numbers) > 1 else ''} {head}{more}"
