"""What a failed job says for each kind of failure (worker/runner.explain)."""

from __future__ import annotations

import pytest
import torch

from core.kit.storage import StorageUnavailable
from worker.runner import explain
from worker.training.data import NoTrainableTokens
from worker.training.model import UnreadableModel


@pytest.mark.parametrize(("exc", "code", "param"), [
    (NoTrainableTokens("nothing to learn"), "no_trainable_tokens", "training_file"),
    (UnreadableModel("no safetensors"), "base_model_unreadable", "model"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out_of_memory", "hyperparameters.batch_size"),
    (MemoryError(), "out_of_memory", "hyperparameters.batch_size"),
    (StorageUnavailable("download", RuntimeError("connection refused")),
     "storage_unavailable", None),
    (ZeroDivisionError("division by zero"), "training_error", None),
])
def test_each_failure_gets_a_code_and_a_message(exc: BaseException, code: str,
                                                 param: str | None) -> None:
    error = explain(exc)
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    if code == "training_error":
        assert error["message"] == "ZeroDivisionError: division by zero"
    if code == "out_of_memory":
        assert "batch_size" in error["message"]
