"""A worker that owns several devices runs one job across them: a ``gpu-multi`` worker
(two gloo ranks on this CPU, LORAMILL_TRAINING_DEVICES=2) takes a job on a model pinned
to that class, trains it with FSDP (the layers sharded over the ranks) as rank 0 with a
helper rank, and publishes the adapter, gathered."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.base_models import service as base_models
from core.base_models.models import BaseModel
from core.kit.db import admin_scope
from tests.conftest import ROOT, TenantHandle
from tests.e2e.conftest import all_events, wait_for
from tests.integration.api.helpers import jsonl, upload_ok
from tests.unit.worker.training.test_schedule import say
from worker.training import tinymodel

if TYPE_CHECKING:
    from devstack.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
MODEL = "test/tiny-multi"


@pytest.fixture(scope="module")
def multi_worker(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """The tiny model registered on the gpu-multi class, and a worker for that class."""
    copy = tmp_path_factory.mktemp("multi") / "model"
    shutil.copytree(tinymodel.ensure(ROOT / ".loramill-test-models" / "tiny-llama"), copy)
    with admin_scope() as session:
        base_models.register(session, MODEL, str(copy), gpu_class="gpu-multi")
    local_stack.start_worker("worker-multi", "gpu-multi", env={
        "LORAMILL_TRAINING_DEVICES": "2", "LORAMILL_METRICS_PORT": "0"})
    try:
        yield MODEL
    finally:
        local_stack._stop_pid("worker-multi")
        with admin_scope() as session:
            model = session.get(BaseModel, MODEL)
            if model is not None:
                model.enabled = False


def test_a_gpu_multi_worker_trains_one_job_on_two_ranks(multi_worker: str,
                                                        tenant: TenantHandle,
                                                        tmp_path: Path) -> None:
    file_id = upload_ok(tenant.client, jsonl(*say(16)))["id"]
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": multi_worker, "training_file": file_id, "seed": 5,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 8}}}})
    assert response.status_code == 200, response.text
    job = wait_for(tenant.client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    messages = [e["message"] for e in all_events(tenant.client, job["id"])]
    assert any(m.startswith("Job queued for a gpu-multi worker") for m in messages)
    # a gpu-multi worker shards the model over its devices (FSDP)
    assert any("on cpu x 2 (FSDP)" in m for m in messages), messages
    assert job["fine_tuned_model"].startswith(f"ft:{multi_worker}:")
