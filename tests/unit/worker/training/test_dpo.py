"""DPO on the real tiny model in 4-bit: the adapter learns to prefer the preferred answers
(the DPO loss falls from log 2, and the preference margins over the base model turn
positive), and a supervised job refuses preference data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.unit.worker.training.test_resume import Reporter
from worker.training import tinymodel
from worker.training.model import LoraSpec
from worker.training.recipe import Recipe, TrainSpec

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
CITIES = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid")]


def spec(method: str) -> TrainSpec:
    return TrainSpec(n_epochs=6, batch_size=2, learning_rate=5e-3, seed=3, method=method,
                     beta=0.5, lora=LoraSpec(r=8, alpha=16, dropout=0.0,
                                             target_modules="all-linear", quantization="nf4"),
                     checkpoint_every=-1)


def preference_file(path: Path) -> Path:
    rows = [{"input": {"messages": [{"role": "user", "content": f"Capital of {country}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{city}."}],
             "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]}
            for country, city in CITIES]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_dpo_learns_the_preference(tmp_path: Path) -> None:
    tinymodel.ensure(MODEL_DIR)
    train = preference_file(tmp_path / "prefs.jsonl")
    recipe = Recipe(spec("dpo"), MODEL_DIR, train, Reporter(), valid_file=train,
                    work_dir=tmp_path)
    recipe.setup()
    with torch.no_grad():
        _, before = recipe._dpo_losses(list(recipe.train.examples))
    start = recipe.evaluate(recipe.valid)  # type: ignore[arg-type]
    assert abs(start - math.log(2)) < 1e-3  # the adapter starts equal to the reference
    assert not before.any()
    result = recipe.train_loop()
    with torch.no_grad():
        _, after = recipe._dpo_losses(list(recipe.train.examples))
    assert result.valid_loss is not None and result.valid_loss < 0.5 * math.log(2)
    assert bool(after.all()), after  # every pair now preferred by more than the base model


def test_preference_accuracy_rises_on_held_out_pairs(tmp_path: Path) -> None:
    """The metrics a DPO job reports: the share of pairs the adapter prefers as labelled
    (by more than the base model does), on the step's pairs and on validation pairs of
    countries it never trained on."""
    tinymodel.ensure(MODEL_DIR)
    train = preference_file(tmp_path / "prefs.jsonl")
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("\n".join(json.dumps({
        "input": {"messages": [{"role": "user", "content": f"Capital of {country}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"{city}."}],
        "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]})
        for country, city in [("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
                              ("Chile", "Santiago")]))
    recipe = Recipe(TrainSpec(**{**spec("dpo").__dict__, "eval_every": 2}), MODEL_DIR, train,
                    Reporter(), valid_file=held_out, work_dir=tmp_path)
    recipe.setup()
    recipe.evaluate(recipe.valid)  # type: ignore[arg-type]
    assert recipe.eval_stats == {"preference_accuracy": 0.0}  # the adapter is the base
    history = recipe.train_loop().history
    train_curve = [h["train_preference_accuracy"] for h in history]
    valid_curve = [h["valid_preference_accuracy"] for h in history if "valid_loss" in h]
    assert train_curve[0] == 0.0 and train_curve[-1] == 1.0, train_curve
    # from none of the unseen pairs before training to all of them
    assert valid_curve and valid_curve[-1] == 1.0, valid_curve


def test_a_supervised_recipe_refuses_preference_data(tmp_path: Path) -> None:
    tinymodel.ensure(MODEL_DIR)
    recipe = Recipe(spec("supervised"), MODEL_DIR, preference_file(tmp_path / "p.jsonl"),
                    Reporter(), work_dir=tmp_path)
    with pytest.raises(ValueError, match="a supervised job cannot train on preference data"):
        recipe.setup()
