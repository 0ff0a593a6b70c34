"""Outages of the services we depend on: Redis, S3 and PostgreSQL, each stopped for real."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import LocalStack
from tests.conftest import TenantHandle
from tests.e2e.conftest import wait_for, wait_for_worker
from tests.integration.api.helpers import CHAT, assert_error, jsonl, stored_state, upload, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]


def quick_job(tenant: TenantHandle) -> httpx.Response:
    file_id = upload_ok(tenant.client, jsonl(CHAT))["id"]
    return tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}})


@pytest.fixture
def restore(local_stack: LocalStack) -> Iterator[None]:
    yield
    local_stack.up(pieces=("postgres", "redis", "s3"), log=lambda _: None)


@pytest.mark.usefixtures("restore")
def test_redis_down_when_a_job_is_created(tenant: TenantHandle,
                                          local_stack: LocalStack) -> None:
    local_stack._stop_pid("redis")
    created = quick_job(tenant)
    assert created.status_code == 200, created.text  # committed: PostgreSQL is the truth
    job_id = created.json()["id"]
    time.sleep(2)
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"
    local_stack.up(pieces=("redis",), log=lambda _: None)
    done = wait_for(tenant.client, job_id, timeout=120)
    assert done["status"] == "succeeded", done["error"]


@pytest.mark.usefixtures("restore")
def test_s3_down_during_an_upload_is_a_503_with_nothing_left(
        tenant: TenantHandle, local_stack: LocalStack) -> None:
    local_stack._stop_pid("s3")
    response = upload(tenant.client, jsonl(CHAT) * 50)
    error = assert_error(response, 503, contains="object storage is unavailable")
    assert error["code"] == "storage_unavailable"
    local_stack.up(pieces=("s3",), log=lambda _: None)
    assert stored_state(tenant.id) == (0, [])
    assert upload(tenant.client, jsonl(CHAT)).status_code == 200


@pytest.mark.usefixtures("restore")
def test_postgres_restart_needs_no_restart_of_api_or_workers(
        tenant: TenantHandle, local_stack: LocalStack) -> None:
    assert tenant.client.get("/v1/files").status_code == 200
    local_stack._stop_postgres()
    error = assert_error(tenant.client.get("/v1/files"), 503, contains="database")
    assert error["code"] == "database_unavailable"
    keyed = tenant.client.post("/v1/fine_tuning/jobs", json={"model": "m", "training_file": "f"},
                               headers={"Idempotency-Key": "while-the-database-is-down"})
    assert assert_error(keyed, 503)["code"] == "database_unavailable"
    assert keyed.headers["retry-after"]
    local_stack.up(pieces=("postgres",), log=lambda _: None)
    deadline = time.monotonic() + 30
    while tenant.client.get("/v1/files").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.5)
    wait_for_worker()
    created = quick_job(tenant)
    assert created.status_code == 200
    done = wait_for(tenant.client, created.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
