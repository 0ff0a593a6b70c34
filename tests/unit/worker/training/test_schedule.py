"""The recipe's arithmetic: step counting and reporting intervals (one place each), the
learning-rate schedule, micro-batch splitting, and evaluation that changes nothing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from core.jobs.spec import total_steps as estimated_steps
from tests.conftest import ROOT
from worker.training import loss as loss_module
from worker.training import packing, tinymodel
from worker.training.model import LoraSpec
from worker.training.recipe import (
    Recipe,
    TrainSpec,
    every,
    total_steps,
    warmup_steps,
)

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"


@pytest.mark.parametrize(("examples", "batch", "epochs", "steps"), [
    (1, 1, 1, 1), (10, 3, 1, 4), (10, 3, 2, 8), (8, 8, 5, 5), (9, 8, 5, 10),
])
def test_total_steps(examples: int, batch: int, epochs: int, steps: int) -> None:
    """The trainer and the API's estimate count alike (the recipe may not import core)."""
    assert total_steps(examples, batch, epochs) == estimated_steps(examples, batch, epochs) == steps


@pytest.mark.parametrize(("total", "times", "interval"), [
    (1000, 100, 10), (50, 100, 1), (7, 4, 1), (8, 4, 2), (400, 4, 100), (10, 0, 10),
])
def test_every(total: int, times: int, interval: int) -> None:
    assert every(total, times) == interval


@pytest.mark.parametrize(("total", "ratio", "warmup"), [
    (1, 0.05, 0), (2, 0.05, 1), (10, 0.05, 1), (19, 0.05, 1), (40, 0.05, 2),
    (1000, 0.05, 50), (4, 0.9, 3),
])
def test_warmup_is_at_least_one_step_and_never_the_whole_run(total: int, ratio: float,
                                                              warmup: int) -> None:
    assert warmup_steps(total, ratio) == warmup


def test_the_schedule_is_transformers_cosine_with_warmup(tmp_path: Path) -> None:
    """The recipe's learning rate, step by step: warmup from 0, then cosine to 0."""
    recipe = small_recipe(tmp_path, say(40), batch_size=1, learning_rate=1.0)
    rates = []
    for _ in range(recipe.total_steps):
        rates.append(recipe.scheduler.get_last_lr()[0])
        recipe.optimizer.step()
        recipe.scheduler.step()
    assert recipe.total_steps == 40 and rates[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))
    assert recipe.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def batch(rows: int, length: int) -> packing.PackedBatch:
    ids = torch.arange(rows * length).reshape(rows, length)
    return packing.PackedBatch(ids, ids % length, ids, [[(0, 0, length)]] * rows)


@pytest.mark.parametrize(("rows", "length", "max_tokens", "sizes"), [
    (8, 100, 250, [2, 2, 2, 2]), (5, 100, 10_000, [5]), (3, 100, 50, [1, 1, 1]),
])
def test_split_rows_keeps_rows_whole_and_in_order(rows: int, length: int, max_tokens: int,
                                                  sizes: list[int]) -> None:
    whole = batch(rows, length)
    parts = packing.split_rows(whole, max_tokens)
    assert [p.input_ids.shape[0] for p in parts] == sizes
    assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.input_ids)


class Quiet:
    def message(self, text: str, **_: object) -> None: ...

    def metrics(self, values: dict[str, object]) -> None: ...

    def should_stop(self) -> None:
        return None

    def checkpoint(self, *_: object) -> None: ...


def say(count: int, answer: str = "{i}.") -> list[dict[str, object]]:
    """``count`` chat rows: "Say i." answered with ``answer`` (formatted with i)."""
    return [{"messages": [{"role": "user", "content": f"Say {i}."},
                          {"role": "assistant", "content": answer.format(i=i)}]}
            for i in range(count)]


def small_recipe(tmp_path: Path, rows: list[dict[str, object]], *, valid: bool = False,
                 reporter: Quiet | None = None, dropout: float = 0.0,
                 **spec: object) -> Recipe:
    """A recipe on the tiny 4-bit model, set up on ``rows`` (also its validation set
    when ``valid``)."""
    tinymodel.ensure(MODEL_DIR)
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings: dict[str, object] = {
        "n_epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "seed": 3,
        "checkpoint_every": -1, **spec,
        "lora": LoraSpec(r=4, alpha=8, dropout=dropout, target_modules="all-linear",
                         quantization="nf4")}
    recipe = Recipe(TrainSpec(**settings), MODEL_DIR, data,  # type: ignore[arg-type]
                    reporter or Quiet(), valid_file=data if valid else None,
                    work_dir=tmp_path)
    recipe.setup()
    return recipe


def test_evaluate_changes_nothing_and_repeats_exactly(tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path, say(6), valid=True, dropout=0.5)
    assert recipe.total_steps == 3 and recipe.log_every == 1
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()
              if p.requires_grad}
    assert recipe.valid is not None
    first, second = recipe.evaluate(recipe.valid), recipe.evaluate(recipe.valid)
    assert first == second and first > 0  # dropout is off while evaluating
    assert all(torch.equal(p, before[n]) for n, p in recipe.model.named_parameters()
               if p.requires_grad)
    dropouts = [m for m in recipe.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.training for m in dropouts)  # and back on for training


@pytest.mark.parametrize("batch_size", [1, 16, 32])
def test_validation_loss_covers_the_whole_validation_set(tmp_path: Path,
                                                         batch_size: int) -> None:
    """The token-mean loss over every validation example, whatever the batch size (it
    once stepped by the batch size but evaluated 8 examples a step)."""
    recipe = small_recipe(tmp_path, say(32, "{i} " * 3), valid=True, batch_size=batch_size)
    assert recipe.valid is not None and len(recipe.valid.examples) == 32
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(32):  # one example at a time: the definition
            one = packing.pack(recipe.valid.examples, [i], recipe.max_len)
            out = recipe.model(input_ids=one.input_ids, position_ids=one.position_ids,
                               use_cache=False)
            summed, n = loss_module.summed(out.logits, one.targets)
            total, count = total + float(summed), count + n
    assert recipe.evaluate(recipe.valid) == pytest.approx(total / count, rel=1e-4)
