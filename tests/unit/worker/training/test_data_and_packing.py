"""Loss masking, truncation and packing on the real tiny model and tokenizer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from loramill.datasets import grammar

from tests.conftest import ROOT
from worker.training import data, loss, packing, tinymodel
from worker.training.model import load_base, load_tokenizer

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    tinymodel.ensure(MODEL_DIR)
    return load_tokenizer(MODEL_DIR)


def ex(row: dict) -> grammar.Example:  # type: ignore[type-arg]
    """A line as the trainer reads it: through the dataset grammar."""
    return grammar.parse(json.dumps(row).encode())[1]


def decoded_targets(tok, example: data.Example) -> str:  # type: ignore[no-untyped-def]
    return str(tok.decode([t for t in example.targets if t != data.IGNORE]))


def test_chat_loss_covers_assistant_turns_only_and_skips_weight_zero(tok) -> None:  # type: ignore[no-untyped-def]
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "Uno.", "weight": 0},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "Dos."},
    ]}
    example, truncated = data.encode(tok, ex(row), 512)
    assert not truncated
    # the tiny template marks what the assistant generates ({% generation %}): the
    # tokenizer's assistant mask, which ends at <|end|> (the newline is the template's)
    assert decoded_targets(tok, example) == "Dos.<|end|>"


def test_prompt_completion_and_text_targets(tok) -> None:  # type: ignore[no-untyped-def]
    pc, _ = data.encode(tok, ex({"prompt": "2+2=", "completion": "4"}), 512)
    assert decoded_targets(tok, pc) == "4<|end|>"
    text, _ = data.encode(tok, ex({"text": "hello world"}), 512)
    assert decoded_targets(tok, text) == "hello world<|end|>"


def test_truncation_and_no_trainable_tokens(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "word " * 200, "completion": "end"},
            {"prompt": "short", "completion": "fine"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = data.load(path, tok, 64)
    assert ds.truncated == 1 and ds.dropped_lines == [1] and len(ds.examples) == 1
    long = json.dumps({"prompt": "word " * 200, "completion": "end"})
    path.write_text(f"{long}\n\n{long}\n")  # a blank line keeps its number
    with pytest.raises(data.NoTrainableTokens, match=r"lies beyond it \(lines 1, 3\)"):
        data.load(path, tok, 64)
    assert data.lines(list(range(1, 15))) == "lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 4 more"


def test_packing_keeps_examples_whole_and_rows_short(tok) -> None:  # type: ignore[no-untyped-def]
    examples = [data.encode(tok, ex({"text": "x " * n}), 512)[0] for n in (3, 40, 7, 25, 60, 1)]
    longest = max(len(e) for e in examples)
    batch = packing.pack(examples, list(range(len(examples))), row_len=longest)
    assert batch.input_ids.shape[1] <= longest
    assert len(batch.segments) < len(examples)  # short ones share rows
    seen = sorted(i for row in batch.segments for i, _, _ in row)
    assert seen == list(range(len(examples)))
    for row, spans in zip(batch.input_ids, batch.segments, strict=True):
        for i, start, end in spans:
            assert row[start:end].tolist() == list(examples[i].input_ids)
    assert batch.trainable_tokens == sum(e.trainable for e in examples)


def test_length_grouped_batches_are_deterministic_and_cover_the_epoch() -> None:
    lengths = [5, 50, 7, 300, 12, 8, 90, 33, 2, 41]
    a = packing.epoch_batches(len(lengths), lengths, 3, seed=1, epoch=0)
    assert a == packing.epoch_batches(len(lengths), lengths, 3, seed=1, epoch=0)
    assert a != packing.epoch_batches(len(lengths), lengths, 3, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))


def test_packed_batch_gives_the_same_per_example_losses_as_alone(tok) -> None:  # type: ignore[no-untyped-def]
    """No attention across example boundaries: packing must not change any example's
    loss (fp32, unquantized, within 1e-4)."""
    model = load_base(MODEL_DIR, "none", torch.device("cpu"))
    model.eval()
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: " + "why " * (i * 3)},
                          {"role": "assistant", "content": f"Answer {i} " * (i + 1)}]}
            for i in range(6)]
    examples = [data.encode(tok, ex(r), 512)[0] for r in rows]

    def per_example(batch: packing.PackedBatch) -> dict[int, float]:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           use_cache=False).logits
        losses = loss.token_losses(logits, batch.targets)
        out = {}
        for r, spans in enumerate(batch.segments):
            for i, start, end in spans:
                n = int((batch.targets[r, start:end] != data.IGNORE).sum())
                out[i] = float(losses[r, start:end].sum()) / n
        return out

    packed = packing.pack(examples, list(range(6)), row_len=512)
    assert len(packed.segments) < 6, "the test needs several examples in one row"
    together = per_example(packed)
    for i in range(6):
        alone = per_example(packing.pack(examples, [i], row_len=512))[i]
        assert abs(together[i] - alone) < 1e-4, (i, together[i], alone)


def test_tool_calls_are_rendered_and_trained_on(tok) -> None:  # type: ignore[no-untyped-def]
    row = {"tools": [{"type": "function", "function": {"name": "weather"}}], "messages": [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21C"},
        {"role": "assistant", "content": "It is 21C."}]}
    example, _ = data.encode(tok, ex(row), 512)
    text = tok.decode(list(example.input_ids))
    assert '{"name": "weather"}' in text and "21C<|end|>" in text  # tools and the result
    assert decoded_targets(tok, example) == (
        '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call><|end|>'
        "It is 21C.<|end|>")


def test_a_preference_pair_trains_on_each_answer_only(tok) -> None:  # type: ignore[no-untyped-def]
    row = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
           "preferred_output": [{"role": "assistant", "content": "Paris."}],
           "non_preferred_output": [{"role": "assistant", "content": "Rome."}]}
    example = ex(row)
    assert isinstance(example, grammar.Preference)
    pair, truncated = data.encode_pair(tok, example, 512)
    assert not truncated
    assert decoded_targets(tok, pair.chosen) == "Paris.<|end|>"
    assert decoded_targets(tok, pair.rejected) == "Rome.<|end|>"
    prompt_len = next(t for t, v in enumerate(pair.chosen.targets) if v != data.IGNORE) + 1
    assert pair.chosen.input_ids[:prompt_len] == pair.rejected.input_ids[:prompt_len]


def test_examples_are_held_in_compact_arrays() -> None:
    """4 bytes a token (a list of Python ints: 8 for the pointer and 28 for most ids)."""
    ids = list(range(1000, 5000))
    example = data.Example.of(ids, [data.IGNORE, *ids[1:]])
    assert example.input_ids.itemsize == example.targets.itemsize == 4
    assert sys.getsizeof(example.input_ids) < 4 * len(ids) + 100
    assert example.trainable == len(ids) - 1
    tokens, targets = example.tensors()
    assert tokens.dtype == torch.long and tokens.tolist() == ids
    assert targets[0] == data.IGNORE and targets[1:].tolist() == ids[1:]


def test_a_token_store_holds_what_memory_would_in_bounded_ram(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Tokenised onto disk (memory-mapped), the examples are the same as in memory, and
    what stays in RAM grows with the number of examples, not with their tokens."""
    rows: list[dict[str, Any]] = [{"messages": [{"role": "user", "content": f"Tell {i}."},
                          {"role": "assistant", "content": "word " * (20 + 40 * i)}]}
            for i in range(12)]
    rows.append({"prompt": "Say", "completion": " nothing else"})
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    in_memory = data.load(path, tok, 256)
    stored = data.load(path, tok, 256, store=tmp_path / "tokens")
    assert isinstance(stored.examples, data.TokenStore)
    assert len(stored.examples) == len(in_memory.examples) == 13
    assert (stored.truncated, stored.dropped_lines) == (in_memory.truncated,
                                                        in_memory.dropped_lines)
    for a, b in zip(in_memory.examples, stored.examples, strict=True):
        assert list(a.input_ids) == list(b.input_ids) and list(a.targets) == list(b.targets)
        assert a.trainable == b.trainable
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors(), strict=True))
    tokens = sum(len(e) for e in stored.examples)
    assert tokens > 2000 and stored.examples.resident_bytes <= 16 * 14
    assert stored.examples[-1].trainable == in_memory.examples[-1].trainable
    with pytest.raises(IndexError):
        stored.examples[13]
    batch = packing.pack(stored.examples, list(range(13)), 256)
    assert torch.equal(batch.input_ids, packing.pack(in_memory.examples, list(range(13)),
                                                     256).input_ids)


