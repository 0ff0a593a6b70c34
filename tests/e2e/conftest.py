"""Whole-stack fixtures: a real Celery worker process on the test stack."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import StackInfo

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def worker(stack: StackInfo) -> Iterator[None]:
    from core.localstack import LocalStack
    from core.settings import get_settings

    local = LocalStack(get_settings())
    local.up(pieces=("worker",), log=lambda _: None)
    try:
        yield
    finally:
        local._stop_pid("worker")


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
