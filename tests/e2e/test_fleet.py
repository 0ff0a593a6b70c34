"""A fleet on one machine: besides the stack's cpu worker, two worker processes of
another class (gpu-24gb, training on this CPU), each with a home of its own, against one
stack. Each takes only its class's jobs; a worker's SIGTERM checkpoints its job and hands
it back, and the other worker of the class resumes it to the end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from core.base_models import service as base_models
from core.base_models.models import BaseModel
from core.kit.db import admin_scope
from tests.conftest import ROOT, TenantHandle, wait_until
from tests.e2e.conftest import all_events, first_metrics, wait_for
from tests.integration.api.helpers import jsonl, upload_ok
from tests.unit.worker.training.test_schedule import say

if TYPE_CHECKING:
    from devstack.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
MODEL = "test/fleet-24gb"
NAMES = ("fleet-a", "fleet-b")


@pytest.fixture(scope="module")
def fleet(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, int]]:
    """Two gpu-24gb workers with homes of their own; their process ids by name."""
    copy = tmp_path_factory.mktemp("fleet") / "model"
    shutil.copytree(ROOT / ".loramill-test-models" / "tiny-llama", copy)
    with admin_scope() as session:
        base_models.register(session, MODEL, str(copy), gpu_class="gpu-24gb")
    pids = {}
    for name in NAMES:
        home = tmp_path_factory.mktemp(name)
        pids[name] = local_stack.start_worker(name, "gpu-24gb", env={
            "LORAMILL_HOME": str(home), "LORAMILL_METRICS_PORT": "0",
            "LORAMILL_CHECKPOINT_EVERY_STEPS": "5"})
    try:
        yield pids
    finally:
        for name in NAMES:
            local_stack._stop_pid(name)
        with admin_scope() as session:
            model = session.get(BaseModel, MODEL)
            if model is not None:
                model.enabled = False


def worker_pids(tenant: TenantHandle, job_id: str) -> list[int]:
    """The process ids of the workers that claimed the job, in order."""
    return [int(e["data"]["worker"].rsplit(":", 1)[1]) for e in all_events(tenant.client, job_id)
            if e["message"].startswith("Fine-tuning job started on")]


def create(tenant: TenantHandle, model: str, epochs: int) -> dict[str, Any]:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": model, "training_file": upload_ok(tenant.client, jsonl(*say(8)))["id"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": epochs, "batch_size": 2}}}})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def test_each_worker_takes_only_its_class_and_a_sigterm_hands_the_job_on(
        fleet: dict[str, int], local_stack: LocalStack, tenant: TenantHandle) -> None:
    cpu_worker = local_stack._read_pid("worker")
    on_cpu, on_gpu = create(tenant, "loramill/tiny-llama", 2), create(tenant, MODEL, 2)
    assert on_gpu["status"] == "queued"
    for job in (on_cpu, on_gpu):
        assert wait_for(tenant.client, job["id"], timeout=240)["status"] == "succeeded"
    assert worker_pids(tenant, on_cpu["id"]) == [cpu_worker]
    (gpu_pid,) = worker_pids(tenant, on_gpu["id"])
    assert gpu_pid in fleet.values()

    # a long one on the class: SIGTERM its worker mid-run, the other one finishes it
    long = create(tenant, MODEL, 40)
    first_metrics(tenant.client, long["id"], timeout=180)
    wait_until(lambda: any(e["message"].startswith("Checkpoint saved") for e in
                           all_events(tenant.client, long["id"])), "a checkpoint", 120)
    (first,) = worker_pids(tenant, long["id"])
    name = next(n for n, pid in fleet.items() if pid == first)
    local_stack._stop_pid(name, timeout=60)  # SIGTERM, as Kubernetes and compose send
    done = wait_for(tenant.client, long["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    second = worker_pids(tenant, long["id"])[-1]
    assert second != first and second in fleet.values()
    messages = [e["message"] for e in all_events(tenant.client, long["id"])]
    assert any(m.startswith("Worker shutting down: job checkpointed") for m in messages)
    assert any(m.startswith("Resuming from step") for m in messages)
