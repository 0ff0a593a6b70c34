"""Training queues are named once by class, never with a doubled prefix."""

from __future__ import annotations

import pytest

from core.base_models.memory import CLASS_ORDER
from core.kit.queue import SCHEDULER_QUEUE, class_of, queue_for


@pytest.mark.parametrize("gpu_class", CLASS_ORDER)
def test_each_class_has_one_queue_and_it_names_the_class(gpu_class: str) -> None:
    name = queue_for(gpu_class)
    assert name == f"train-{gpu_class}" and "gpu-gpu" not in name
    assert class_of(name) == gpu_class


def test_the_schedulers_queue_is_no_training_queue() -> None:
    assert class_of(SCHEDULER_QUEUE) is None
    assert len({queue_for(c) for c in CLASS_ORDER}) == len(CLASS_ORDER)
