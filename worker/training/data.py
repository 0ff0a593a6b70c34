"""Dataset → token ids and loss targets.

Loss is taken only on what the model should learn to produce: assistant turns of chat
examples (not those with ``weight: 0``), completions, and the whole of plain text. Targets
are shifted here, inside each example, so packing never trains one example to predict the
start of the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    input_ids: list[int]
    targets: list[int]  # targets[t] is the token to predict after input_ids[t], or IGNORE

    @property
    def trainable(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Dataset:
    examples: list[Example]
    truncated: int
    dropped: int

    @property
    def trainable_tokens(self) -> int:
        return sum(e.trainable for e in self.examples)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                row: dict[str, Any] = json.loads(line)
                yield row


def _ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(v) for v in value]


def _chat(tok: Tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and which of them are trained on.

    Each assistant turn's tokens are found by rendering the conversation up to it twice
    (with a generation prompt, then with the turn) — this works for any chat template
    whose rendering of a prefix is a prefix of the rendering of the whole."""
    convo = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = _ids(tok.apply_chat_template(convo, tokenize=True))
    mask = [False] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _ids(tok.apply_chat_template(convo[:i], tokenize=True,
                                              add_generation_prompt=True))
        upto = _ids(tok.apply_chat_template(convo[: i + 1], tokenize=True))
        if full[: len(upto)] != upto or upto[: len(before)] != before:
            raise ValueError("the chat template does not render prefixes stably; "
                             "loss masking needs it to")
        for t in range(len(before), len(upto)):
            mask[t] = True
    return full, mask


def _plain(tok: Tokenizer, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    head = bos + _ids(tok(prompt, add_special_tokens=False)) if prompt else bos
    tail = _ids(tok(completion, add_special_tokens=False)) + eos
    return head + tail, [False] * len(head) + [True] * len(tail)


def encode(tok: Tokenizer, row: dict[str, Any], max_len: int) -> tuple[Example, bool]:
    """One example with shifted targets, truncated to ``max_len``; also whether it was."""
    if "messages" in row:
        ids, mask = _chat(tok, row["messages"])
    elif "text" in row:
        ids, mask = _plain(tok, "", row["text"])
    else:
        ids, mask = _plain(tok, row["prompt"], row["completion"])
    truncated = len(ids) > max_len
    ids, mask = ids[:max_len], mask[:max_len]
    targets = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example(input_ids=ids, targets=targets), truncated


def load(path: Path, tok: Tokenizer, max_len: int) -> Dataset:
    examples, truncated, dropped = [], 0, 0
    for row in read_jsonl(path):
        example, was_truncated = encode(tok, row, max_len)
        truncated += was_truncated
        if example.trainable == 0:
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise NoTrainableTokens(
            f"no example has a token to train on (examples without trainable tokens: "
            f"{dropped}); check that assistant turns are not all weight 0 and fit in "
            f"{max_len} tokens"
        )
    return Dataset(examples=examples, truncated=truncated, dropped=dropped)
