from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import StackInfo, TenantHandle, api_process
from tests.integration.api.helpers import assert_error


def test_unknown_route_and_method(stack: StackInfo, tenant: TenantHandle) -> None:
    assert_error(httpx.get(f"{stack.api_url}/v1/nope"), 404, contains="unknown URL")
    assert_error(tenant.client.put("/v1/files"), 405)


def test_body_that_is_not_json(tenant: TenantHandle) -> None:
    response = tenant.client.post("/v1/fine_tuning/jobs", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert_error(response, 400, contains="not valid JSON")


def test_a_500_never_leaks_a_traceback() -> None:
    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/boom")
    error = assert_error(response, 500)  # type: ignore[arg-type]  # TestClient's own httpx
    assert error["type"] == "server_error"
    assert "secret internal detail" not in response.text and "Traceback" not in response.text


def test_health_endpoints(stack: StackInfo) -> None:
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api_url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "storage": "ok", "database_pool": "ok",
                               "threads": "ok"}


def test_a_500_is_one_json_log_line_and_keeps_the_connection(stack: StackInfo,
                                                             tmp_path: Path) -> None:
    log_path = tmp_path / "api.log"
    with api_process("tests.integration.api.failing_app:app", log=log_path) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b'"ok"}'):
                chunk = sock.recv(65536)
                assert chunk, f"the connection was closed after: {received!r}"
                received += chunk
        first, second = received.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"500") and b"connection: close" not in first.lower()
        assert b"internal_error" in first and b"secret internal detail" not in first
        assert second.startswith(b"200")
    lines = log_path.read_text().splitlines()
    failures = [json.loads(line) for line in lines
                if line.startswith("{") and "unhandled error" in line]
    assert len(failures) == 1 and failures[0]["error"] == "RuntimeError"
    assert failures[0]["request_id"].startswith("req-")
    plain = [line for line in lines if not line.startswith("{")]
    assert not [line for line in plain if "Traceback" in line or "Exception" in line], plain
