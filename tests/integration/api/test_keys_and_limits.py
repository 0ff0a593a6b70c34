"""Tenants manage their own keys (with scopes); per-key rate limits; body caps; storage
quotas; JSON nesting caps in datasets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
from sqlalchemy import update

from core.kit.db import admin_scope
from core.tenants.models import Tenant
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, stored_state, upload, upload_ok


def client_for(stack: StackInfo, secret: str) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {secret}"})


def test_create_list_revoke_own_keys(stack: StackInfo, tenant: TenantHandle,
                                     other_tenant: TenantHandle) -> None:
    created = tenant.client.post("/v1/api_keys", json={"name": "ci"}).json()
    secret = created["secret"]
    assert secret.startswith("lm-sk-") and created["prefix"] == secret[:12]
    listed = tenant.client.get("/v1/api_keys").json()["data"]
    assert created["id"] in [k["id"] for k in listed]
    assert secret not in json.dumps(listed) and all(k["secret"] is None for k in listed)
    new = client_for(stack, secret)
    assert new.get("/v1/files").status_code == 200
    assert_error(other_tenant.client.delete(f"/v1/api_keys/{created['id']}"), 404)
    revoked = tenant.client.delete(f"/v1/api_keys/{created['id']}").json()
    assert revoked["revoked_at"] is not None
    assert_error(new.get("/v1/files"), 401, contains="revoked")


def test_read_only_keys_cannot_change_anything(stack: StackInfo, tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    secret = tenant.client.post("/v1/api_keys", json={"scopes": ["read"]}).json()["secret"]
    reader = client_for(stack, secret)
    assert reader.get(f"/v1/files/{file_id}").status_code == 200
    error = assert_error(reader.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": file_id}), 403, contains="jobs:write")
    assert error["code"] == "missing_scope"
    assert_error(upload(reader, jsonl(CHAT)), 403, contains="files:write")
    assert_error(reader.post("/v1/api_keys", json={}), 403, contains="keys:write")
    assert_error(tenant.client.post("/v1/api_keys", json={"scopes": ["root"]}), 400,
                 param="scopes")


def test_rate_limit_answers_429_with_retry_after(stack: StackInfo,
                                                 tenant: TenantHandle) -> None:
    """Eight clients at once, so the key asks faster than its refill rate (50/s) however
    slow the machine is (one client at a time barely outruns it on 2 loaded cores)."""
    statuses: list[int] = []
    found: list[httpx.Response] = []
    stop = threading.Event()

    def hammer() -> None:
        with client_for(stack, tenant.key) as client:
            for _ in range(400):
                if stop.is_set():
                    return
                response = client.get("/v1/models")
                statuses.append(response.status_code)
                if response.status_code == 429:
                    found.append(response)
                    stop.set()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert found, f"no 429 after {len(statuses)} rapid requests"
    limited = found[0]
    assert statuses.count(200) >= 100  # the burst
    error = assert_error(limited, 429, contains="requests/s per API key")
    assert error["type"] == "rate_limit_error"
    wait = int(limited.headers["retry-after"])
    time.sleep(wait)
    assert tenant.client.get("/v1/models").status_code == 200


def test_request_bodies_are_capped(tenant: TenantHandle) -> None:
    big = {"model": "loramill/tiny-llama", "training_file": "f",
           "metadata": {"k": "x" * (2 * 1024 * 1024)}}
    error = assert_error(tenant.client.post("/v1/fine_tuning/jobs", json=big), 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "m", "metadata": {"k": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    response = tenant.client.post("/v1/fine_tuning/jobs", content=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert_error(response, 413)


def test_storage_quota(tenant: TenantHandle) -> None:
    upload_ok(tenant.client, jsonl(CHAT))
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id)
                        .values(storage_bytes=len(jsonl(CHAT)) + 200))
    before = stored_state(tenant.id)
    error = assert_error(upload(tenant.client, jsonl(CHAT, CHAT)), 413, contains="quota")
    assert error["code"] == "storage_quota_exceeded"
    assert stored_state(tenant.id) == before


def test_deeply_nested_dataset_lines_are_refused(tenant: TenantHandle) -> None:
    deep: object = "x"
    for _ in range(40):
        deep = [deep]
    line = json.dumps({"messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}],
                       "tools": [{"type": "function", "function": {
                           "name": "f", "parameters": {"deep": deep}}}]})
    error = assert_error(upload(tenant.client, (line + "\n").encode()), 400,
                         contains="line 1: JSON is nested")
    assert "the limit is 32" in error["message"]
