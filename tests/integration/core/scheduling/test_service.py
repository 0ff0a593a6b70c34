"""The dispatcher and the sweeper against the real database: fairness across tenants,
quotas, capacity from worker heartbeats, lost workers and lost messages."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import func, select, update

from core.files.models import File
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob
from core.jobs.state import JobStatus
from core.kit import ids
from core.kit.db import admin_scope
from core.kit.orm import utcnow
from core.kit.settings import get_settings
from core.scheduling import service as scheduler
from core.scheduling.models import Worker
from core.tenants import service as tenant_service
from core.tenants.models import Tenant
from tests.conftest import StackInfo


def gpu_class() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"  # isolates a test from every other job


def add_worker(gpu: str, capacity: int = 1, *, age: float = 0) -> None:
    with admin_scope() as session:
        session.add(Worker(id=f"w-{uuid.uuid4().hex[:8]}", hostname="test", gpu_class=gpu,
                           capacity=capacity,
                           last_heartbeat_at=utcnow() - timedelta(seconds=age)))


def add_tenant(max_running: int = 2) -> str:
    with admin_scope() as session:
        tenant = tenant_service.create_tenant(session, f"t-{uuid.uuid4().hex[:8]}",
                                              get_settings())
        tenant.max_running_jobs = max_running
        return tenant.id


def add_jobs(tenant_id: str, gpu: str, count: int, priority: int = 0) -> list[str]:
    made = []
    with admin_scope() as session:
        file = File(id=ids.new_id(ids.FILE), tenant_id=tenant_id, filename="d.jsonl",
                    purpose="fine-tune", bytes=1, sha256="0" * 64, status="processed",
                    object_key="k")
        session.add(file)
        session.flush()
        for i in range(count):
            job = FineTuningJob(
                id=ids.new_id(ids.JOB), tenant_id=tenant_id, model="loramill/tiny-llama",
                training_file=file.id, method={}, seed=1, status=JobStatus.QUEUED,
                gpu_class=gpu, priority=priority,
                created_at=utcnow() + timedelta(milliseconds=i),
            )
            session.add(job)
            made.append(job.id)
    return made


def tick(gpu: str) -> list[str]:
    """One real dispatcher tick; the picks of this test's GPU class (a tick serves all)."""
    with admin_scope() as session:
        picks = scheduler.dispatch_tick(session, get_settings())
    return [p.job_id for p in picks if p.gpu_class == gpu]


def start(job_id: str) -> None:
    with admin_scope() as session:
        assert jobstate.transition(session, job_id, JobStatus.RUNNING,
                                   values={"lease_token": "t", "heartbeat_at": utcnow()})


def finish(job_id: str) -> None:
    with admin_scope() as session:
        assert jobstate.transition(session, job_id, JobStatus.SUCCEEDED)


def test_one_slot_tenant_b_goes_before_tenant_a_second_job(stack: StackInfo) -> None:
    gpu = gpu_class()
    add_worker(gpu, capacity=1)
    a, b = add_tenant(), add_tenant()
    a_jobs = add_jobs(a, gpu, 20)
    b_jobs = add_jobs(b, gpu, 1)
    order = []
    for _ in range(3):
        picked = tick(gpu)
        assert len(picked) == 1
        assert tick(gpu) == []  # the one slot is taken until that job ends
        start(picked[0])
        finish(picked[0])
        order += picked
    assert order == [a_jobs[0], b_jobs[0], a_jobs[1]]


def test_priority_then_age_within_a_tenant_and_quota_across(stack: StackInfo) -> None:
    gpu = gpu_class()
    add_worker(gpu, capacity=5)
    a = add_tenant(max_running=2)
    low = add_jobs(a, gpu, 3)
    high = add_jobs(a, gpu, 1, priority=5)
    picked = tick(gpu)
    assert picked == [high[0], low[0]]  # capacity 5, but the tenant may run only 2
    assert tick(gpu) == []


def test_no_live_worker_means_no_dispatch(stack: StackInfo) -> None:
    gpu = gpu_class()
    add_worker(gpu, capacity=4, age=3600)  # last heard of an hour ago
    add_jobs(add_tenant(), gpu, 2)
    assert tick(gpu) == []


def test_suspended_tenants_are_not_dispatched(stack: StackInfo) -> None:
    gpu = gpu_class()
    add_worker(gpu)
    t = add_tenant()
    add_jobs(t, gpu, 1)
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == t).values(suspended_at=utcnow()))
    assert tick(gpu) == []


def server_up_for_a_lease(lease: float) -> None:
    """The sweeper judges no lease before PostgreSQL has been up for a whole lease timeout
    (a restart silences every worker); this test stack's server may be younger."""
    with admin_scope() as session:
        up = session.scalar(select(func.extract("epoch", func.now()
                                                - func.pg_postmaster_start_time())))
    time.sleep(max(0.0, lease + 0.5 - float(up or 0)))


def test_sweeper_requeues_a_lost_job_then_fails_it_after_max_attempts(
        stack: StackInfo) -> None:
    settings = get_settings()
    server_up_for_a_lease(settings.lease_timeout_seconds)
    gpu = gpu_class()
    (job_id,) = add_jobs(add_tenant(), gpu, 1)
    stale = utcnow() - timedelta(seconds=settings.lease_timeout_seconds + 5)
    for attempt in range(1, settings.max_attempts + 1):
        with admin_scope() as session:
            moved = jobstate.transition(session, job_id, JobStatus.RUNNING, values={
                "lease_token": f"lease-{attempt}", "heartbeat_at": stale,
                "attempt": attempt, "worker_id": "gone"})
            assert moved is not None
        with admin_scope() as session:
            result = scheduler.sweep(session, settings)
        with admin_scope() as session:
            job = session.get(FineTuningJob, job_id)
            assert job is not None
            if attempt < settings.max_attempts:
                assert job_id in result["requeued"] and job.status == JobStatus.QUEUED
                assert job.lease_token is None
            else:
                assert job_id in result["failed"] and job.status == JobStatus.FAILED
                assert job.error is not None and job.error["code"] == "worker_lost"


def test_a_fresh_heartbeat_is_left_alone_and_lost_dispatches_are_rearmed(
        stack: StackInfo) -> None:
    settings = get_settings()
    gpu = gpu_class()
    running, dispatched = add_jobs(add_tenant(), gpu, 2)
    start(running)
    with admin_scope() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == dispatched).values(
            dispatched_at=utcnow() - timedelta(seconds=settings.dispatch_timeout_seconds + 1)))
        result = scheduler.sweep(session, settings)
    assert running not in result["requeued"] and dispatched in result["redispatched"]
