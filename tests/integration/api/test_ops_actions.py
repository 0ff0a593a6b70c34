"""The /ops dashboard acting, in Chromium: an operator finds a job, sets its priority,
cancels it, suspends and unsuspends its tenant — each through a confirmation page, each
shown with its audit entry — and finds things: queued jobs by priority, jobs by tenant
and status, a tenant's page, the audit log, serving. The jobs stay queued (no worker runs
in these tests) until the test acts on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def two_jobs(tenant: TenantHandle) -> Iterator[list[str]]:
    ids = []
    for _ in range(2):
        response = tenant.client.post("/v1/fine_tuning/jobs", json={
            "model": "loramill/tiny-llama", "training_file": upload_ok(tenant.client)["id"]})
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    yield ids
    for job_id in ids:
        tenant.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")


@pytest.fixture
def page(stack: StackInfo, admin: AdminHandle) -> Iterator[Any]:
    """A signed-in operator's browser tab."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make test` installs Debian's chromium package "
                    "with apt-get when it can (root and a reachable package mirror)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is in the dev extras: make install")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(20_000)
        tab.goto(f"{stack.api_url}/ops/login")
        tab.fill("#key", admin.key)
        tab.click("button[type=submit]")
        tab.wait_for_selector("#card-queued")
        yield tab
        browser.close()


