"""Idempotency-Key: retries replay the first response; a reused key with another body is
refused; concurrent duplicates make one job; keys are per tenant."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.helpers import CHAT, assert_error, jsonl, upload, upload_ok
from tests.conftest import StackInfo, TenantHandle

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
            return client.post("/v1/fine_tuning/jobs",
                               json={"model": MODEL, "training_file": file_id})

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
