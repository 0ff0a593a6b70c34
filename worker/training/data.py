"""Dataset → token ids and loss targets.

Lines are read through the dataset grammar (``loramill.datasets.grammar``), the same code
the upload validated them with, and rendered to token ids with what is trained on marked
by ``loramill.datasets.render`` (the same code the server's estimates count with). Targets
are shifted here, inside each example, so packing never trains one example to predict the
start of the next.
"""

from __future__ import annotations

import mmap
import tempfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from loramill.datasets import grammar
from loramill.datasets.grammar import Preference
from loramill.datasets.render import GENERATION_TAG, Tokenizer, read, sequences

__all__ = ["GENERATION_TAG", "Tokenizer", "read"]  # the trainer's view of the contract

IGNORE = -100


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


def _example(ids: list[int], mask: list[bool], max_len: int) -> tuple[Example, bool]:
    truncated = len(ids) > max_len
    ids, mask = ids[:max_len], mask[:max_len]
    targets = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example.of(ids, targets), truncated


def encode(tok: Tokenizer, example: grammar.Example, max_len: int) -> tuple[Example, bool]:
    """One supervised example with shifted targets, truncated to ``max_len``; also whether
    it was."""
    if isinstance(example, Preference):
        raise ValueError("a preference example trains a dpo job, not a supervised one")
    (ids, mask), = sequences(tok, example)
    return _example(ids, mask, max_len)


def encode_pair(tok: Tokenizer, example: Preference, max_len: int) -> tuple[Pair, bool]:
    """A preference example: the prompt with each answer, trained on the answers only."""
    (chosen, chosen_cut), (rejected, rejected_cut) = (
        _example(ids, mask, max_len) for ids, mask in sequences(tok, example))
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
