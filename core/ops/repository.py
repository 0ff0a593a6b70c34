"""The SQL behind the operators' views: reads across every tenant (the admin role)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob, JobEvent
from core.jobs.state import JobStatus
from core.kit.pagination import newest_first
from core.scheduling.models import Worker
from core.tenants.models import Tenant

QueueCount = tuple[str, str, str, str, int, datetime]


def queue_counts(session: Session, statuses: Sequence[str]) -> list[QueueCount]:
    """(tenant id, tenant name, GPU class, status, count, oldest created_at) per group."""
    return list(session.execute(
        select(FineTuningJob.tenant_id, Tenant.name, FineTuningJob.gpu_class,
               FineTuningJob.status, func.count(), func.min(FineTuningJob.created_at))
        .join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status.in_(statuses))
        .group_by(FineTuningJob.tenant_id, Tenant.name, FineTuningJob.gpu_class,
                  FineTuningJob.status)).tuples())


def started_since(session: Session, since: datetime) -> int:
    return int(session.scalar(select(func.count()).select_from(FineTuningJob)
                              .where(FineTuningJob.started_at >= since)) or 0)


def finished_since(session: Session, since: datetime) -> dict[str, int]:
    return dict(session.execute(
        select(FineTuningJob.status, func.count())
        .where(FineTuningJob.finished_at >= since,
               FineTuningJob.status.in_(jobstate.TERMINAL))
        .group_by(FineTuningJob.status)).tuples().all())


def workers_with_liveness(session: Session, timeout: timedelta,
                          limit: int) -> list[tuple[Worker, bool]]:
    since = func.now() - timeout
    return [(w, bool(alive)) for w, alive in session.execute(
        select(Worker, Worker.alive(since))
        .order_by(Worker.last_heartbeat_at.desc()).limit(limit)).tuples()]


def running_by_worker(session: Session) -> dict[str, list[str]]:
    running: dict[str, list[str]] = {}
    for job_id, worker_id in session.execute(
            select(FineTuningJob.id, FineTuningJob.worker_id)
            .where(FineTuningJob.status == JobStatus.RUNNING)):
        running.setdefault(worker_id or "", []).append(job_id)
    return running


def jobs_page(session: Session, *, statuses: list[str], tenant_id: str | None,
              created_before: datetime | None, after: str | None,
              limit: int) -> tuple[list[FineTuningJob], bool]:
    stmt = select(FineTuningJob)
    if statuses:
        stmt = stmt.where(FineTuningJob.status.in_(statuses))
    if tenant_id:
        stmt = stmt.where(FineTuningJob.tenant_id == tenant_id)
    if created_before is not None:
        stmt = stmt.where(FineTuningJob.created_at <= created_before)
    return newest_first(session, stmt, FineTuningJob.id, after=after, limit=limit)


def metric_events(session: Session, job_id: str, limit: int) -> list[dict[str, Any]]:
    """The job's step metrics, oldest first."""
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.id.desc()).limit(limit))
    return [d for d in reversed(list(rows)) if d]


def queued_jobs(session: Session, limit: int) -> list[tuple[FineTuningJob, str]]:
    """Queued jobs with their tenant's name, highest priority first, then oldest (the
    order dispatch takes them in within a tenant)."""
    return list(session.execute(
        select(FineTuningJob, Tenant.name).join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status == JobStatus.QUEUED)
        .order_by(FineTuningJob.priority.desc(), FineTuningJob.created_at)
        .limit(limit)).tuples())


def with_tenant_names(session: Session, jobs: list[FineTuningJob]) -> dict[str, str]:
    ids = {j.tenant_id for j in jobs}
    return dict(session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids)))
                .tuples().all()) if ids else {}


def active_counts(session: Session, tenant_id: str) -> dict[str, int]:
    return dict(session.execute(
        select(FineTuningJob.status, func.count()).where(
            FineTuningJob.tenant_id == tenant_id, FineTuningJob.status.in_(jobstate.ACTIVE))
        .group_by(FineTuningJob.status)).tuples().all())


def running_jobs(session: Session, limit: int) -> list[tuple[FineTuningJob, str]]:
    return list(session.execute(
        select(FineTuningJob, Tenant.name).join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status == JobStatus.RUNNING)
        .order_by(FineTuningJob.started_at).limit(limit)).tuples())


def latest_metrics(session: Session, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's latest metrics event's data."""
    if not job_ids:
        return {}
    found = session.execute(
        select(JobEvent.job_id, JobEvent.data)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.type == "metrics")
        .order_by(JobEvent.job_id, JobEvent.id.desc())
        .distinct(JobEvent.job_id)).tuples()
    return {job_id: data or {} for job_id, data in found}


def recent_finished(session: Session, statuses: list[str],
                    limit: int) -> list[tuple[FineTuningJob, str]]:
    return list(session.execute(
        select(FineTuningJob, Tenant.name).join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status.in_(statuses))
        .order_by(FineTuningJob.finished_at.desc().nulls_last()).limit(limit)).tuples())


def recent_events(session: Session, job_id: str, limit: int) -> list[JobEvent]:
    """The job's messages, newest first, without the per-step metrics lines."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                       JobEvent.type != "metrics")
                                .order_by(JobEvent.id.desc()).limit(limit)))


def tenants_page(session: Session, *, after: str | None,
                 limit: int) -> tuple[list[Tenant], bool]:
    return newest_first(session, select(Tenant), Tenant.id, after=after, limit=limit)


def active_jobs_by_class(session: Session) -> list[tuple[str, str, int]]:
    """(status, GPU class, count) of unfinished jobs."""
    return [(s, g, int(n)) for s, g, n in session.execute(
        select(FineTuningJob.status, FineTuningJob.gpu_class, func.count())
        .where(FineTuningJob.status.in_(jobstate.ACTIVE))
        .group_by(FineTuningJob.status, FineTuningJob.gpu_class))]


def oldest_queued_age_by_class(session: Session) -> dict[str, float]:
    return {g: float(age) for g, age in session.execute(
        select(FineTuningJob.gpu_class,
               func.extract("epoch", func.now() - func.min(FineTuningJob.created_at)))
        .where(FineTuningJob.status == JobStatus.QUEUED)
        .group_by(FineTuningJob.gpu_class))}


def queued_by_tenant(session: Session) -> list[tuple[str, str, int, float]]:
    """(tenant, GPU class, queued jobs, the oldest one's age in seconds), for the tenants
    that have queued jobs."""
    return [(str(t), str(g), int(n), float(age)) for t, g, n, age in session.execute(
        select(FineTuningJob.tenant_id, FineTuningJob.gpu_class, func.count(),
               func.extract("epoch", func.now() - func.min(FineTuningJob.created_at)))
        .where(FineTuningJob.status == JobStatus.QUEUED)
        .group_by(FineTuningJob.tenant_id, FineTuningJob.gpu_class))]


def worker_demand(session: Session, gpu_classes: Sequence[str]) -> dict[str, int]:
    """Queued and running jobs and live exports of each class: the workers' demand, as
    KEDA reads it (the SQL function of migration 0017), in one query."""
    return {str(g): int(n) for g, n in session.execute(
        text("SELECT g, loramill_worker_demand(g) FROM unnest(CAST(:classes AS text[])) g"),
        {"classes": list(gpu_classes)})}


def workers_alive_by_class(session: Session, timeout: timedelta) -> dict[str, int]:
    return {g: int(n) for g, n in session.execute(
        select(Worker.gpu_class, func.count())
        .where(Worker.alive(func.now() - timeout)).group_by(Worker.gpu_class))}
