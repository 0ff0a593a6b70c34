"""Every query of scheduling: workers' slot heartbeats, and what dispatch and sweep read
and write (across tenants: the admin role)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.jobs.models import FineTuningJob
from core.jobs.state import JobStatus
from core.kit.orm import last_sign_of_life
from core.scheduling.models import Worker
from core.tenants.models import Tenant


def beat(session: Session, worker_id: str, *, hostname: str, gpu_class: str, capacity: int,
         stopped: bool = False) -> None:
    """Announce the worker's slots (insert or refresh its row); ``stopped``: it is going."""
    values: dict[str, Any] = {
        "id": worker_id, "hostname": hostname, "gpu_class": gpu_class, "capacity": capacity,
        "last_heartbeat_at": func.now(), "stopped_at": func.now() if stopped else None,
    }
    session.execute(insert(Worker).values(started_at=func.now(), **values)
                    .on_conflict_do_update(index_elements=["id"], set_=values))


# ----- dispatch and sweep: every query they make ----------------------------------------

DISPATCH_LOCK = 0x10A4A111  # advisory lock ids
SWEEP_LOCK = 0x10A4A112

# Each tenant's next jobs of a GPU class, at most min(slots, its max_running_jobs):
# one index scan per tenant on ix_fine_tuning_jobs_dispatch.
HEADS_SQL = text("""
    SELECT j.id, j.tenant_id, j.priority, j.created_at, t.max_running_jobs,
           t.last_dispatched_at
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT id, tenant_id, priority, created_at
        FROM fine_tuning_jobs
        WHERE tenant_id = t.id AND gpu_class = :gpu_class
          AND status = 'queued' AND dispatched_at IS NULL
        ORDER BY priority DESC, created_at
        LIMIT LEAST(:per_tenant, t.max_running_jobs)
    ) j
    WHERE t.suspended_at IS NULL
""")

# Jobs holding (or about to hold) a worker slot. Written exactly as the partial index
# ix_fine_tuning_jobs_inflight's predicate, so PostgreSQL reads only that small index.
INFLIGHT_SQL = text("""
    SELECT tenant_id, gpu_class, count(*)
    FROM fine_tuning_jobs
    WHERE status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)
    GROUP BY tenant_id, gpu_class
""")


@dataclass(frozen=True)
class Head:
    """One of a tenant's next queued jobs, with what fairness needs of its tenant."""

    job_id: str
    tenant_id: str
    priority: int
    created_at: datetime
    tenant_quota: int  # max_running_jobs
    tenant_served_at: datetime | None  # when one of its jobs was last dispatched


def database_now(session: Session) -> datetime:
    now: datetime | None = session.scalar(select(func.now()))
    assert now is not None
    return now


def try_lock(session: Session, lock_id: int) -> bool:
    """A transaction-scoped advisory lock, or False when another holds it."""
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))))


def inflight(session: Session) -> list[tuple[str, str, int]]:
    """(tenant id, GPU class, jobs running or dispatched)."""
    return [(t, g, int(n)) for t, g, n in session.execute(INFLIGHT_SQL)]


def capacity_by_class(session: Session, alive_since: datetime) -> dict[str, int]:
    """Slots of workers heard from since ``alive_since``, per GPU class."""
    return {gpu: int(cap) for gpu, cap in session.execute(
        select(Worker.gpu_class, func.sum(Worker.capacity))
        .where(Worker.alive(alive_since)).group_by(Worker.gpu_class))}


def queue_heads(session: Session, gpu_class: str, per_tenant: int) -> list[Head]:
    return [Head(*row) for row in session.execute(
        HEADS_SQL, {"gpu_class": gpu_class, "per_tenant": per_tenant})]


def mark_dispatched(session: Session, job_ids: list[str], tenant_ids: set[str],
                    now: datetime) -> None:
    session.execute(update(FineTuningJob)
                    .where(FineTuningJob.id.in_(job_ids), FineTuningJob.status == JobStatus.QUEUED)
                    .values(dispatched_at=now)
                    .execution_options(synchronize_session=False))
    session.execute(update(Tenant).where(Tenant.id.in_(tenant_ids))
                    .values(last_dispatched_at=now)
                    .execution_options(synchronize_session=False))


def undispatch(session: Session, job_ids: list[str]) -> None:
    session.execute(update(FineTuningJob)
                    .where(FineTuningJob.id.in_(job_ids), FineTuningJob.status == JobStatus.QUEUED)
                    .values(dispatched_at=None)
                    .execution_options(synchronize_session=False))


def stale_running(session: Session, silent_before: datetime) -> list[FineTuningJob]:
    """Running jobs whose last sign of life (:func:`last_sign_of_life`) is older than
    ``silent_before``, locked (others skipped)."""
    return list(session.scalars(
        select(FineTuningJob)
        .where(FineTuningJob.status == JobStatus.RUNNING,
               last_sign_of_life(FineTuningJob.heartbeat_at) < silent_before)
        .with_for_update(skip_locked=True)))


def rearm_unclaimed(session: Session, dispatched_before: datetime) -> list[str]:
    """Dispatched jobs nobody claimed (a lost message): dispatchable again."""
    return list(session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.status == JobStatus.QUEUED,
               FineTuningJob.dispatched_at < dispatched_before)
        .values(dispatched_at=None)
        .returning(FineTuningJob.id)
        .execution_options(synchronize_session=False)).scalars())


def ended_since(session: Session, since: datetime) -> list[tuple[str, str]]:
    """(tenant id, job id) of jobs that ended since ``since``."""
    return list(session.execute(select(FineTuningJob.tenant_id, FineTuningJob.id).where(
        FineTuningJob.finished_at >= since)).tuples())
