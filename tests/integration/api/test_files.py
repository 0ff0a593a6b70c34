"""Files API: streaming upload with validation, and every bad input named in the issue.
A refused upload leaves no file row and no object behind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import update

from core.kit.db import admin_scope
from core.kit.storage import file_key, get_storage
from core.tenants.models import Tenant
from tests.conftest import TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, stored_state, upload, upload_ok


def test_upload_get_content_list_delete(tenant: TenantHandle) -> None:
    data = jsonl(CHAT, CHAT)
    body = upload_ok(tenant.client, data)
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert (body["status"], body["purpose"], body["bytes"]) == ("processed", "fine-tune",
                                                                len(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["format"], body["example_count"]) == ("chat", 2)

    assert tenant.client.get(f"/v1/files/{body['id']}").json() == body
    content = tenant.client.get(f"/v1/files/{body['id']}/content")
    assert content.status_code == 200 and content.content == data

    deleted = tenant.client.delete(f"/v1/files/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "file", "deleted": True}
    assert_error(tenant.client.get(f"/v1/files/{body['id']}"), 404)
    assert stored_state(tenant.id)[1] == []


def test_large_upload_is_streamed_in_parts(tenant: TenantHandle) -> None:
    row = jsonl(CHAT)
    data = row * (12 * 1024 * 1024 // len(row))  # > one 8 MiB S3 part
    body = upload_ok(tenant.client, data)
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    content = tenant.client.get(f"/v1/files/{body['id']}/content").content
    assert hashlib.sha256(content).hexdigest() == body["sha256"]


@pytest.mark.parametrize("copies", [2, 12 * 1024 * 1024 // len(jsonl(CHAT))])
def test_datasets_are_stored_as_jsonl(tenant: TenantHandle, copies: int) -> None:
    """The object says what it is (and its parts do: object stores that compress what they
    sniff as text, as SeaweedFS does, leave JSONL alone): one PUT and a multipart upload."""
    body = upload_ok(tenant.client, jsonl(CHAT) * copies)
    storage = get_storage()
    key = file_key(tenant.id, body["id"])
    head = storage.client.head_object(Bucket=storage.bucket, Key=key)
    assert head["ContentType"] == "application/jsonl"
    assert head["ContentLength"] == body["bytes"]


def test_list_paginates_newest_first(tenant: TenantHandle) -> None:
    ids = [upload_ok(tenant.client)["id"] for _ in range(5)]
    page = tenant.client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = tenant.client.get("/v1/files", params=params).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == ids[::-1]


@pytest.mark.parametrize(("data", "message"), [
    (b"", "file is empty"),
    (b"\xff\xfe\x00{bad}\n", "the file is UTF-16 encoded; a dataset must be UTF-8"),
    (jsonl(CHAT) + b'{"text": "caf\xe9"}\n', "line 2: not valid UTF-8 (byte 14 of the line)"),
    (jsonl(CHAT) + b"this is not json\n", "line 2: not valid JSON"),
    (jsonl(CHAT) + b"[1, 2, 3]\n", "line 2: expected a JSON object, got an array"),
    (jsonl(CHAT, {"prompt": "a", "completion": "b"}), "line 2: prompt_completion example"),
    (jsonl({"messages": [{"role": "user", "content": "hi"}]}), "line 1: messages has no "
                                                               "assistant turn"),
    (jsonl(CHAT, CHAT, {"messages": [{"role": "user", "content": "x"},
                                     {"role": "wizard", "content": "y"},
                                     {"role": "assistant", "content": "z"}]}),
     "line 3: messages[1].role must be one of system, developer, user, assistant"),
    (jsonl({"prompt": 1, "completion": "b"}), "line 1: prompt must be a string, got an integer"),
    # the findings: accepted once, then the job failed or trained on the wrong text
    (jsonl({"messages": [{"role": "assistant", "content": "hi"}]}),
     "line 1: messages[0] is an assistant message with no user message before it"),
    (jsonl({"prompt": "a", "completion": "b", "text": "ZZZZ"}),
     "line 1: the line mixes formats ('prompt'/'completion' and 'text')"),
    (jsonl({"prompt": "a", "completion": "b", "text": None}),
     "line 1: text must be a string, got null"),
    (jsonl(CHAT, {"messages": [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "a", "weight": 0}]}),
     "line 2: messages has no assistant turn to learn from: every assistant message has "
     "weight 0"),
    (jsonl(CHAT) + b'{"text": "' + b"x" * 70_000 + b'"}\n',
     "line 2: line is longer than the limit of 65536 bytes"),
])
def test_invalid_dataset_is_refused_and_nothing_is_stored(
    tenant: TenantHandle, data: bytes, message: str
) -> None:
    error = assert_error(upload(tenant.client, data), 400, param="file", contains=message)
    assert error["code"] == "invalid_file"
    assert stored_state(tenant.id) == (0, [])


def test_problems_are_listed_up_to_twenty_by_line(tenant: TenantHandle) -> None:
    data = jsonl(CHAT) + b"nope\n" * 25
    error = assert_error(upload(tenant.client, data), 400)
    assert "25 problems" in error["message"] and "line 21:" in error["message"]
    assert "line 22:" not in error["message"] and "(and 5 more)" in error["message"]


def _limit(tenant: TenantHandle, max_bytes: int) -> None:
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id)
                        .values(max_file_bytes=max_bytes))


def test_oversized_file_is_refused_with_413(tenant: TenantHandle) -> None:
    _limit(tenant, 10_000)
    error = assert_error(upload(tenant.client, jsonl(CHAT) * 400), 413)
    assert "10000 bytes" in error["message"]
    assert stored_state(tenant.id) == (0, [])


def test_oversized_file_is_refused_while_streaming(tenant: TenantHandle) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they arrive."""
    _limit(tenant, 10_000)
    boundary = "loramilltestboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
               f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.jsonl\"\r\n\r\n").encode()
        for _ in range(400):
            yield jsonl(CHAT)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = tenant.client.post(
        "/v1/files", content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413)
    assert stored_state(tenant.id) == (0, [])


