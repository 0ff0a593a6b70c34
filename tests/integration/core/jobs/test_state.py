"""The job state machine: every allowed and forbidden transition, and races."""

from __future__ import annotations

import threading
from itertools import product

import pytest

from core.files.models import File
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob
from core.jobs.state import JobStatus
from core.kit import ids
from core.kit.db import admin_scope
from core.kit.settings import get_settings
from core.tenants import service as tenant_service
from tests.conftest import StackInfo

ALLOWED = {
    (JobStatus.VALIDATING_FILES, JobStatus.QUEUED), (JobStatus.VALIDATING_FILES, JobStatus.FAILED),
    (JobStatus.VALIDATING_FILES, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.RUNNING), (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED), (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.PAUSED), (JobStatus.RUNNING, JobStatus.CANCELLED),
    (JobStatus.RUNNING, JobStatus.QUEUED),
    (JobStatus.PAUSED, JobStatus.QUEUED), (JobStatus.PAUSED, JobStatus.CANCELLED),
    (JobStatus.FAILED, JobStatus.QUEUED),  # an operator's requeue
}


def make_job(status: str) -> tuple[str, str]:
    with admin_scope() as session:
        tenant = tenant_service.create_tenant(session, ids.new_id("t"), get_settings())
        file = File(id=ids.new_id(ids.FILE), tenant_id=tenant.id, filename="d.jsonl",
                    purpose="fine-tune", bytes=1, sha256="0" * 64, format="chat",
                    status="processed", object_key="k")
        session.add(file)
        session.flush()
        job = FineTuningJob(
            id=ids.new_id(ids.JOB), tenant_id=tenant.id, model="loramill/tiny-llama",
            training_file=file.id, method={}, seed=1, status=status,
            gpu_class="jobstate-test",  # no worker serves it: these jobs never run
        )
        session.add(job)
        return job.id, tenant.id


@pytest.mark.parametrize(("source", "target"),
                         list(product(jobstate.STATUSES, jobstate.STATUSES)))
def test_every_transition(stack: StackInfo, source: str, target: str) -> None:
    job_id, _ = make_job(source)
    with admin_scope() as session:
        if target not in jobstate.ALLOWED_FROM:
            with pytest.raises(ValueError):
                jobstate.transition(session, job_id, target)
            return
        moved = jobstate.transition(session, job_id, target)
    with admin_scope() as session:
        status = session.get(FineTuningJob, job_id).status  # type: ignore[union-attr]
    if (source, target) in ALLOWED:
        assert moved is not None and status == target
    else:
        assert moved is None and status == source
    assert jobstate.can_transition(source, target) == ((source, target) in ALLOWED)


def test_finishing_transitions_stamp_finished_at(stack: StackInfo) -> None:
    job_id, _ = make_job(JobStatus.QUEUED)
    with admin_scope() as session:
        job = jobstate.transition(session, job_id, JobStatus.CANCELLED)
        assert job is not None and job.finished_at is not None


def test_tenant_scope_and_lease_fence(stack: StackInfo) -> None:
    job_id, _ = make_job(JobStatus.QUEUED)
    with admin_scope() as session:
        assert jobstate.transition(session, job_id, JobStatus.CANCELLED,
                                   tenant_id="tenant-someone-else") is None
        assert jobstate.transition(session, job_id, JobStatus.RUNNING,
                                   values={"lease_token": "A"}) is not None
    with admin_scope() as session:
        assert jobstate.transition(session, job_id, JobStatus.SUCCEEDED, lease_token="B") is None
        assert jobstate.transition(session, job_id, JobStatus.SUCCEEDED, lease_token="A")


def test_two_concurrent_cancels_one_wins(stack: StackInfo) -> None:
    for _ in range(5):
        job_id, _ = make_job(JobStatus.QUEUED)
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def cancel(job_id: str = job_id, barrier: threading.Barrier = barrier,
                   results: list[bool] = results) -> None:
            with admin_scope() as session:
                barrier.wait()
                results.append(jobstate.transition(session, job_id, JobStatus.CANCELLED)
                               is not None)

        threads = [threading.Thread(target=cancel) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True]


def test_cancel_races_a_claim(stack: StackInfo) -> None:
    """A worker claiming and a user cancelling at once: exactly one of them wins."""
    job_id, _ = make_job(JobStatus.QUEUED)
    barrier = threading.Barrier(2)
    outcome: dict[str, bool] = {}

    def act(target: str) -> None:
        with admin_scope() as session:
            barrier.wait()
            outcome[target] = jobstate.transition(session, job_id, target) is not None

    threads = [threading.Thread(target=act, args=(t,)) for t in
               (JobStatus.RUNNING, JobStatus.CANCELLED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with admin_scope() as session:
        final = session.get(FineTuningJob, job_id).status  # type: ignore[union-attr]
    if outcome[JobStatus.RUNNING] and outcome[JobStatus.CANCELLED]:
        assert final == JobStatus.CANCELLED  # claimed, then cancelled from running: legal
    else:
        assert sum(outcome.values()) == 1
