"""One tenant cannot hurt another (hardening issue, finding 2): a burst of concurrent job
creations and reads by one tenant answers no 5xx, the excess gets 429 with Retry-After,
and another tenant is served throughout; a saturated pool shows on /readyz."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from core.kit.db import get_engine, pool_usage
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok

MODEL = "loramill/tiny-llama"


def test_a_burst_of_job_creations_stalls_nobody(stack: StackInfo, tenant: TenantHandle,
                                                other_tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    a = httpx.Client(base_url=stack.api_url, timeout=120, limits=httpx.Limits(
        max_connections=120), headers={"Authorization": f"Bearer {tenant.key}"})

    def hit(i: int) -> httpx.Response:
        if i % 2:
            return a.get("/v1/fine_tuning/jobs")
        return a.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id})

    with ThreadPoolExecutor(max_workers=100) as pool:
        bursts = [pool.submit(hit, i) for i in range(100)]
        others = [other_tenant.client.get("/v1/models") for _ in range(5)]
        answered = [f.result() for f in bursts]
    a.close()
    statuses = sorted({r.status_code for r in answered})
    assert all(s < 500 for s in statuses), [r.text for r in answered if r.status_code >= 500]
    assert set(statuses) <= {200, 429}, statuses
    assert any(r.status_code == 200 for r in answered)
    for limited in (r for r in answered if r.status_code == 429):
        error = limited.json()["error"]
        assert error["code"] in ("too_many_concurrent_requests", "rate_limit_exceeded")
        assert int(limited.headers["retry-after"]) >= 1
    assert [r.status_code for r in others] == [200] * 5


def test_readyz_reports_a_saturated_pool(stack: StackInfo) -> None:
    client = TestClient(create_app())
    assert client.get("/readyz").status_code == 200
    held = []
    try:
        while pool_usage(get_engine())[0] < pool_usage(get_engine())[1]:
            held.append(get_engine().raw_connection())
        response = client.get("/readyz")
    finally:
        for connection in held:
            connection.close()
    assert response.status_code == 503
    assert response.json()["checks"]["database_pool"].startswith("saturated")
    assert client.get("/readyz").status_code == 200