def audit_entries(admin: AdminHandle, target: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin.client.get(
        "/v1/admin/audit_log", params={"target_id": target}).json()["data"]
    return found


def test_priority_through_a_confirmation_reorders_the_queue_and_is_audited(
        page: Any, stack: StackInfo, admin: AdminHandle, two_jobs: list[str]) -> None:
    first, second = two_jobs
    page.goto(f"{stack.api_url}/ops")
    queued = [r.get_attribute("data-job") for r in page.locator("tr.queued-job").all()]
    assert queued.index(first) < queued.index(second)  # same priority: oldest first

    page.fill("#search-id", second)  # find it by id from any page
    page.press("#search-id", "Enter")
    page.wait_for_selector("#job-status")
    assert page.url.endswith(f"/ops/jobs/{second}")
    page.fill("#priority-value", "50")
    page.click("#action-priority")
    page.wait_for_selector("#confirm")
    assert admin.client.get(f"/v1/admin/jobs/{second}").json()["priority"] == 0  # not yet
    page.click("#confirm-action")
    page.wait_for_selector("#done")
    assert page.inner_text("#job-priority") == "50"
    flash = page.inner_text("#done")
    (entry,) = [e for e in audit_entries(admin, second) if e["action"] == "job.priority"]
    assert entry["id"] in flash and "job.priority" in flash
    assert entry["actor"] == f"key:{admin.key_id}"
    assert entry["details"] == {"from": 0, "to": 50}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ops-action-done.png"), full_page=True)
    # an entry about another job, or none at all, is not shown as this job's
    for other in (f"{entry['id']}x", "audit-" + "x" * 300):
        page.goto(f"{stack.api_url}/ops/jobs/{first}?done={other}")
        page.wait_for_selector("#job-status")
        assert page.locator("#done").count() == 0
    page.goto(f"{stack.api_url}/ops/jobs/{first}?done={entry['id']}")
    page.wait_for_selector("#job-status")
    assert page.locator("#done").count() == 0  # the entry is the other job's

    page.goto(f"{stack.api_url}/ops")
    queued = [r.get_attribute("data-job") for r in page.locator("tr.queued-job").all()]
    assert queued.index(second) < queued.index(first)  # now it goes first
    row = page.locator(f"tr.queued-job[data-job='{second}'] td.priority")
    assert row.inner_text() == "50"


def test_cancel_needs_the_confirmation_and_a_bad_action_says_why(
        page: Any, stack: StackInfo, admin: AdminHandle, two_jobs: list[str]) -> None:
    job = two_jobs[0]
    page.goto(f"{stack.api_url}/ops/jobs/{job}")
    page.click("#action-cancel")
    page.wait_for_selector("#confirm")
    page.click("text=Back, change nothing")
    page.wait_for_selector("#job-status")
    assert page.inner_text("#job-status") == "queued"  # looking changed nothing

    page.click("#action-cancel")
    page.click("#confirm-action")
    page.wait_for_selector("#done")
    assert page.inner_text("#job-status") == "cancelled"
    assert "job.cancel" in page.inner_text("#done")
    assert page.locator("#action-cancel").count() == 0  # nothing left to do to it
    # the priority of a finished job cannot change: the page says why, nothing changes
    page.goto(f"{stack.api_url}/ops/jobs/{job}/priority?priority=9")
    page.click("#confirm-action")
    page.wait_for_selector("#action-error")
    assert "cancelled" in page.inner_text("#action-error")
    assert [e["action"] for e in audit_entries(admin, job)] == ["job.cancel"]


def test_requeue_through_a_confirmation_is_audited(page: Any, stack: StackInfo,
                                                   admin: AdminHandle,
                                                   two_jobs: list[str]) -> None:
    job = two_jobs[1]
    page.goto(f"{stack.api_url}/ops/jobs/{job}")
    page.click("#action-requeue")
    page.wait_for_selector("#confirm")
    assert "back in the queue" in page.inner_text("#confirm")
    page.click("#confirm-action")
    page.wait_for_selector("#done")
    assert "job.requeue" in page.inner_text("#done")
    assert page.inner_text("#job-status") == "queued"
    (entry,) = [e for e in audit_entries(admin, job) if e["action"] == "job.requeue"]
    assert entry["actor"] == f"key:{admin.key_id}" and entry["id"] in page.inner_text("#done")


def test_suspending_a_tenant_from_its_page_stops_its_keys_until_unsuspended(
        page: Any, stack: StackInfo, admin: AdminHandle, tenant: TenantHandle,
        two_jobs: list[str]) -> None:
    page.goto(f"{stack.api_url}/ops/jobs/{two_jobs[0]}")
    page.click(f"a[href='/ops/tenants/{tenant.id}']")
    page.wait_for_selector("#quotas")
    assert page.inner_text("#tenant-state") == "active"
    assert page.locator("#keys").inner_text().count("…") >= 1  # prefixes, never secrets
    assert tenant.key not in page.content()
    assert two_jobs[0] in page.inner_text("#recent-jobs")

    page.click("#action-suspend")
    page.click("#confirm-action")
    page.wait_for_selector("#done")
    assert page.inner_text("#tenant-state") == "suspended"
    assert tenant.client.get("/v1/files").status_code == 401
    page.click("#action-unsuspend")
    page.click("#confirm-action")
    page.wait_for_selector("#done")
    assert page.inner_text("#tenant-state") == "active"
    assert tenant.client.get("/v1/files").status_code == 200
    actions = [e["action"] for e in audit_entries(admin, tenant.id)]
    assert actions[:2] == ["tenant.unsuspend", "tenant.suspend"]  # newest first

    page.click("text=Its audit entries")
    page.wait_for_selector("#audit")
    assert page.locator("tr.audit-entry").count() >= 2


def test_jobs_are_found_by_tenant_and_status(page: Any, stack: StackInfo,
                                             tenant: TenantHandle,
                                             two_jobs: list[str]) -> None:
    tenant.client.post(f"/v1/fine_tuning/jobs/{two_jobs[1]}/cancel")
    page.goto(f"{stack.api_url}/ops/jobs")
    page.fill("#filter-tenant", tenant.name)  # by name; an id works too
    page.select_option("#filter-status", "cancelled")
    page.click("#job-filters button")
    page.wait_for_selector("#job-results")
    found = [r.get_attribute("data-job") for r in page.locator("tr.found-job").all()]
    assert found == [two_jobs[1]]
    page.goto(f"{stack.api_url}/ops/jobs?tenant=no-such-tenant")
    assert "no tenant" in page.inner_text("[role=alert]")
    page.goto(f"{stack.api_url}/ops/serving")
    page.wait_for_selector("h2")
    assert "Serving engines" in page.inner_text("h2")


def test_actions_need_a_signed_in_operator(stack: StackInfo, tenant: TenantHandle,
                                          two_jobs: list[str]) -> None:
    """A post without the dashboard's cookie (or with a tenant's key as the cookie) goes
    to sign-in and changes nothing."""
    for cookies in ({}, {"loramill_ops": tenant.key}):
        answer = httpx.post(f"{stack.api_url}/ops/jobs/{two_jobs[0]}/cancel",
                            cookies=cookies, follow_redirects=False, timeout=30)
        assert answer.status_code == 303 and answer.headers["location"] == "/ops/login"
    job = tenant.client.get(f"/v1/fine_tuning/jobs/{two_jobs[0]}").json()
    assert job["status"] == "queued"
