"""Whole-stack fixtures: a real Celery worker process on the test stack."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import StackInfo, wait_until

if TYPE_CHECKING:
    from devstack.stack import LocalStack

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="package")
def local_stack(stack: StackInfo) -> LocalStack:
    from core.kit.settings import get_settings
    from devstack.stack import LocalStack

    return LocalStack(get_settings())


WORKER_LOGS = ("worker", "scheduler")


@pytest.fixture(scope="package")
def worker(local_stack: LocalStack) -> Iterator[dict[str, int]]:
    """A real training worker and the scheduler (beat, dispatch, sweep) as processes, for
    all of tests/e2e, starting from an idle queue (earlier API tests leave jobs queued on
    purpose). A test that stops or kills one starts it again; jobs a test left are
    cancelled after it (below). Yields where their log files stood before they started."""
    from sqlalchemy import update

    from core.jobs import state as jobstate
    from core.jobs.models import FineTuningJob
    from core.jobs.state import JobStatus
    from core.kit.db import admin_scope

    logs = local_stack.log_dir
    offsets = {name: (logs / f"{name}.log").stat().st_size
               if (logs / f"{name}.log").exists() else 0 for name in WORKER_LOGS}
    with admin_scope() as session:
        session.execute(update(FineTuningJob)
                        .where(FineTuningJob.status.in_(jobstate.ACTIVE))
                        .values(status=JobStatus.CANCELLED))
    local_stack.up(pieces=("worker", "scheduler"), log=lambda _: None)
    wait_for_worker()
    wait_for_metrics(local_stack.metrics_url("scheduler"))
    try:
        yield offsets
    finally:
        local_stack._stop_pid("scheduler")
        local_stack._stop_pid("worker")


@pytest.fixture(autouse=True)
def cancel_what_the_test_started(stack: StackInfo) -> Iterator[None]:
    """Every job a test created and left unfinished is cancelled when it ends, pass or
    fail, so one test's job never holds the single worker slot the next one needs."""
    from core.jobs import service as job_service
    from core.jobs.models import FineTuningJob
    from core.jobs.state import ACTIVE
    from core.kit.db import admin_scope
    from core.scheduling.repository import database_now
    from core.tenants.scope import TenantId

    with admin_scope() as session:
        started = database_now(session)
    yield
    with admin_scope() as session:
        for job in session.scalars(select(FineTuningJob).where(
                FineTuningJob.created_at >= started,
                FineTuningJob.status.in_(ACTIVE))):
            job_service.cancel(session, TenantId(job.tenant_id), job.id)


def first_metrics(client: httpx.Client, job_id: str, timeout: float = 120) -> None:
    """Until the job has reported a training step."""
    wait_until(lambda: any(e["type"] == "metrics" for e in all_events(client, job_id)),
               f"job {job_id}'s first training step", timeout)


def wait_for_metrics(url: str, timeout: float = 60) -> None:
    """Until a process of the stack serves its metrics (the scheduler: it is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"nothing answers at {url}"
        time.sleep(0.3)


def wait_for_worker(timeout: float = 60) -> None:
    """Until a training worker has announced its slot (dispatch counts only those)."""
    from sqlalchemy import func, select

    from core.kit.db import admin_scope
    from core.scheduling.models import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin_scope() as session:
            alive = session.scalar(select(func.count()).select_from(Worker).where(
                Worker.stopped_at.is_(None),
                Worker.last_heartbeat_at > func.now() - timedelta(seconds=5)))
        if alive:
            return
        time.sleep(0.3)
    raise AssertionError("no training worker announced itself")


def wait_for(client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL,
             timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Oldest first."""
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        events += page["data"]
        if not page["has_more"]:
            return events[::-1]
        after = page["data"][-1]["id"]
