"""Structured JSON logs with request and tenant ids; X-Request-ID echoed; secrets never
appear in the logs."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_HOME, AdminHandle, StackInfo, TenantHandle, wait_until
from tests.integration.api.helpers import CHAT, jsonl, upload

API_LOG = TEST_HOME / "logs" / "api.log"


def json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def test_request_id_is_echoed_and_logged_with_the_tenant(stack: StackInfo,
                                                         tenant: TenantHandle) -> None:
    response = tenant.client.get("/v1/files", headers={"X-Request-ID": "ci-run-42.step-7"})
    assert response.headers["x-request-id"] == "ci-run-42.step-7"
    made = tenant.client.get("/v1/files").headers["x-request-id"]
    assert made.startswith("req-") and made != "ci-run-42.step-7"
    weird = tenant.client.get("/v1/files", headers={"X-Request-ID": "has spaces/" + "x" * 200})
    assert weird.headers["x-request-id"].startswith("req-")
    # the access line is written as the response ends: after the client has it
    access = wait_until(lambda: next((
        e for e in json_lines(API_LOG) if e.get("request_id") == "ci-run-42.step-7"
        and e.get("logger") == "loramill.access"), None),
        "a JSON access line carrying the request id", 15)
    assert access["tenant_id"] == tenant.id and access["status"] == 200
    assert access["path"] == "/v1/files" and "duration_ms" in access


def test_secrets_are_never_logged(stack: StackInfo, tenant: TenantHandle,
                                  admin: AdminHandle) -> None:
    upload(tenant.client, jsonl(CHAT))
    tenant.client.post("/v1/fine_tuning/jobs", json={"model": "nope", "training_file": "x"})
    created = tenant.client.post("/v1/api_keys", json={"name": "logged?"}).json()
    by_operator = admin.client.post(f"/v1/admin/tenants/{tenant.id}/api_keys",
                                    json={"name": "logged?"}).json()
    signed_in = httpx.post(f"{stack.api_url}/ops/login", data={"key": admin.key})
    assert signed_in.status_code == 303
    time.sleep(0.5)
    text = API_LOG.read_text(errors="replace")
    for secret in (tenant.key, created["secret"], by_operator["secret"], admin.key):
        assert secret not in text
    assert "Bearer" not in text


def test_the_api_server_logs_json_from_its_first_line(stack: StackInfo,
                                                     tmp_path: Path) -> None:
    """`python -m api` (what the stack, compose and the chart run): uvicorn's own start
    and stop lines are JSON too, not plain text before the app's logging is set up."""
    import os
    import signal
    import subprocess
    import sys

    from devstack.stack import find_ports
    from tests.conftest import ROOT

    port = find_ports(1, 36000 + os.getpid() % 1000)[0]
    out = tmp_path / "api.out"
    with out.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=ROOT, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=5).status_code == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert lines and [line for line in lines if not line.startswith("{")] == [], lines[:5]
    entries = [json.loads(line) for line in lines]
    assert any(e.get("logger") == "loramill.access" and e.get("status") == 401
               for e in entries)
