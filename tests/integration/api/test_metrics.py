"""The API's Prometheus endpoint: request latency by route template, the queue read from
PostgreSQL, and samples kept in the multi-process directory the stack gives the API."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import func, select

from core.jobs.models import FineTuningJob
from core.kit.db import admin_scope
from tests.conftest import TEST_HOME, StackInfo, TenantHandle, api_process
from tests.integration.api.helpers import Samples, prometheus_samples, sample, upload_ok


def scrape(stack: StackInfo) -> tuple[str, Samples]:
    return prometheus_samples(f"{stack.api_url}/metrics")


def test_latency_is_labelled_by_route_template(stack: StackInfo,
                                               tenant: TenantHandle) -> None:
    _, before = scrape(stack)
    route = "/v1/fine_tuning/jobs/{job_id}"
    key = {"method": "GET", "route": route, "status": "404"}
    for _ in range(3):
        assert tenant.client.get("/v1/fine_tuning/jobs/ftjob-missing").status_code == 404
    text, after = scrape(stack)
    count = "loramill_http_request_duration_seconds_count"
    assert sample(after, count, **key) - sample(before, count, **key) == 3
    assert sample(after, "loramill_http_request_duration_seconds_bucket", le="+Inf", **key) == \
        sample(after, count, **key)
    assert "ftjob-missing" not in text  # ids never become label values
    assert tenant.key not in text
    # the API runs with a multi-process directory: samples live in files there
    assert list((TEST_HOME / "run" / "metrics" / "api").glob("*.db"))


def test_queue_depth_matches_the_database(stack: StackInfo, tenant: TenantHandle) -> None:
    for _ in range(2):
        response = tenant.client.post("/v1/fine_tuning/jobs", json={
            "model": "loramill/tiny-llama", "training_file": upload_ok(tenant.client)["id"]})
        assert response.status_code == 200
    with admin_scope() as session:
        queued = session.scalar(select(func.count()).select_from(FineTuningJob).where(
            FineTuningJob.status == "queued", FineTuningJob.gpu_class == "cpu"))
    _, found = scrape(stack)
    assert sample(found, "loramill_jobs", status="queued", gpu_class="cpu") == queued
    assert queued is not None and queued >= 2
    assert sample(found, "loramill_oldest_queued_job_age_seconds", gpu_class="cpu") >= 0
    assert ("loramill_workers_alive", (("gpu_class", "cpu"),)) in found
    assert sample(found, "loramill_database_up") == 1


def test_forked_api_processes_report_together(stack: StackInfo, tmp_path: Path) -> None:
    """Two uvicorn worker processes share one multi-process directory: whichever answers
    the scrape reports the requests both of them served."""
    samples_dir = tmp_path / "metrics"
    samples_dir.mkdir()
    with api_process(args=("--workers", "2"),
                     env={"PROMETHEUS_MULTIPROC_DIR": str(samples_dir)}) as url:
        for _ in range(40):  # a new connection each: the kernel spreads them over both
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        writers = {p.name.split("_")[-1] for p in samples_dir.glob("histogram_*.db")}
        assert len(writers) == 2, writers  # both processes served and recorded requests
        key = {"method": "GET", "route": "/healthz", "status": "200"}
        for _ in range(4):
            _, found = prometheus_samples(f"{url}/metrics")
            assert sample(found, "loramill_http_request_duration_seconds_count", **key) >= 41
