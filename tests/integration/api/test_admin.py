"""The operators' API: queue, workers, jobs across tenants, steering, tenant management,
and the audit log every action writes to."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.jobs.models import FineTuningJob
from core.jobs.state import JobStatus
from core.kit.db import admin_scope
from core.kit.orm import utcnow
from core.scheduling.models import Worker
from tests.conftest import AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import assert_error, upload_ok

MODEL = "loramill/tiny-llama"

ADMIN_ROUTES = [
    ("GET", "/v1/admin/queue"), ("GET", "/v1/admin/workers"), ("GET", "/v1/admin/jobs"),
    ("GET", "/v1/admin/jobs/ftjob-x"), ("POST", "/v1/admin/jobs/ftjob-x/requeue"),
    ("POST", "/v1/admin/jobs/ftjob-x/cancel"), ("POST", "/v1/admin/jobs/ftjob-x/priority"),
    ("GET", "/v1/admin/tenants"), ("POST", "/v1/admin/tenants"),
    ("POST", "/v1/admin/tenants/t/suspend"), ("POST", "/v1/admin/tenants/t/quotas"),
    ("POST", "/v1/admin/tenants/t/api_keys"), ("DELETE", "/v1/admin/tenants/t/api_keys/k"),
    ("GET", "/v1/admin/audit_log"),
]


def new_job(tenant: TenantHandle, **fields: Any) -> dict[str, Any]:
    file_id = upload_ok(tenant.client)["id"]
    response = tenant.client.post("/v1/fine_tuning/jobs",
                                  json={"model": MODEL, "training_file": file_id, **fields})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def force(job_id: str, **values: Any) -> None:
    with admin_scope() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(**values))


def audit_of(admin: AdminHandle, target_id: str) -> list[dict[str, Any]]:
    page = admin.client.get("/v1/admin/audit_log", params={"target_id": target_id}).json()
    return list(reversed(page["data"]))  # oldest first


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_tenant_keys_and_strangers_are_refused(method: str, path: str, tenant: TenantHandle,
                                               stack: StackInfo) -> None:
    error = assert_error(tenant.client.request(method, path, json={}), 403)
    assert error["code"] == "admin_only"
    assert_error(httpx.request(method, stack.api_url + path), 401)


def test_jobs_across_tenants_with_filters(admin: AdminHandle, tenant: TenantHandle,
                                          other_tenant: TenantHandle) -> None:
    mine, theirs = new_job(tenant), new_job(other_tenant)
    force(theirs["id"], created_at=utcnow() - timedelta(hours=2))
    listed = admin.client.get("/v1/admin/jobs", params={"limit": 100}).json()
    ids = {j["id"]: j for j in listed["data"]}
    assert {mine["id"], theirs["id"]} <= set(ids)
    assert ids[mine["id"]]["tenant_id"] == tenant.id
    assert ids[theirs["id"]]["tenant_id"] == other_tenant.id

    def ids_for(**params: Any) -> set[str]:
        page = admin.client.get("/v1/admin/jobs", params={"limit": 100, **params})
        assert page.status_code == 200, page.text
        return {j["id"] for j in page.json()["data"]}

    assert ids_for(tenant_id=tenant.id) == {mine["id"]}
    assert theirs["id"] in ids_for(older_than_seconds=3600)
    assert mine["id"] not in ids_for(older_than_seconds=3600)
    assert ids_for(tenant_id=tenant.id, status="succeeded,failed") == set()
    assert ids_for(tenant_id=tenant.id, status="queued") == {mine["id"]}
    assert_error(admin.client.get("/v1/admin/jobs", params={"status": "done"}), 400,
                 param="status", contains="unknown status done")
    assert_error(admin.client.get("/v1/admin/jobs/ftjob-nope"), 404)


def test_queue_by_tenant_with_oldest_age(admin: AdminHandle, tenant: TenantHandle) -> None:
    first, _ = new_job(tenant), new_job(tenant)
    force(first["id"], created_at=utcnow() - timedelta(minutes=20))
    queue = admin.client.get("/v1/admin/queue").json()
    row = next(r for r in queue["by_tenant"] if r["tenant_id"] == tenant.id)
    assert (row["queued"], row["running"], row["gpu_class"]) == (2, 0, "cpu")
    assert row["tenant_name"] == tenant.name
    assert 1190 <= row["oldest_queued_age_seconds"] <= 1300
    assert queue["oldest_queued_age_seconds"] >= row["oldest_queued_age_seconds"]
    assert queue["totals"]["queued"] >= 2
    assert set(queue["rates"]) == {"window_seconds", "dispatched_per_minute",
                                   "completed_per_minute", "finished"}


def test_workers_alive_and_lost(admin: AdminHandle) -> None:
    now = utcnow()
    with admin_scope() as session:
        session.add_all([
            Worker(id="test-host:1", hostname="test-host", gpu_class="a100", capacity=1,
                   last_heartbeat_at=now),
            Worker(id="test-host:2", hostname="test-host", gpu_class="a100", capacity=1,
                   last_heartbeat_at=now - timedelta(minutes=10)),
        ])
    try:
        found = {w["id"]: w for w in admin.client.get("/v1/admin/workers").json()["data"]}
        assert found["test-host:1"]["state"] == "alive"
        assert found["test-host:2"]["state"] == "lost"
        assert found["test-host:1"]["capacity"] == 1
        assert found["test-host:1"]["running_jobs"] == []
    finally:
        with admin_scope() as session:
            for worker_id in ("test-host:1", "test-host:2"):
                session.delete(session.get(Worker, worker_id))


def test_priority_cancel_and_requeue_are_audited(admin: AdminHandle,
                                                 tenant: TenantHandle) -> None:
    job = new_job(tenant)
    url = f"/v1/admin/jobs/{job['id']}"
    raised = admin.client.post(f"{url}/priority", json={"priority": 50})
    assert raised.status_code == 200 and raised.json()["priority"] == 50
    assert_error(admin.client.post(f"{url}/priority", json={"priority": 1000}), 400,
                 param="priority")

    # a failed job goes back to the queue with a fresh allowance of attempts
    force(job["id"], status=JobStatus.FAILED, attempt=3, finished_at=utcnow(),
          error={"code": "worker_lost", "message": "lost", "param": None})
    requeued = admin.client.post(f"{url}/requeue").json()
    assert (requeued["status"], requeued["attempt"], requeued["error"]) == ("queued", 0, None)
    events = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert "Job requeued by an operator (was failed)" in [e["message"] for e in events]

    cancelled = admin.client.post(f"{url}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == \
        "cancelled"
    error = assert_error(admin.client.post(f"{url}/requeue"), 400)
    assert error["code"] == "job_not_requeueable"
    assert_error(admin.client.post(f"{url}/priority", json={"priority": 1}), 400)
    assert_error(admin.client.post("/v1/admin/jobs/ftjob-nope/cancel"), 404)

    trail = audit_of(admin, job["id"])
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("job.priority", f"key:{admin.key_id}"), ("job.requeue", f"key:{admin.key_id}"),
        ("job.cancel", f"key:{admin.key_id}")]
    assert trail[0]["details"] == {"from": 0, "to": 50}
    assert trail[1]["details"] == {"from": "failed"}
    assert all(e["tenant_id"] == tenant.id and e["created_at"] > 0 for e in trail)


def test_requeue_a_running_job_revokes_its_lease(admin: AdminHandle,
                                                 tenant: TenantHandle) -> None:
    job = new_job(tenant)
    force(job["id"], status=JobStatus.RUNNING, lease_token="old-lease", worker_id="gone:1",
          started_at=utcnow())
    requeued = admin.client.post(f"/v1/admin/jobs/{job['id']}/requeue").json()
    assert (requeued["status"], requeued["worker_id"]) == ("queued", None)
    with admin_scope() as session:
        row = session.get(FineTuningJob, job["id"])
        assert row is not None and row.lease_token is None  # the old worker's writes fail


def test_tenant_lifecycle(admin: AdminHandle, stack: StackInfo) -> None:
    name = f"acme-{utcnow().timestamp():.0f}"
    created = admin.client.post("/v1/admin/tenants", json={
        "name": name, "quotas": {"max_queued_jobs": 1, "max_running_jobs": 4}})
    assert created.status_code == 200, created.text
    tenant = created.json()
    assert (tenant["max_queued_jobs"], tenant["max_running_jobs"]) == (1, 4)
    assert_error(admin.client.post("/v1/admin/tenants", json={"name": name}), 409)
    assert_error(admin.client.post("/v1/admin/tenants", json={"name": ""}), 400)
    tid = tenant["id"]

    issued = admin.client.post(f"/v1/admin/tenants/{tid}/api_keys",
                               json={"name": "ci", "scopes": ["jobs:write", "files:write"]})
    assert issued.status_code == 200, issued.text
    key = issued.json()
    assert key["secret"].startswith("lm-sk-") and "read" in key["scopes"]
    client = httpx.Client(base_url=stack.api_url, timeout=60,
                          headers={"Authorization": f"Bearer {key['secret']}"})
    handle = TenantHandle(id=tid, name=name, key=key["secret"], client=client)
    new_job(handle)
    quota = handle.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": upload_ok(handle.client)["id"]})
    assert assert_error(quota, 429)["code"] == "max_queued_jobs_exceeded"
    raised = admin.client.post(f"/v1/admin/tenants/{tid}/quotas", json={"max_queued_jobs": 5})
    assert raised.json()["max_queued_jobs"] == 5
    new_job(handle)
    assert_error(admin.client.post(f"/v1/admin/tenants/{tid}/quotas",
                                   json={"max_queued_jobs": -1}), 400)
    assert_error(admin.client.post(f"/v1/admin/tenants/{tid}/quotas", json={"gpus": 3}), 400)

    suspended = admin.client.post(f"/v1/admin/tenants/{tid}/suspend").json()
    assert suspended["suspended_at"] is not None
    assert assert_error(client.get("/v1/files"), 401)["code"] == "account_suspended"
    admin.client.post(f"/v1/admin/tenants/{tid}/unsuspend")
    assert client.get("/v1/files").status_code == 200

    listed = admin.client.get(f"/v1/admin/tenants/{tid}/api_keys").json()["data"]
    assert [k["prefix"] for k in listed] == [key["prefix"]] and listed[0]["secret"] is None
    revoked = admin.client.delete(f"/v1/admin/tenants/{tid}/api_keys/{key['id']}")
    assert revoked.json()["revoked_at"] is not None
    assert assert_error(client.get("/v1/files"), 401)["code"] == "revoked_api_key"
    assert_error(admin.client.delete(f"/v1/admin/tenants/{tid}/api_keys/key-nope"), 404)
    assert_error(admin.client.post("/v1/admin/tenants/tenant-nope/suspend"), 404)
    assert admin.client.get(f"/v1/admin/tenants/{tid}").json()["name"] == name
    client.close()

    actions = [e["action"] for e in audit_of(admin, tid)]
    assert actions == ["tenant.create", "tenant.quotas", "tenant.quotas", "tenant.suspend",
                       "tenant.unsuspend"]
    assert [e["action"] for e in audit_of(admin, key["id"])] == ["key.create", "key.revoke"]
    assert all(key["secret"] not in str(e) for e in audit_of(admin, key["id"]))
