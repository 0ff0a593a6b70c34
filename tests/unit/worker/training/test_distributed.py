"""One job across two processes (gloo on CPU, the torchrun contract), data-parallel and
sharded (FSDP): the same adapter as one process, within float-summation tolerance; a stop
decided by rank 0 stops both ranks; a sharded run resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.worker.training.test_schedule import MODEL_DIR, Quiet, say, small_recipe
from worker.training import distributed
from worker.training.rank import job_arguments
from worker.training.recipe import Recipe, Stopped


@pytest.mark.parametrize(("world", "sizes"), [(1, [5, 1, 3]), (2, [5, 1, 3, 3, 2]),
                                              (3, [9, 1, 1, 1, 1, 1]), (4, [2])])
def test_share_splits_every_part_once_and_balances(world: int, sizes: list[int]) -> None:
    parts = list(range(len(sizes)))
    shares = [distributed.Group(rank, world).share(parts, sizes) for rank in range(world)]
    assert sorted(p for share in shares for p in share) == parts
    loads = [sum(sizes[p] for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes)
    assert all(share == sorted(share) for share in shares)  # in the step's order


class StopAt(Quiet):
    def __init__(self, step: int):
        self.step, self.at = 0, step

    def metrics(self, values: dict[str, object]) -> None:
        self.step = int(values["step"])  # type: ignore[call-overload]

    def should_stop(self) -> str | None:  # type: ignore[override]
        return "pause" if self.step >= self.at else None


def two_ranks(tmp: Path, like: Recipe, reporter: Quiet, resume: Path | None = None, *,
              shard: bool = False) -> Recipe:
    """``like``'s run as rank 0 of two, rank 1 a helper process (worker/training/rank.py);
    ``shard``: FSDP, the layers' weights and LoRA parameters split between them."""
    tmp.mkdir(parents=True)
    job = job_arguments(like.spec, MODEL_DIR, like.train_file, valid_file=like.valid_file,
                        work_dir=tmp, resume_from=resume)
    with distributed.started(2, job, tmp, shard=shard) as group:
        assert group.shard == shard
        recipe = Recipe(like.spec, MODEL_DIR, like.train_file, reporter,
                        valid_file=like.valid_file, work_dir=tmp, group=group)
        recipe.setup(resume_from=resume)
        try:
            recipe.train_loop()
        except Stopped:  # as the runner does: a sharded run checkpointed together already
            if recipe.position.step != recipe.last_checkpoint_step:
                recipe.save_checkpoint()
    return recipe


def weights(recipe: Recipe, where: Path) -> dict[str, torch.Tensor]:
    recipe.save(where)
    return load_file(str(where / "adapter_model.safetensors"))


@dataclasses.dataclass
class Single:
    recipe: Recipe
    adapter: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Single:
    """The run in one process: what two must match (3 steps an epoch, 2 epochs, several
    micro-batches a step, a validation set)."""
    tmp = tmp_path_factory.mktemp("one")
    one = small_recipe(tmp, say(24, "{i} and {i} again."), valid=True, batch_size=8,
                       n_epochs=2, max_seq_len=64, micro_batch_tokens=64)
    assert len(one.batches(0)) == 3
    one.train_loop()
    return Single(one, weights(one, tmp / "adapter"))


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) < 1e-5


@pytest.mark.parametrize("shard", [False, True], ids=["data-parallel", "fsdp"])
def test_two_processes_train_what_one_does(single: Single, tmp_path: Path,
                                          shard: bool) -> None:
    one = single.recipe
    two = two_ranks(tmp_path / "two", one, Quiet(), shard=shard)
    assert_same(single.adapter, weights(two, tmp_path / "two" / "adapter"))
    assert [h["train_loss"] for h in two.history] == pytest.approx(
        [h["train_loss"] for h in one.history], rel=1e-5)
    assert two.history[-1]["valid_loss"] == pytest.approx(one.history[-1]["valid_loss"],
                                                          rel=1e-5)


def test_sharded_ranks_stop_together_and_resume_to_the_same_adapter(
        single: Single, tmp_path: Path) -> None:
    """Rank 0 pauses after step 2: both ranks stop there and checkpoint together (the
    shards gathered); two ranks resume from it to the uninterrupted adapter."""
    paused = two_ranks(tmp_path / "paused", single.recipe, StopAt(2), shard=True)
    assert paused.position.step == 2
    checkpoint = tmp_path / "paused" / "checkpoints" / "step-2"
    resumed = two_ranks(tmp_path / "resumed", single.recipe, Quiet(), resume=checkpoint,
                        shard=True)
    assert resumed.position.step == single.recipe.total_steps
    assert_same(single.adapter, weights(resumed, tmp_path / "resumed" / "adapter"))


def test_the_spec_survives_the_trip_to_a_helper(tmp_path: Path) -> None:
    from worker.training.rank import spec_of

    recipe = small_recipe(tmp_path, say(4), batch_size=2, max_seq_len=128)
    assert spec_of(dataclasses.asdict(recipe.spec)) == recipe.spec
