"""Jobs survive lost workers, shutdowns and pauses: they resume from their checkpoint and
publish exactly one adapter version."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from devstack.stack import LocalStack, _pid_alive
from tests.conftest import TenantHandle, wait_until
from tests.e2e.conftest import (
    all_events,
    first_metrics,
    wait_for,
    wait_for_worker,
)
from tests.integration.api.helpers import jsonl, prometheus_samples, sample, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

ROWS = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                      {"role": "assistant", "content": f"The number is {i}."}]}
        for i in range(24)]


def long_job(tenant: TenantHandle, suffix: str, epochs: int = 12) -> dict[str, Any]:
    file_id = upload_ok(tenant.client, jsonl(*ROWS))["id"]
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": file_id, "suffix": suffix,
        "seed": 5, "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": epochs, "batch_size": 1}}}})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for_checkpoint(tenant: TenantHandle, job_id: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        if data:
            return int(data[0]["step_number"])
        time.sleep(0.2)
    raise AssertionError("no checkpoint was written")


def kill_worker(local_stack: LocalStack, pid: int) -> None:
    """SIGKILL and wait until it is really gone (delivery is asynchronous)."""
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not _pid_alive(pid), f"process {pid} to die", 30)


def versions(tenant: TenantHandle, name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = tenant.client.get(
        f"/v1/adapters/{name}/versions").json()["data"]
    return data


def messages(tenant: TenantHandle, job_id: str) -> list[str]:
    return [e["message"] for e in all_events(tenant.client, job_id)]


def test_sigkill_after_a_checkpoint_resumes_on_a_new_worker(
        tenant: TenantHandle, local_stack: LocalStack) -> None:
    expiries = local_stack.metrics_url("scheduler")
    requeued_before = sample(prometheus_samples(expiries)[1], "loramill_lease_expiries_total",
                             outcome="requeued")
    job = long_job(tenant, "chaos")
    step = wait_for_checkpoint(tenant, job["id"])
    pid = int((local_stack.run_dir / "worker.pid").read_text())
    kill_worker(local_stack, pid)
    local_stack.up(pieces=("worker",), log=lambda _: None)  # reported crashed, restarted
    done = wait_for(tenant.client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    log = messages(tenant, job["id"])
    assert any(m.startswith("Worker lost") for m in log), log
    resumed = [m for m in log if m.startswith("Resuming from step")]
    assert resumed and int(resumed[0].split()[3]) >= step
    assert [v["fine_tuning_job_id"] for v in versions(tenant, "chaos")] == [job["id"]]
    assert sample(prometheus_samples(expiries)[1], "loramill_lease_expiries_total",
                  outcome="requeued") >= requeued_before + 1


def test_sigterm_checkpoints_and_hands_the_job_back(tenant: TenantHandle,
                                                    local_stack: LocalStack) -> None:
    job = long_job(tenant, "graceful")
    wait_for(tenant.client, job["id"], {"running"}, timeout=60)
    first_metrics(tenant.client, job["id"])
    pid = int((local_stack.run_dir / "worker.pid").read_text())
    asked = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while "Worker shutting down" not in " ".join(messages(tenant, job["id"])):
        assert time.monotonic() - asked < 30, "the job was not handed back"
        time.sleep(0.2)
    # The job is safe now (checkpointed, queued). The old process usually exits within
    # seconds, but may linger (see the developer notes); don't wait on it for the rest.
    deadline = time.monotonic() + 15
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        kill_worker(local_stack, pid)
    local_stack.up(pieces=("worker",), log=lambda _: None)
    wait_for_worker()
    done = wait_for(tenant.client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    log = messages(tenant, job["id"])
    assert any(m.startswith("Resuming from step") for m in log)
    assert not any(m.startswith("Worker lost") for m in log)  # a clean hand-back
    assert done["status"] == "succeeded" and done["error"] is None
    assert len(versions(tenant, "graceful")) == 1


def test_pause_frees_the_worker_and_resume_continues(tenant: TenantHandle) -> None:
    job = long_job(tenant, "pausable")
    wait_for(tenant.client, job["id"], {"running"}, timeout=60)
    first_metrics(tenant.client, job["id"])
    assert tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").status_code == 200
    paused = wait_for(tenant.client, job["id"], {"paused"}, timeout=30)
    assert paused["status"] == "paused"
    step = wait_for_checkpoint(tenant, job["id"])
    resumed = tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    done = wait_for(tenant.client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    log = messages(tenant, job["id"])
    assert any(m.startswith(f"Job paused at step {step}") for m in log), log
    assert any(m.startswith(f"Resuming from step {step}") for m in log), log
    assert len(versions(tenant, "pausable")) == 1
