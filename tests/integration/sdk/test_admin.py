"""Operators through the SDK (``Client(...).admin``) and the CLI (``loramill admin``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import loramill
import pytest

from tests.conftest import ROOT, AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok

MODEL = "loramill/tiny-llama"


def cli(stack: StackInfo, *args: str, admin_key: str | None = None,
        api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LORAMILL_ADMIN_KEY", "LORAMILL_API_KEY")}
    env["LORAMILL_BASE_URL"] = stack.api_url
    if admin_key:
        env["LORAMILL_ADMIN_KEY"] = admin_key
    if api_key:
        env["LORAMILL_API_KEY"] = api_key
    return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_sdk_admin(stack: StackInfo, admin: AdminHandle, tenant: TenantHandle) -> None:
    ops = loramill.Client(api_key=admin.key, base_url=stack.api_url).admin
    file_id = upload_ok(tenant.client)["id"]
    job_id = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file_id}).json()["id"]

    row = next(r for r in ops.queue().by_tenant if r["tenant_id"] == tenant.id)
    assert row["queued"] == 1
    (listed,) = list(ops.jobs(tenant_id=tenant.id, status=["queued", "running"]))
    assert (listed.id, listed.tenant_id) == (job_id, tenant.id)
    assert ops.set_priority(job_id, 10).raw["priority"] == 10
    with pytest.raises(loramill.NotFoundError):
        ops.requeue(job_id + "x")
    assert ops.cancel(job_id).status == "cancelled"
    with pytest.raises(loramill.APIError) as not_requeueable:
        ops.requeue(job_id)
    assert not_requeueable.value.code == "job_not_requeueable"

    created = ops.create_tenant(f"sdk-{uuid.uuid4().hex[:8]}", max_queued_jobs=3)
    assert created.max_queued_jobs == 3 and ops.tenant(created.id).name == created.name
    assert ops.set_quotas(created.id, max_running_jobs=5).max_running_jobs == 5
    key = ops.create_key(created.id, name="ci", scopes=["jobs:write"])
    assert key.secret and key.scopes == ["read", "jobs:write"]
    as_tenant = loramill.Client(api_key=key.secret, base_url=stack.api_url)
    assert list(as_tenant.files.list()) == []
    assert ops.suspend(created.id).suspended_at is not None
    with pytest.raises(loramill.AuthenticationError):
        list(as_tenant.files.list())
    ops.unsuspend(created.id)
    assert [k.id for k in ops.keys(created.id)] == [key.id]
    assert ops.revoke_key(created.id, key.id).revoked_at is not None
    assert created.id in {t.id for t in ops.tenants()}
    assert [e.action for e in ops.audit_log(target_id=created.id)] == [
        "tenant.unsuspend", "tenant.suspend", "tenant.quotas", "tenant.quotas",
        "tenant.create"]
    assert all(w.state in ("alive", "lost", "stopped") for w in ops.workers())
    with pytest.raises(TypeError, match="unknown quota gpus"):
        ops.set_quotas(created.id, gpus=1)

    tenant_ops = loramill.Client(api_key=tenant.key, base_url=stack.api_url).admin
    with pytest.raises(loramill.PermissionDeniedError, match="admin key"):
        tenant_ops.queue()


def test_cli_admin(stack: StackInfo, admin: AdminHandle, tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    job_id = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file_id}).json()["id"]

    queue = cli(stack, "admin", "queue", admin_key=admin.key)
    assert queue.returncode == 0, queue.stderr
    assert tenant.name in queue.stdout and "queued" in queue.stdout
    as_json = json.loads(cli(stack, "admin", "queue", "--json", admin_key=admin.key).stdout)
    assert as_json["totals"]["queued"] >= 1

    jobs = cli(stack, "admin", "jobs", "--tenant", tenant.id, "--json", admin_key=admin.key)
    assert [j["id"] for j in json.loads(jobs.stdout)] == [job_id]
    raised = cli(stack, "admin", "priority", job_id, "20", admin_key=admin.key)
    assert raised.returncode == 0 and "priority 20" in raised.stdout
    assert cli(stack, "admin", "priority", job_id, "500", admin_key=admin.key).returncode == 2
    assert cli(stack, "admin", "cancel", job_id, admin_key=admin.key).returncode == 0
    refused = cli(stack, "admin", "requeue", job_id, admin_key=admin.key)
    assert refused.returncode == 2 and "job_not_requeueable" in refused.stderr

    name = f"cli-{uuid.uuid4().hex[:8]}"
    made = cli(stack, "admin", "tenant-create", name, "--max-queued-jobs", "7", "--json",
               admin_key=admin.key)
    tenant_id = json.loads(made.stdout)["id"]
    key = cli(stack, "admin", "key-create", tenant_id, "--scope", "files:write",
              admin_key=admin.key)
    secret = key.stdout.strip()
    assert key.returncode == 0 and secret.startswith("lm-sk-") and "shown once" in key.stderr
    assert cli(stack, "files", "list", api_key=secret).returncode == 0
    assert cli(stack, "admin", "suspend", tenant_id, admin_key=admin.key).returncode == 0
    assert cli(stack, "files", "list", api_key=secret).returncode == 2  # 401: suspended
    audit = cli(stack, "admin", "audit", "--target", tenant_id, admin_key=admin.key)
    assert "tenant.suspend" in audit.stdout and f"key:{admin.key_id}" in audit.stdout

    # a tenant key on an admin command: refused, exit 2, and it says why
    denied = cli(stack, "admin", "queue", api_key=tenant.key)
    assert denied.returncode == 2 and "admin key" in denied.stderr