def test_a_token_store_holds_preference_pairs(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [{"input": {"messages": [{"role": "user", "content": f"Capital {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": "Paris."}],
             "non_preferred_output": [{"role": "assistant", "content": "Lyon, I think."}]}
            for i in range(3)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    in_memory = data.load(path, tok, 256)
    stored = data.load(path, tok, 256, store=tmp_path / "tokens")
    assert len(stored.examples) == 3
    for a, b in zip(in_memory.examples, stored.examples, strict=True):
        assert isinstance(b, data.Pair)
        assert list(a.chosen.input_ids) == list(b.chosen.input_ids)
        assert list(a.rejected.targets) == list(b.rejected.targets)
        assert a.trainable == b.trainable


def test_without_generation_tags_turns_are_found_by_rendering_prefixes(tok) -> None:  # type: ignore[no-untyped-def]
    """The same conversation under the same template without its {% generation %} tags:
    the prefix renderings find each trained turn (through the template's newline)."""
    row = {"messages": [{"role": "user", "content": "One?"},
                        {"role": "assistant", "content": "Uno.", "weight": 0},
                        {"role": "user", "content": "Two?"},
                        {"role": "assistant", "content": "Dos."}]}
    tagged = tok.chat_template
    assert data.GENERATION_TAG.search(tagged)
    try:
        tok.chat_template = data.GENERATION_TAG.sub("", tagged.replace(
            "{% endgeneration %}", ""))
        example, _ = data.encode(tok, ex(row), 512)
    finally:
        tok.chat_template = tagged
    assert decoded_targets(tok, example) == "Dos.<|end|>\n"
    masked, _ = data.encode(tok, ex(row), 512)
    assert list(masked.input_ids) == list(example.input_ids)  # the same text either way
