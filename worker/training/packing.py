"""Length-grouped batches, packed into rows with no attention across examples.

Each optimizer step takes ``batch_size`` examples. Examples of similar length are grouped
(shuffle, sort within large chunks, then shuffle the batches), and each batch is packed
first-fit-decreasing into rows of at most ``row_len`` tokens. Position ids restart at 0
for every example; transformers turns that into a block-diagonal causal mask, so an
example attends only to itself. Padding, if any, comes last in a row and has no targets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.training.data import IGNORE, Example

PAD_ID = 0


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length]
    targets: torch.Tensor  # [rows, length]
    segments: list[list[tuple[int, int, int]]]  # per row: (example index, start, end)

    @property
    def trainable_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def tokens(self) -> int:
        return sum(end - start for row in self.segments for _, start, end in row)


def epoch_batches(n_examples: int, lengths: list[int], batch_size: int, *, seed: int,
                  epoch: int, group_factor: int = 64) -> list[list[int]]:
    """The example indices of each step in one epoch; the same for the same seed/epoch."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n_examples))
    rng.shuffle(order)
    chunk = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, n_examples, chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def pack(examples: Sequence[Example], indices: list[int], row_len: int) -> PackedBatch:
    """First-fit decreasing into rows of at most ``row_len``; rows padded to the longest."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: len(examples[i]), reverse=True):
        size = len(examples[i])
        for r, free in enumerate(room):
            if size <= free:
                rows[r].append(i)
                room[r] -= size
                break
        else:
            rows.append([i])
            room.append(row_len - size)
    length = max(sum(len(examples[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    tgt = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    segments: list[list[tuple[int, int, int]]] = []
    for r, row in enumerate(rows):
        at, spans = 0, []
        for i in row:
            ex = examples[i]
            end = at + len(ex)
            ids[r, at:end], tgt[r, at:end] = ex.tensors()
            pos[r, at:end] = torch.arange(len(ex))
            spans.append((i, at, end))
            at = end
        # Padding continues the last example's positions: it has no targets, and causal
        # attention never lets a real token see it. Rows holding one example then need no
        # packed mask at all, which lets attention take its fast causal path.
        last = len(examples[row[-1]])
        pos[r, at:] = torch.arange(last, last + length - at)
        segments.append(spans)
    return PackedBatch(input_ids=ids, position_ids=pos, targets=tgt, segments=segments)


def pad(examples: Sequence[Example], indices: list[int]) -> PackedBatch:
    """One example per row, right-padded to the longest (no packing). Causal attention
    never lets a real token see the padding after it, so no mask is needed."""
    length = max(len(examples[i]) for i in indices)
    ids = torch.full((len(indices), length), PAD_ID, dtype=torch.long)
    tgt = torch.full((len(indices), length), IGNORE, dtype=torch.long)
    segments: list[list[tuple[int, int, int]]] = []
    for r, i in enumerate(indices):
        ex = examples[i]
        ids[r, : len(ex)], tgt[r, : len(ex)] = ex.tensors()
        segments.append([(i, 0, len(ex))])
    pos = torch.arange(length).expand(len(indices), -1).clone()
    return PackedBatch(input_ids=ids, position_ids=pos, targets=tgt, segments=segments)


def split_rows(batch: PackedBatch, max_tokens: int) -> list[PackedBatch]:
    """Micro-batches of whole rows holding at most ``max_tokens`` (at least one row), for
    gradient accumulation when a step's rows do not fit in memory at once."""
    length = batch.input_ids.shape[1]
    per = max(1, max_tokens // max(length, 1))
    parts = []
    for start in range(0, batch.input_ids.shape[0], per):
        sl = slice(start, start + per)
        parts.append(PackedBatch(batch.input_ids[sl], batch.position_ids[sl],
                                 batch.targets[sl], batch.segments[sl]))
    return parts
