"""Every input gets a 4xx, never a 500 (hardening issue, finding 5 and 15): NUL bytes and
lone surrogates anywhere, integers past every column's range, filenames outside Latin-1,
two operators creating one tenant at once; 405s say what is allowed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload, upload_ok

MODEL = "loramill/tiny-llama"


@pytest.mark.parametrize("path", [
    "/v1/files/file-%00", "/v1/fine_tuning/jobs/ftjob-a%00b", "/v1/adapters/a%00/versions",
    "/v1/fine_tuning/jobs/ftjob-%00/events", "/v1/models/base%00",
])
def test_nul_in_a_path_is_a_400(tenant: TenantHandle, path: str) -> None:
    error = assert_error(tenant.client.get(path), 400, contains="NUL")
    assert error["code"] == "invalid_characters"


@pytest.mark.parametrize("query", [
    "after=%00", "limit=1&after=file-%00x", "metadata[k%00]=v", "metadata[k]=v%00",
])
def test_nul_in_a_query_is_a_400(tenant: TenantHandle, query: str) -> None:
    for path in ("/v1/files", "/v1/fine_tuning/jobs"):
        assert_error(tenant.client.get(f"{path}?{query}"), 400, contains="NUL")


def test_nul_in_admin_and_ops_urls_is_a_400(admin: AdminHandle) -> None:
    assert_error(admin.client.get("/v1/admin/jobs?tenant_id=%00"), 400, contains="NUL")
    assert_error(admin.client.get("/v1/admin/tenants/ten-%00"), 400, contains="NUL")
    assert_error(admin.client.get("/ops/jobs/ftjob-%00"), 400, contains="NUL")


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "loramill/tiny\\u0000llama", "training_file": "file-x"}', "model"),
    (b'{"model": "m", "training_file": "file-x", "metadata": {"k": "\\ud800"}}',
     "metadata.k"),
    (b'{"model": "m", "training_file": "file-x", "metadata": {"\\udfff": "v"}}', "metadata"),
    (b'{"model": "m", "training_file": "file-x", "suffix": "a\\u0000"}', "suffix"),
    (b'{"model": "m", "training_file": "file-x", "lora": {"target_modules": '
     b'["q_proj", "\\u0000"]}}', "lora.target_modules.1"),
])
def test_nul_and_lone_surrogates_in_json_bodies_are_a_400(tenant: TenantHandle, raw: bytes,
                                                          param: str) -> None:
    response = tenant.client.post("/v1/fine_tuning/jobs", content=raw,
                                  headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, param=param)
    assert error["code"] == "invalid_characters"


def test_an_escaped_backslash_before_u0000_is_not_a_nul(tenant: TenantHandle) -> None:
    raw = b'{"model": "m", "training_file": "file-x", "metadata": {"k": "\\\\u0000"}}'
    response = tenant.client.post("/v1/fine_tuning/jobs", content=raw,
                                  headers={"Content-Type": "application/json"})
    assert_error(response, 400, param="model")  # it reached the endpoint


def test_nul_in_admin_bodies(admin: AdminHandle) -> None:
    assert_error(admin.client.post("/v1/admin/tenants", json={"name": "a\x00b"}), 400,
                 param="name")
    assert_error(admin.client.post("/v1/admin/tenants/ten-x/api_keys",
                                   json={"name": "\x00"}), 400, param="name")


@pytest.mark.parametrize(("field", "value"), [
    ("max_file_bytes", 2**63), ("storage_bytes", 2**64 + 1), ("max_queued_jobs", 2**40),
    ("max_running_jobs", -1),
])
def test_quota_integers_past_their_range_are_a_400_naming_it(admin: AdminHandle, field: str,
                                                             value: int) -> None:
    tenant = admin.client.post("/v1/admin/tenants", json={"name": f"q-{field}"}).json()
    error = assert_error(admin.client.post(f"/v1/admin/tenants/{tenant['id']}/quotas",
                                           json={field: value}), 400, param=field)
    assert "from 0 to" in error["message"], error
    created = admin.client.post("/v1/admin/tenants",
                                json={"name": f"r-{field}", "quotas": {field: value}})
    assert_error(created, 400, param=f"quotas.{field}", contains="from 0 to")


def test_big_query_and_path_integers_are_a_400_naming_the_range(
        admin: AdminHandle, tenant: TenantHandle) -> None:
    error = assert_error(admin.client.get("/v1/admin/jobs",
                                          params={"older_than_seconds": 10**11}), 400,
                         param="older_than_seconds")
    assert "from 0 to" in error["message"]
    for version in (2**31, 2**63, -1):
        assert_error(tenant.client.get(f"/v1/adapters/a/versions/{version}"), 400,
                     param="version", contains="from 1 to")
    assert_error(tenant.client.get("/v1/files", params={"limit": 2**64}), 400,
                 param="limit", contains="from 1 to")
    priority = admin.client.post("/v1/admin/jobs/ftjob-x/priority", json={"priority": 2**70})
    assert_error(priority, 400, param="priority", contains="from -100 to 100")
    boolean = admin.client.post("/v1/admin/tenants/x/quotas", json={"max_file_bytes": True})
    assert_error(boolean, 400, param="max_file_bytes", contains="not a boolean")


def test_job_integers_past_their_range(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    for body, param in (({"seed": 2**63}, "seed"),
                        ({"hyperparameters": {"n_epochs": 2**64}}, "hyperparameters.n_epochs"),
                        ({"lora": {"r": 2**31}}, "lora.r")):
        response = tenant.client.post("/v1/fine_tuning/jobs",
                                      json={"model": MODEL, "training_file": file_id, **body})
        assert_error(response, 400, param=param, contains="from ")


@pytest.mark.parametrize("filename", ["データ.jsonl", "naïve données.jsonl", "😀.jsonl"])
def test_filenames_outside_latin1_are_stored_and_served_back(tenant: TenantHandle,
                                                             filename: str) -> None:
    body = upload_ok_named(tenant.client, filename)
    assert body["filename"] == filename
    assert tenant.client.get(f"/v1/files/{body['id']}").json()["filename"] == filename
    content = tenant.client.get(f"/v1/files/{body['id']}/content")
    assert content.status_code == 200
    disposition = content.headers["content-disposition"]
    assert f"filename*=UTF-8''{quote(filename)}" in disposition
    disposition.encode("latin-1")  # a header must be Latin-1: the fallback name is ASCII


def upload_ok_named(client: httpx.Client, filename: str) -> dict[str, object]:
    response = upload(client, jsonl(CHAT), filename=filename)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _raw_upload(client: httpx.Client, disposition: bytes) -> httpx.Response:
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            b"fine-tune\r\n--" + boundary + b"\r\nContent-Disposition: form-data; "
            b'name="file"; ' + disposition + b"\r\nContent-Type: application/jsonl\r\n\r\n"
            + jsonl(CHAT) + b"\r\n--" + boundary + b"--\r\n")
    return client.post("/v1/files", content=body, headers={
        "Content-Type": "multipart/form-data; boundary=" + boundary.decode()})


@pytest.mark.parametrize(("disposition", "contains"), [
    (b'filename="evil\xe2\x80\xaegpj.jsonl"', "control or formatting"),  # RTL override
    (b'filename="bad\xff\xfe.jsonl"', "not valid UTF-8"),
    (b'filename="a\x01b.jsonl"', "control or formatting"),
])
def test_spoofing_and_undecodable_filenames_are_a_400(tenant: TenantHandle, disposition: bytes,
                                                      contains: str) -> None:
    assert_error(_raw_upload(tenant.client, disposition), 400, param="file", contains=contains)


def test_raw_utf8_filename_is_decoded_as_utf8(tenant: TenantHandle) -> None:
    response = _raw_upload(tenant.client, 'filename="データ.jsonl"'.encode())
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "データ.jsonl"


def test_concurrent_creation_of_one_tenant_name(stack: StackInfo, admin: AdminHandle) -> None:
    def create(_: int) -> int:
        with httpx.Client(base_url=stack.api_url, timeout=60, headers={
                "Authorization": f"Bearer {admin.key}"}) as client:
            return client.post("/v1/admin/tenants", json={"name": "race-one-name"}).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(create, range(12)))
    assert statuses == [200] + [409] * 11


def test_405_names_the_allowed_methods(tenant: TenantHandle) -> None:
    response = tenant.client.put("/v1/files")
    assert_error(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
