"""What keeps a real model's step within memory, checked for giving the same numbers:
the loss from hidden states a chunk at a time, and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.worker.training.test_schedule import Quiet, say, small_recipe
from worker.training import loss
from worker.training.data import IGNORE
from worker.training.recipe import Recipe


@pytest.mark.parametrize(("chunk", "softcap"), [(3, None), (1024, None), (5, 30.0)])
def test_chunked_loss_equals_the_whole_logits_loss(chunk: int, softcap: float | None) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :4] = IGNORE  # prompt tokens and padding are not trained on
    targets[1, 7:] = IGNORE

    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected, expected_n = loss.summed(logits, targets)
    expected.backward()  # type: ignore[no-untyped-call]
    grads = hidden.grad.clone(), head.weight.grad.clone()  # type: ignore[union-attr]
    hidden.grad, head.weight.grad = None, None

    got, n = loss.summed_from_hidden(hidden, head, targets, chunk_tokens=chunk,
                                     softcap=softcap)
    got.backward()  # type: ignore[no-untyped-call]
    assert n == expected_n == 12
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(hidden.grad, grads[0], atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(head.weight.grad, grads[1], atol=1e-6)  # type: ignore[arg-type]


def one_step(tmp_path: Path, **changes: Any) -> tuple[Recipe, dict[str, torch.Tensor]]:
    recipe = small_recipe(tmp_path, say(4, "{i} and more."), dropout=0.1, batch_size=4,
                          learning_rate=1e-2, **changes)
    recipe.step([0, 1, 2, 3])
    return recipe, {n: p.detach().clone() for n, p in recipe.model.named_parameters()
                    if p.requires_grad}


def test_gradient_checkpointing_is_on_for_4bit_and_changes_no_number(tmp_path: Path) -> None:
    on, with_checkpointing = one_step(tmp_path / "on")
    off, without = one_step(tmp_path / "off", gradient_checkpointing=False)
    assert on.checkpointing and on.model.get_base_model().is_activation_checkpointing
    assert not off.checkpointing
    assert with_checkpointing.keys() == without.keys()
    for name, value in with_checkpointing.items():  # dropout's masks replayed exactly
        assert torch.allclose(value, without[name], atol=1e-6), name


class Recording(Quiet):
    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, object] | None]] = []

    def message(self, text: str, **fields: object) -> None:
        data = fields.get("data")
        self.messages.append((str(fields.get("level", "info")), text,
                              data if isinstance(data, dict) else None))


def test_max_seq_len_truncates_says_so_and_bounds_every_micro_batch(tmp_path: Path) -> None:
    long = " ".join(f"word{i}" for i in range(60))
    reporter = Recording()
    recipe = small_recipe(tmp_path, say(3, long), reporter=reporter, batch_size=3,
                          max_seq_len=48, micro_batch_tokens=8)
    assert recipe.max_len == 48 and max(recipe.lengths) == 48
    assert recipe.micro_batch_tokens == 48  # a whole row always fits one micro-batch
    (warning,) = [m for m in reporter.messages if m[0] == "warn"]
    assert warning[1].startswith("3 training examples were longer than 48 tokens")
    assert warning[2] == {"truncated": 3, "max_len": 48}
    trained_loss, tokens, _ = recipe.step([0, 1, 2])
    assert tokens > 0 and trained_loss == trained_loss  # a finite step, rows kept whole
