"""Idempotency-Key, as Stripe defines it: retries replay the first response, but only to a
caller allowed to make the request now, and only for requests that reached their endpoint;
401, 403, 429 and conflicts are never stored, nor is any secret; a reused key with another
body is refused; concurrent duplicates make one job; keys are per tenant (operators have
their own)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import select, update

from core.idempotency.models import IdempotencyKey
from core.kit.db import admin_scope
from core.kit.orm import utcnow
from core.tenants.models import Tenant
from tests.conftest import AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload, upload_ok

MODEL = "loramill/tiny-llama"


def test_same_key_same_body_replays_the_first_response(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    body = {"model": MODEL, "training_file": file_id}
    headers = {"Idempotency-Key": "create-1"}
    first = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    again = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(tenant.client.get("/v1/fine_tuning/jobs").json()["data"]) == 1


def test_same_key_different_body_is_refused(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    headers = {"Idempotency-Key": "create-2"}
    tenant.client.post("/v1/fine_tuning/jobs", headers=headers,
                       json={"model": MODEL, "training_file": file_id})
    other = tenant.client.post("/v1/fine_tuning/jobs", headers=headers,
                               json={"model": MODEL, "training_file": file_id, "seed": 3})
    error = assert_error(other, 422, param="Idempotency-Key", contains="different request")
    assert error["code"] == "idempotency_key_reused"


def test_fifty_concurrent_identical_creates_make_one_job(stack: StackInfo,
                                                         tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.api_url, timeout=120,
                          headers={"Authorization": f"Bearer {tenant.key}",
                                   "Idempotency-Key": "burst"}) as client:
            for _ in range(100):  # past the tenant's concurrency cap: retry, as the SDK does
                response = client.post("/v1/fine_tuning/jobs",
                                       json={"model": MODEL, "training_file": file_id})
                if response.status_code != 429:
                    return response
                time.sleep(0.1)
            return response

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(tenant.client.get("/v1/fine_tuning/jobs").json()["data"]) == 1


def test_uploads_replay_and_errors_are_replayed_too(tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "upload-1"}
    data = jsonl(CHAT)
    first = tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": ("a.jsonl", data)}, headers=headers)
    again = tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": ("a.jsonl", data)}, headers=headers)
    assert again.json() == first.json()
    assert len(tenant.client.get("/v1/files").json()["data"]) == 1
    bad = {"Idempotency-Key": "upload-bad"}
    refused = [tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                                  files={"file": ("b.jsonl", b"nope\n")}, headers=bad)
               for _ in range(2)]
    assert [r.status_code for r in refused] == [400, 400]
    assert refused[0].json() == refused[1].json()


def test_keys_are_scoped_per_tenant(tenant: TenantHandle, other_tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "shared-name"}
    mine = upload(tenant.client, jsonl(CHAT))
    assert mine.status_code == 200
    theirs = other_tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                                      files={"file": ("t.jsonl", jsonl(CHAT))},
                                      headers=headers)
    first_mine = tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                                    files={"file": ("t.jsonl", jsonl(CHAT))}, headers=headers)
    assert theirs.status_code == first_mine.status_code == 200
    assert theirs.json()["id"] != first_mine.json()["id"]


def test_a_too_long_key_is_a_400(tenant: TenantHandle) -> None:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={},
                                  headers={"Idempotency-Key": "k" * 300})
    assert_error(response, 400, param="Idempotency-Key")


def _client(stack: StackInfo, secret: str) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=60,
                        headers={"Authorization": f"Bearer {secret}"})


def test_a_read_only_key_cannot_replay_a_key_creation(stack: StackInfo,
                                                      tenant: TenantHandle) -> None:
    reader_secret = tenant.client.post("/v1/api_keys", json={"scopes": ["read"]}).json()["secret"]
    headers = {"Idempotency-Key": "make-admin-ish-key"}
    created = tenant.client.post("/v1/api_keys", json={"name": "ci"}, headers=headers)
    assert created.status_code == 200 and created.json()["secret"]
    with _client(stack, reader_secret) as reader:
        replay = reader.post("/v1/api_keys", json={"name": "ci"}, headers=headers)
    error = assert_error(replay, 403, contains="keys:write")
    assert error["code"] == "missing_scope" and created.json()["secret"] not in replay.text


def test_no_secret_is_stored_and_a_replay_says_it_was_shown_once(tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "new-key-once"}
    first = tenant.client.post("/v1/api_keys", json={"name": "ci"}, headers=headers).json()
    assert first["secret"].startswith("lm-sk-")
    with admin_scope() as session:
        stored = session.scalars(select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant.id)).all()
    assert stored and first["secret"] not in json.dumps([r.response for r in stored])
    again = tenant.client.post("/v1/api_keys", json={"name": "ci"}, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    body = again.json()
    assert body["id"] == first["id"] and body["secret"] is None
    assert "shown once" in body["note"]


def _set_tenant(tenant_id: str, **values: object) -> None:
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))


def test_a_429_is_not_stored_so_the_retry_succeeds(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    body = {"model": MODEL, "training_file": file_id}
    headers = {"Idempotency-Key": "queued-quota"}
    _set_tenant(tenant.id, max_queued_jobs=0)
    refused = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert assert_error(refused, 429)["code"] == "max_queued_jobs_exceeded"
    _set_tenant(tenant.id, max_queued_jobs=10)
    retried = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers


def test_a_suspended_tenants_401_is_not_replayed_after_unsuspension(
        tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "while-suspended"}
    _set_tenant(tenant.id, suspended_at=utcnow())
    refused = upload_with(tenant, headers)
    assert assert_error(refused, 401)["code"] == "account_suspended"
    _set_tenant(tenant.id, suspended_at=None)
    assert upload_with(tenant, headers).status_code == 200


def upload_with(tenant: TenantHandle, headers: dict[str, str]) -> httpx.Response:
    return tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                              files={"file": ("a.jsonl", jsonl(CHAT))}, headers=headers)


def test_a_request_refused_before_its_endpoint_is_not_stored(tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "invalid-then-valid"}
    invalid = tenant.client.post("/v1/fine_tuning/jobs", json={"model": MODEL},
                                 headers=headers)
    assert_error(invalid, 400, contains="training_file")
    file_id = upload_ok(tenant.client)["id"]
    valid = tenant.client.post("/v1/fine_tuning/jobs", headers=headers,
                               json={"model": MODEL, "training_file": file_id})
    assert valid.status_code == 200, valid.text


def test_endpoint_errors_are_stored_and_replayed(tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "missing-file"}
    body = {"model": MODEL, "training_file": "file-does-not-exist"}
    first = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    again = tenant.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 400
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"


def test_admin_posts_honour_the_header(admin: AdminHandle) -> None:
    headers = {"Idempotency-Key": "create-acme"}
    first = admin.client.post("/v1/admin/tenants", json={"name": "idem-acme"}, headers=headers)
    again = admin.client.post("/v1/admin/tenants", json={"name": "idem-acme"}, headers=headers)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = admin.client.post("/v1/admin/tenants", json={"name": "idem-other"},
                              headers=headers)
    assert assert_error(other, 422)["code"] == "idempotency_key_reused"
    key = admin.client.post(f"/v1/admin/tenants/{first.json()['id']}/api_keys", json={},
                            headers={"Idempotency-Key": "acme-key"})
    replayed = admin.client.post(f"/v1/admin/tenants/{first.json()['id']}/api_keys", json={},
                                 headers={"Idempotency-Key": "acme-key"})
    assert key.json()["secret"] and replayed.json()["secret"] is None
    assert replayed.json()["id"] == key.json()["id"]


def test_tenant_and_operator_keys_do_not_share_a_namespace(admin: AdminHandle,
                                                           tenant: TenantHandle) -> None:
    headers = {"Idempotency-Key": "shared-by-chance"}
    assert upload_with(tenant, headers).status_code == 200
    created = admin.client.post("/v1/admin/tenants", json={"name": "idem-ns"}, headers=headers)
    assert created.status_code == 200 and "idempotent-replayed" not in created.headers


def test_a_key_with_control_characters_is_a_400(tenant: TenantHandle) -> None:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={},
                                  headers={"Idempotency-Key": "tab\there"})
    assert_error(response, 400, param="Idempotency-Key")


def test_every_api_post_claims_its_key_after_its_checks() -> None:
    """A POST endpoint that forgot the claim would silently ignore Idempotency-Key."""
    from fastapi.routing import APIRoute

    from api.routes import adapters, admin, files, jobs, keys, models

    def calls(dependant: object) -> set[str]:
        found = {getattr(getattr(dependant, "call", None), "__qualname__", "")}
        for sub in getattr(dependant, "dependencies", []):
            found |= calls(sub)
        return found

    posts = [route for module in (files, jobs, models, adapters, keys, admin)
             for route in module.router.routes
             if isinstance(route, APIRoute) and "POST" in (route.methods or set())]
    assert len(posts) >= 14
    for route in posts:
        assert calls(route.dependant) & {"require.<locals>.check", "admin_actor"}, route.path


def test_an_upload_refused_before_its_body_was_read_is_not_kept(stack: StackInfo,
                                                                 tenant: TenantHandle) -> None:
    """Its body was never hashed, so a kept answer could not be matched to a retry: the
    retry is refused the same way, at once (not a 422, nor a wait for 2 GB)."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(stack.api_url)
    for _ in range(2):
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
        try:
            conn.putrequest("POST", "/v1/files")
            for name, value in (("Authorization", f"Bearer {tenant.key}"),
                                ("Idempotency-Key", "huge-upload"),
                                ("Content-Type", "multipart/form-data; boundary=b"),
                                ("Content-Length", str(2 * 1024**3))):
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            assert response.status == 413, response.read()
            assert json.loads(response.read())["error"]["code"] == "file_too_large"
        finally:
            conn.close()
