"""Operating a live stack: the dashboard in a real browser while a job trains, worker
metrics and the worker's JSON logs for that job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TEST_HOME, AdminHandle, StackInfo, make_tenant
from tests.e2e.conftest import WORKER_LOGS, all_events, wait_for
from tests.integration.api.helpers import Samples, jsonl, prometheus_samples, sample, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
MODEL = "loramill/tiny-llama"


def chat(country: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                         {"role": "assistant", "content": answer}]}


def samples(url: str) -> Samples:
    return prometheus_samples(url)[1]


@pytest.fixture(scope="module")
def training_job(worker: dict[str, int], stack: StackInfo) -> Iterator[dict[str, Any]]:
    """A long job, running, with a validation loss already reported; cancelled after."""
    tenant = make_tenant(stack)
    data = jsonl(*(chat(c, a) for c, a in [("France", "Paris."), ("Spain", "Madrid."),
                                           ("Italy", "Rome."), ("Peru", "Lima.")] * 4))
    valid = upload_ok(tenant.client, jsonl(chat("France", "Paris.")))["id"]
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": upload_ok(tenant.client, data)["id"],
        "validation_file": valid, "suffix": "ops", "method": {
            "type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 50, "batch_size": 1}}}})
    assert response.status_code == 200, response.text
    job = response.json()
    wait_for(tenant.client, job["id"], {"running"}, timeout=120)
    deadline = time.monotonic() + 120
    while not any(e["type"] == "metrics" and e["data"].get("valid_loss") is not None
                  for e in all_events(tenant.client, job["id"])):
        assert time.monotonic() < deadline, "no validation loss reported"
        time.sleep(0.3)
    yield {"job": job, "tenant": tenant}
    tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    wait_for(tenant.client, job["id"], timeout=30)
    tenant.client.close()


def test_dashboard_shows_a_running_job_and_its_loss_curve(training_job: dict[str, Any],
                                                          admin: AdminHandle) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make test` installs Debian's chromium package "
                    "with apt-get when it can (root and a reachable package mirror)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is in the dev extras: make install")
    job_id = training_job["job"]["id"]
    base = str(admin.client.base_url)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/ops")
        assert page.url.endswith("/ops/login")  # not signed in: sent to sign in

        page.fill("#key", training_job["tenant"].key)  # a tenant key is not enough
        page.click("button[type=submit]")
        assert "needs an admin key" in page.inner_text("[role=alert]")

        page.fill("#key", admin.key)
        page.click("button[type=submit]")
        row = page.locator(f"tr.running-job[data-job='{job_id}']")
        row.wait_for(timeout=15_000)
        first = int(row.locator("[role=progressbar]").get_attribute("aria-valuenow") or -1)
        assert 0 <= first < 100
        assert "step" in row.inner_text()
        page.screenshot(path=str(ARTIFACTS / "ops-overview.png"), full_page=True)

        # the page refreshes itself: the progress moves without a reload
        page.wait_for_function(
            """([job, first]) => {
                const bar = document.querySelector(
                    `tr.running-job[data-job='${job}'] [role=progressbar]`);
                return bar && Number(bar.getAttribute('aria-valuenow')) > first;
            }""", arg=[job_id, first], timeout=30_000)

        page.click(f"a[href='/ops/jobs/{job_id}']")
        page.wait_for_selector("#loss-chart")
        assert page.inner_text("#job-status") == "running"
        train = page.locator("#loss-chart polyline.train")
        valid = page.locator("#loss-chart polyline.valid")
        assert int(train.get_attribute("data-points") or 0) >= 2
        assert int(valid.get_attribute("data-points") or 0) >= 1
        assert len((train.get_attribute("points") or "").split()) >= 2
        page.screenshot(path=str(ARTIFACTS / "ops-job.png"), full_page=True)

        page.click("text=Sign out")
        page.goto(f"{base}/ops/jobs/{job_id}")
        assert page.url.endswith("/ops/login")
        browser.close()


def test_worker_metrics_and_job_logs(training_job: dict[str, Any], admin: AdminHandle,
                                     local_stack: Any) -> None:
    job_id = training_job["job"]["id"]
    worker_metrics = local_stack.metrics_url("worker")
    assert sample(samples(worker_metrics), "loramill_trained_tokens_total", gpu_class="cpu") > 0

    api = samples(f"{admin.client.base_url}/metrics")
    assert sample(api, "loramill_jobs", status="running", gpu_class="cpu") >= 1
    assert sample(api, "loramill_workers_alive", gpu_class="cpu") >= 1
    assert sample(api, "loramill_database_up") == 1

    before = sample(samples(worker_metrics), "loramill_job_duration_seconds_count",
                   gpu_class="cpu", status="cancelled")
    cancelled = admin.client.post(f"/v1/admin/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    wait_for(training_job["tenant"].client, job_id, timeout=30)
    deadline = time.monotonic() + 10
    while sample(samples(worker_metrics), "loramill_job_duration_seconds_count",
                gpu_class="cpu", status="cancelled") < before + 1:
        assert time.monotonic() < deadline, "the cancelled job's duration was not observed"
        time.sleep(0.3)

    text = (TEST_HOME / "logs" / "worker.log").read_text()
    assert training_job["tenant"].key not in text and admin.key not in text
    lines = text.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    mine = [e for e in entries if e.get("job_id") == job_id]
    assert any(e["message"] == f"job {job_id}: cancelled" for e in mine), mine[-5:]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)


def test_process_logs_are_json_lines_and_the_scheduler_ticks_quietly(
        training_job: dict[str, Any], worker: dict[str, int]) -> None:
    """A worker that loaded a model and trained, and the scheduler that dispatched it:
    their logs, from their start (and every restart the tests before this one caused), are
    JSON lines only (no progress bars, warnings as records), and the scheduler's
    every-second tick tasks leave no INFO lines."""
    texts = {}
    for name in WORKER_LOGS:
        with (TEST_HOME / "logs" / f"{name}.log").open("rb") as fh:
            fh.seek(worker[name])
            texts[name] = fh.read().decode(errors="replace")
        assert "it/s]" not in texts[name] and "Loading weights:" not in texts[name], name
        stray = [line for line in texts[name].splitlines()
                 if line.strip() and not line.startswith("{")]
        assert stray == [], (name, stray[:5])
    scheduler = [json.loads(line) for line in texts["scheduler"].splitlines()
                 if line.startswith("{")]
    assert scheduler, "the scheduler logged nothing"
    ticks = [e for e in scheduler if e["level"] == "info" and any(
        task in e["message"] for task in ("loramill.dispatch", "loramill.sweep"))]
    assert ticks == [], ticks[:3]