@pytest.mark.parametrize(("purpose", "param", "message"), [
    (None, "purpose", "missing required parameter: 'purpose'"),
    ("assistants", "purpose", "purpose must be 'fine-tune'"),
])
def test_wrong_or_missing_purpose(tenant: TenantHandle, purpose: str | None, param: str,
                                  message: str) -> None:
    assert_error(upload(tenant.client, jsonl(CHAT), purpose=purpose), 400, param=param,
                 contains=message)
    assert stored_state(tenant.id) == (0, [])


def test_missing_file_field_and_wrong_content_type(tenant: TenantHandle) -> None:
    assert_error(tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                                    files={"other": ("x", b"1")}),
                 400, param="file", contains="'file'")
    assert_error(tenant.client.post("/v1/files", json={"purpose": "fine-tune"}), 415)
    assert stored_state(tenant.id) == (0, [])


def test_path_like_filename_is_only_metadata(tenant: TenantHandle) -> None:
    body = upload_ok(tenant.client, jsonl(CHAT))
    evil = upload(tenant.client, jsonl(CHAT), filename="../../x.jsonl").json()
    assert evil["filename"] == "../../x.jsonl"
    _, objects = stored_state(tenant.id)
    assert sorted(objects) == sorted(f"tenants/{tenant.id}/files/{i}.jsonl"
                                     for i in (body["id"], evil["id"]))


def test_another_tenants_file_is_404(tenant: TenantHandle, other_tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    calls: tuple[Callable[[httpx.Client], httpx.Response], ...] = (
        lambda c: c.get(f"/v1/files/{file_id}"),
        lambda c: c.get(f"/v1/files/{file_id}/content"),
        lambda c: c.delete(f"/v1/files/{file_id}"))
    for call in calls:
        assert_error(call(other_tenant.client), 404)
    assert other_tenant.client.get("/v1/files").json()["data"] == []
    assert tenant.client.get(f"/v1/files/{file_id}").status_code == 200
