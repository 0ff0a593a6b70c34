"""Evaluation every N steps, early stopping on the validation loss, publishing the best
evaluation's adapter, and continuing from an adapter: the real recipe on the tiny model
in 4-bit. The training data teaches answers the validation data calls wrong, so the
validation loss falls while the format is learned and then rises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.unit.worker.training.test_resume import Reporter
from worker.training import tinymodel
from worker.training.model import LoraSpec
from worker.training.recipe import Recipe, Stopped, TrainSpec

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
COUNTRIES = ["France", "Spain", "Italy", "Japan", "Kenya", "Peru"]


def chat(country: str, answer: str) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": answer}]})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tinymodel.ensure(MODEL_DIR)
    root = tmp_path_factory.mktemp("data")
    train, valid = root / "train.jsonl", root / "valid.jsonl"
    train.write_text("\n".join(chat(c, "Gotham, a city of bats and night.")
                               for c in COUNTRIES))
    valid.write_text("\n".join(chat(c, "I do not know.") for c in COUNTRIES))
    return train, valid


def spec(**fields: Any) -> TrainSpec:
    values: dict[str, Any] = {
        "n_epochs": 12, "batch_size": 2, "learning_rate": 4e-3, "seed": 3,
        "lora": LoraSpec(r=8, alpha=16, dropout=0.0, target_modules="all-linear",
                         quantization="nf4"),
        "checkpoint_every": -1, "eval_every": 2, **fields}
    return TrainSpec(**values)


def run(tmp: Path, files: tuple[Path, Path], train_spec: TrainSpec,
        reporter: Reporter | None = None, **setup: Any) -> Recipe:
    recipe = Recipe(train_spec, MODEL_DIR, files[0], reporter or Reporter(),
                    valid_file=files[1], work_dir=tmp)
    recipe.setup(**setup)
    return recipe


def test_early_stopping_ends_the_run_and_the_best_adapter_is_published(
        tmp_path: Path, files: tuple[Path, Path]) -> None:
    reporter = Reporter()
    recipe = run(tmp_path / "a", files, spec(early_stopping_patience=2, publish_best=True),
                 reporter)
    result = recipe.train_loop()
    evaluation = result.evaluation
    assert evaluation is not None
    losses = [(h["step"], h["valid_loss"]) for h in result.history if "valid_loss" in h]
    assert [step for step, _ in losses] == list(range(2, result.steps + 1, 2))
    best_step, best = min(losses, key=lambda point: point[1])
    # it stopped two evaluations after the last improvement, long before the 36 steps
    assert evaluation["stopped_early_at"] == result.steps < recipe.total_steps == 36
    assert evaluation["best_step"] == best_step and evaluation["best_valid_loss"] == best
    assert result.steps == best_step + 4
    assert any(m.startswith(f"Early stopping at step {result.steps} of 36") for m in
               reporter.messages)
    assert evaluation["published"] == "best" and evaluation["published_step"] == best_step

    # the published adapter is the best evaluation's: continued from, it evaluates to it
    recipe.save(tmp_path / "a" / "out")
    again = run(tmp_path / "b", files, spec(), init_from=tmp_path / "a" / "out")
    assert abs(again.evaluate(again.valid) - best) < 1e-4  # type: ignore[arg-type]
    fresh = run(tmp_path / "c", files, spec())
    assert abs(fresh.evaluate(fresh.valid) - best) > 0.05  # type: ignore[arg-type]


def test_without_patience_it_runs_to_the_end_and_publishes_the_last(
        tmp_path: Path, files: tuple[Path, Path]) -> None:
    recipe = run(tmp_path, files, spec(n_epochs=2))
    result = recipe.train_loop()
    assert result.steps == recipe.total_steps == 6
    assert result.evaluation is not None
    assert result.evaluation["stopped_early_at"] is None
    assert result.evaluation["published"] == "last" and result.evaluation["published_step"] == 6


def test_a_resumed_run_stops_and_publishes_as_an_uninterrupted_one(
        tmp_path: Path, files: tuple[Path, Path]) -> None:
    settings = spec(early_stopping_patience=2, publish_best=True)
    whole = run(tmp_path / "a", files, settings)
    expected = whole.train_loop()
    whole.save(tmp_path / "a" / "out")
    assert expected.evaluation and expected.evaluation["stopped_early_at"] > 8
    first = run(tmp_path / "b", files, settings, stopper := Reporter(stop_at=8))
    with pytest.raises(Stopped):
        first.train_loop()
    assert stopper.step == 8  # paused after the evaluation at step 8
    second = run(tmp_path / "c", files, settings, resume_from=first.save_checkpoint())
    result = second.train_loop()
    second.save(tmp_path / "c" / "out")
    assert result.evaluation == expected.evaluation
    a = load_file(str(tmp_path / "a" / "out" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "c" / "out" / "adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
