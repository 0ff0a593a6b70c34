from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.helpers import assert_error
from tests.conftest import StackInfo, TenantHandle


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
    error = assert_error(response, 500)
    assert error["type"] == "server_error"
    assert "secret internal detail" not in response.text and "Traceback" not in response.text


def test_health_endpoints(stack: StackInfo) -> None:
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api_url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "storage": "ok"}
