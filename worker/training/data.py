"""Dataset → token ids and loss targets.

Lines are read through the dataset grammar (``loramill.datasets.grammar``), the same code
the upload validated them with. Loss is taken only on what the model should learn to
produce: assistant turns of chat examples (not those with ``weight: 0``), completions,
the whole of plain text, and both answers of a preference pair. Targets
are shifted here, inside each example, so packing never trains one example to predict the
start of the next.
"""

from __future__ import annotations

import mmap
import re
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy
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
    """One tokenised example, as compact 32-bit ids (4 bytes a token, where a Python list
    of ints costs 8 bytes a token plus an object of 28 for most ids): an array, or a view
    of a memory-mapped :class:`TokenStore` file."""

    input_ids: array[int] | memoryview
    targets: array[int] | memoryview  # targets[t]: the token after input_ids[t], or IGNORE
    trainable: int

    @classmethod
    def of(cls, input_ids: list[int], targets: list[int]) -> Example:
        return cls(array("i", input_ids), array("i", targets),
                   sum(1 for t in targets if t != IGNORE))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """input ids and targets as int64 tensors (copies: the ids stay as they are)."""
        return (torch.from_numpy(numpy.asarray(self.input_ids, dtype=numpy.int64)),
                torch.from_numpy(numpy.asarray(self.targets, dtype=numpy.int64)))

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


class TokenStore(Sequence[Any]):
    """A dataset's examples on disk: every example's ids and targets appended to two flat
    int32 files as it is tokenised, then memory-mapped. What stays in memory is two
    offsets a sequence (16 bytes), whatever the examples' lengths: a 1 GiB upload (~250 M
    tokens, ~2 GB of ids and targets) costs megabytes of RAM, and the OS pages the files in
    and out as steps read them. Items are :class:`Example` views, or :class:`Pair` views
    for a preference file (two sequences an item)."""

    def __init__(self, directory: Path, *, pairs: bool = False):
        directory.mkdir(parents=True, exist_ok=True)
        self.pairs = pairs
        self._ids = (directory / "input_ids.i32").open("wb")
        self._targets = (directory / "targets.i32").open("wb")
        self._starts = array("q", [0])
        self._trainable = array("q")
        self._views: tuple[memoryview, memoryview] | None = None

    def add(self, example: Example | Pair) -> None:
        for sequence in ((example.chosen, example.rejected) if isinstance(example, Pair)
                         else (example,)):
            array("i", sequence.input_ids).tofile(self._ids)
            array("i", sequence.targets).tofile(self._targets)
            self._starts.append(self._starts[-1] + len(sequence))
            self._trainable.append(sequence.trainable)

    def seal(self) -> TokenStore:
        """Done adding: the files are closed and mapped read-only."""
        views = []
        for fh in (self._ids, self._targets):
            fh.close()
            with open(fh.name, "rb") as reader:
                size = reader.seek(0, 2)
                mapped = mmap.mmap(reader.fileno(), 0, access=mmap.ACCESS_READ) if size \
                    else b""
            views.append(memoryview(mapped).cast("B").cast("i"))
        self._views = (views[0], views[1])
        return self

    def _sequence(self, index: int) -> Example:
        assert self._views is not None, "seal() the store before reading it"
        start, end = self._starts[index], self._starts[index + 1]
        return Example(self._views[0][start:end], self._views[1][start:end],
                       self._trainable[index])

    def __len__(self) -> int:
        return (len(self._starts) - 1) // (2 if self.pairs else 1)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.pairs:
            return Pair(self._sequence(2 * index), self._sequence(2 * index + 1))
        return self._sequence(index)

    @property
    def resident_bytes(self) -> int:
        """What the store keeps in Python memory (the offsets), not counting mapped pages."""
        return (self._starts.itemsize * len(self._starts)
                + self._trainable.itemsize * len(self._trainable))


@dataclass(frozen=True)
class Dataset:
    examples: Sequence[Any]  # Example, or Pair for a preference file; a list or TokenStore
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


def load(path: Path, tok: Tokenizer, max_len: int, *, store: Path | None = None) -> Dataset:
    """Tokenise ``path`` line by line; with ``store``, into a :class:`TokenStore` in that
    directory (memory bounded by the number of examples, not their tokens), else into
    arrays in memory."""
    examples: list[Any] | TokenStore = []
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
        if store is not None and isinstance(examples, list):  # the first: its kind decides
            store.mkdir(parents=True, exist_ok=True)
            examples = TokenStore(Path(tempfile.mkdtemp(dir=store)),
                                  pairs=isinstance(example, Pair))
        if isinstance(examples, TokenStore):
            examples.add(example)
        else:
            examples.append(example)
    if isinstance(examples, TokenStore):
        examples.seal()
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
