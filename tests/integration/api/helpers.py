from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import func, select

from core.files.models import File
from core.kit.db import admin_scope
from core.kit.storage import get_storage

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def upload(client: httpx.Client, data: bytes, *, filename: str = "train.jsonl",
           purpose: str | None = "fine-tune") -> httpx.Response:
    fields = {"purpose": purpose} if purpose is not None else {}
    return client.post("/v1/files", data=fields, files={"file": (filename, data)})


def upload_ok(client: httpx.Client, data: bytes | None = None) -> dict[str, Any]:
    response = upload(client, data or jsonl(CHAT, CHAT, CHAT))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_state(tenant_id: str) -> tuple[int, list[str]]:
    """File rows and S3 objects the tenant has: what a failed upload must not leave."""
    with admin_scope() as session:
        rows = session.scalar(select(func.count()).select_from(File).where(
            File.tenant_id == tenant_id))
    objects = get_storage().list_keys(f"tenants/{tenant_id}/")
    return int(rows or 0), objects


def assert_error(response: httpx.Response, status: int, *, param: str | None = None,
                 contains: str = "", code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert contains in error["message"], error
    return error


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def prometheus_samples(url: str) -> tuple[str, Samples]:
    """A /metrics page, raw and parsed: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for family in text_string_to_metric_families(response.text)
                           for s in family.samples}


def sample(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)
