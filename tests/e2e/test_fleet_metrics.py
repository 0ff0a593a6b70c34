"""What a fleet's Prometheus sees: the scheduler's own metrics (each tick timed, the last
one's time as its liveness, the build), job outcomes, and per-tenant queue depth and
age: the queue read from PostgreSQL, where the demand is (an autoscaler's signal)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from core.base_models import service as base_models
from core.base_models.models import BaseModel
from core.kit.db import admin_scope
from tests.conftest import ROOT, StackInfo, TenantHandle, wait_until
from tests.integration.api.helpers import Samples, prometheus_samples, sample, upload_ok

if TYPE_CHECKING:
    from devstack.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def gpu_model(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model registered for gpu-24gb workers, which this stack does not run: its
    jobs wait in the queue."""
    copy = tmp_path_factory.mktemp("m") / "model"
    shutil.copytree(ROOT / ".loramill-test-models" / "tiny-llama", copy)
    with admin_scope() as session:
        base_models.register(session, "test/gpu-only", str(copy), gpu_class="gpu-24gb")
    yield "test/gpu-only"
    with admin_scope() as session:
        model = session.get(BaseModel, "test/gpu-only")
        if model is not None:
            model.enabled = False


def test_the_scheduler_reports_its_ticks_and_the_api_the_demand(
        stack: StackInfo, local_stack: LocalStack, tenant: TenantHandle,
        gpu_model: str) -> None:
    scheduler = local_stack.metrics_url("scheduler")

    def both_ticked() -> tuple[str, Samples] | None:
        # beat sends dispatch and sweep in no set order, and a tick whose message expired
        # behind a busy scheduler never runs: wait for one of each
        text, found = prometheus_samples(scheduler)
        ticked = all(sample(found, "loramill_scheduler_tick_seconds_count", task=task)
                     for task in ("dispatch", "sweep"))
        return (text, found) if ticked else None

    text, found = wait_until(both_ticked, "the scheduler's first timed dispatch and sweep", 60)
    last = sample(found, "loramill_scheduler_last_tick_timestamp_seconds", task="dispatch")
    assert abs(time.time() - last) < 30
    assert "loramill_build_info{" in text

    job = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": gpu_model, "training_file": upload_ok(tenant.client)["id"]}).json()
    assert job["status"] == "queued"
    time.sleep(1.5)
    _, api = prometheus_samples(f"{stack.api_url}/metrics")
    assert sample(api, "loramill_tenant_queued_jobs", tenant_id=tenant.id,
                  gpu_class="gpu-24gb") == 1
    assert sample(api, "loramill_tenant_oldest_queued_job_age_seconds", tenant_id=tenant.id,
                  gpu_class="gpu-24gb") >= 1
    before = sample(api, "loramill_jobs_finished_total", gpu_class="gpu-24gb",
                    status="cancelled")
    tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    _, api = prometheus_samples(f"{stack.api_url}/metrics")
    assert sample(api, "loramill_jobs_finished_total", gpu_class="gpu-24gb",
                  status="cancelled") == before + 1
    assert sample(api, "loramill_tenant_queued_jobs", tenant_id=tenant.id,
                  gpu_class="gpu-24gb") == 0


