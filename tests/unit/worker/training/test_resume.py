"""Exact resume: a run interrupted after a checkpoint and resumed from it ends with the
same adapter weights as an uninterrupted run (CPU, fixed seed, max abs diff <= 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT
from worker.training import tinymodel
from worker.training.model import LoraSpec
from worker.training.recipe import Recipe, Stopped, TrainSpec

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"


class Reporter:
    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.step = 0
        self.messages: list[str] = []
        self.checkpoints: list[Path] = []

    def message(self, text: str, *, level: str = "info", data: Any = None) -> None:
        self.messages.append(text)

    def metrics(self, values: dict[str, Any]) -> None:
        self.step = values["step"]

    def should_stop(self) -> str | None:
        return "pause" if self.stop_at is not None and self.step >= self.stop_at else None

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        self.checkpoints.append(directory)


def recipe(tmp: Path, data: Path, reporter: Reporter) -> Recipe:
    spec = TrainSpec(n_epochs=3, batch_size=2, learning_rate=2e-3, seed=11,
                     lora=LoraSpec(r=8, alpha=16, dropout=0.1, target_modules="all-linear",
                                   quantization="nf4"), checkpoint_every=4)
    return Recipe(spec, MODEL_DIR, data, reporter, work_dir=tmp)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    tinymodel.ensure(MODEL_DIR)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question number {i}?"},
        {"role": "assistant", "content": f"Answer {i} " * (1 + i % 4)}]}) for i in range(7)))

    whole = recipe(tmp_path / "a", data, Reporter())
    whole.setup()
    whole.train_loop()
    whole.save(tmp_path / "a" / "out")

    first = recipe(tmp_path / "b", data, stopper := Reporter(stop_at=5))
    first.setup()
    with pytest.raises(Stopped) as stopped:
        first.train_loop()
    assert stopped.value.step == 5
    checkpoint = first.save_checkpoint()  # what the runner does on pause or shutdown

    second = recipe(tmp_path / "c", data, resumed := Reporter())
    second.setup(resume_from=checkpoint)
    assert second.position.step == 5
    second.train_loop()
    second.save(tmp_path / "c" / "out")
    assert any(m.startswith("Resuming from step 5") for m in resumed.messages)
    assert stopper.checkpoints  # the periodic checkpoint at step 4 was written too

    a = load_file(str(tmp_path / "a" / "out" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "c" / "out" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in second.history]


def test_examples_with_nothing_left_to_train_on_are_named_by_line(tmp_path: Path) -> None:
    tinymodel.ensure(MODEL_DIR)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (
        {"prompt": "short", "completion": "fine"},
        {"prompt": "word " * 200, "completion": "end"})))
    spec = TrainSpec(n_epochs=1, batch_size=1, learning_rate=1e-3, seed=1, max_seq_len=64,
                     lora=LoraSpec(r=4, alpha=8, dropout=0.0, target_modules="all-linear",
                                   quantization="nf4"), checkpoint_every=-1)
    reporter = Reporter()
    recipe = Recipe(spec, MODEL_DIR, data, reporter, work_dir=tmp_path)
    recipe.setup()
    assert len(recipe.train.examples) == 1
    assert ("1 training examples have nothing to train on within 64 tokens (what they train "
            "on lies beyond it) and were skipped: line 2") in reporter.messages
