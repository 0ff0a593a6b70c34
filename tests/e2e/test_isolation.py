"""Tenant isolation matrix: tenant B, using every id kind of tenant A on every endpoint,
gets 404, and no list ever shows A's objects. Presigned downloads cover one object only
and expire."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from core.adapters.service import download_urls
from core.kit.storage import get_storage
from tests.conftest import StackInfo, TenantHandle, make_tenant
from tests.e2e.conftest import wait_for
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def owner(stack: StackInfo) -> dict[str, Any]:
    """Tenant A with one of everything: files, a finished job with events and
    checkpoints, an adapter with a version."""
    a = make_tenant(stack)
    file_id = upload_ok(a.client, jsonl(CHAT, CHAT))["id"]
    job = a.client.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": file_id, "suffix": "secret",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 4}}}}).json()
    job = wait_for(a.client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    ckpt = a.client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    return {"tenant": a, "file": file_id, "job": job["id"], "ckpt": ckpt[0]["id"],
            "result": job["result_files"][0], "model": job["fine_tuned_model"]}


def test_every_endpoint_answers_404_for_another_tenants_ids(
        owner: dict[str, Any], other_tenant: TenantHandle) -> None:
    b = other_tenant.client
    f, j, r, m = owner["file"], owner["job"], owner["result"], owner["model"]
    calls = [
        ("GET", f"/v1/files/{f}"), ("GET", f"/v1/files/{f}/content"),
        ("DELETE", f"/v1/files/{f}"), ("GET", f"/v1/files/{r}"),
        ("GET", f"/v1/files/{r}/content"),
        ("GET", f"/v1/fine_tuning/jobs/{j}"), ("GET", f"/v1/fine_tuning/jobs/{j}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{j}/checkpoints"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/cancel"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/pause"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/resume"),
        ("GET", "/v1/adapters/secret/versions"), ("GET", "/v1/adapters/secret/versions/1"),
        ("GET", "/v1/adapters/secret/versions/1/download"),
        ("GET", f"/v1/models/{m}"),
    ]
    for method, path in calls:
        assert_error(b.request(method, path), 404)
    # using A's file in B's job is "does not exist", not "forbidden"
    response = b.post("/v1/fine_tuning/jobs", json={"model": "loramill/tiny-llama",
                                                    "training_file": f})
    assert_error(response, 400, param="training_file", contains="does not exist")
    # and nothing of A's changed
    a = owner["tenant"].client
    assert a.get(f"/v1/files/{f}").status_code == 200
    assert a.get(f"/v1/fine_tuning/jobs/{j}").json()["status"] == "succeeded"


def test_no_list_shows_another_tenants_objects(owner: dict[str, Any],
                                               other_tenant: TenantHandle) -> None:
    b = other_tenant.client
    upload_ok(b)  # B has something of its own
    listed = str([b.get(path).json() for path in (
        "/v1/files", "/v1/fine_tuning/jobs", "/v1/adapters", "/v1/models",
        "/v1/files?purpose=fine-tune-results")])
    for key in ("file", "job", "ckpt", "result", "model"):
        assert owner[key] not in listed
    assert "secret" not in listed


def test_presigned_url_covers_one_object_and_expires(owner: dict[str, Any]) -> None:
    a = owner["tenant"].client
    download = a.get("/v1/adapters/secret/versions/1/download").json()
    assert download["expires_at"] - time.time() == pytest.approx(15 * 60, abs=30)
    url = download["files"][0]["url"]
    assert httpx.get(url).status_code == 200
    other_key = download["files"][1]["url"].split("?")[0]
    parts = urlsplit(url)
    forged = urlunsplit((parts.scheme, parts.netloc, urlsplit(other_key).path, parts.query,
                         ""))
    assert httpx.get(forged).status_code == 403  # the signature names one key

    from sqlalchemy import select

    from core.adapters.models import AdapterVersion
    from core.kit.db import admin_scope

    with admin_scope() as session:
        row = session.scalars(select(AdapterVersion).where(
            AdapterVersion.job_id == owner["job"])).one()
        _, files = download_urls(get_storage(), row.object_prefix, row.files, seconds=1)
    time.sleep(2.5)
    assert httpx.get(str(files[0]["url"])).status_code == 403  # expired
