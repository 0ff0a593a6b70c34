"""Refused uploads are answered at once, with 400/413 and the reason (hardening issue,
findings 9, 11 and 12): no hang waiting for a body that has all arrived, the closing
boundary required, form fields bounded, an over-limit declared length refused before a byte
is read, and the storage quota holding under concurrent uploads."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import update

from core.kit.db import admin_scope
from core.tenants.models import Tenant
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, jsonl, stored_state, upload

BOUNDARY = "x-boundary-7"
ANSWER_SECONDS = 10  # a deadline for the answer; a hang is what is being tested


def part(name: str, data: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}{extra}\r\n\r\n".encode()
            + data + b"\r\n")


def form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post(stack: StackInfo, tenant: TenantHandle, body: bytes, *,
         content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
         length: int | None = None, send_body: bool = True) -> tuple[int, dict[str, Any], str]:
    url = urlparse(stack.api_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=ANSWER_SECONDS)
    try:
        conn.putrequest("POST", "/v1/files")
        conn.putheader("Authorization", f"Bearer {tenant.key}")
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        conn.endheaders()
        if send_body:
            conn.send(body)
        response = conn.getresponse()  # raises TimeoutError on a hang
        payload = response.read().decode()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, json.loads(payload)["error"], headers.get("connection", "")
    finally:
        conn.close()


GOOD = part("purpose", b"fine-tune")


@pytest.mark.parametrize(("body", "contains"), [
    (form(GOOD, part("file", jsonl(CHAT), "a.jsonl"), part("file", jsonl(CHAT), "b.jsonl")),
     "exactly one 'file' part"),
    (form(GOOD, part("file", jsonl(CHAT), "x" * 300 + ".jsonl")), "longer than 255"),
    (form(GOOD, part("file", jsonl(CHAT), None, "; filename*=UTF-8''a.jsonl")),
     "filename*"),
    (b"--another-boundary\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
     b"fine-tune\r\n--another-boundary--\r\n", "malformed multipart body"),
    (b"\x00\x01 just garbage, no form at all \xff" * 50, "malformed multipart body"),
    (form(GOOD, part("file", jsonl(CHAT), "a.jsonl"), close=False), "closing boundary"),
    (form(GOOD, *[part(f"f{i}", b"v") for i in range(20)], part("file", jsonl(CHAT), "a.jsonl")),
     "at most 16"),
    (form(GOOD, part("file", jsonl(CHAT), "a.jsonl", "\r\nX-Pad: " + "p" * 9000)),
     "header"),
])
def test_refusals_are_answered_at_once(stack: StackInfo, tenant: TenantHandle, body: bytes,
                                       contains: str) -> None:
    status, error, _ = post(stack, tenant, body)
    assert status == 400 and contains in error["message"], error
    assert stored_state(tenant.id) == (0, [])


def test_many_small_fields_are_refused_early(stack: StackInfo, tenant: TenantHandle) -> None:
    fields = form(*[part(f"f{i}", b"v") for i in range(51_200)])
    status, error, _ = post(stack, tenant, fields)
    assert status == 400 and "at most 16" in error["message"]


def test_an_over_limit_declared_length_is_refused_before_reading(
        stack: StackInfo, tenant: TenantHandle) -> None:
    status, error, connection = post(stack, tenant, b"", length=2 * 1024**3, send_body=False)
    assert status == 413 and error["code"] == "file_too_large"
    assert connection == "close"


def test_concurrent_uploads_cannot_overrun_the_storage_quota(tenant: TenantHandle) -> None:
    data = jsonl(CHAT, CHAT)
    quota = 3 * len(data) + 10
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id)
                        .values(storage_bytes=quota))
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda _: upload(tenant.client, data), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [413] * 9, statuses
    assert all(r.json()["error"]["code"] == "storage_quota_exceeded"
               for r in responses if r.status_code == 413)
    rows, objects = stored_state(tenant.id)
    assert rows == 3 and len(objects) == 3


def test_a_client_that_goes_away_mid_upload_leaves_no_unfinished_upload(
        stack: StackInfo, tenant: TenantHandle) -> None:
    from core.kit.storage import get_storage

    storage = get_storage()
    prefix = f"tenants/{tenant.id}/"
    row = jsonl(CHAT)
    data = row * (20 * 1024 * 1024 // len(row))  # two S3 parts and more
    head = GOOD + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; ' \
                  f'filename="big.jsonl"\r\n\r\n'.encode()
    url = urlparse(stack.api_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=ANSWER_SECONDS)
    conn.putrequest("POST", "/v1/files")
    conn.putheader("Authorization", f"Bearer {tenant.key}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(len(head) + len(data) + 100))
    conn.endheaders()
    conn.send(head + data[: 18 * 1024 * 1024])

    def unfinished() -> list[str]:
        found = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=prefix)
        return [u["Key"] for u in found.get("Uploads", [])]

    deadline = time.monotonic() + 30
    while not unfinished():  # the upload is under way in S3
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.2)
    conn.close()  # the client goes away
    deadline = time.monotonic() + 30
    while unfinished():
        assert time.monotonic() < deadline, f"left behind: {unfinished()}"
        time.sleep(0.3)
    assert stored_state(tenant.id) == (0, [])
