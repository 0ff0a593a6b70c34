"""What operators see and do across all tenants: the queue, workers, jobs, tenants, and
the audit log every operator action writes to (in the same transaction as the action)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.audit.models import AuditEntry
from core.jobs import repository as job_repo
from core.jobs import service as job_service
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob, JobEvent
from core.kit import ids
from core.kit.errors import InvalidRequest, NotFound
from core.kit.orm import utcnow
from core.kit.pagination import newest_first
from core.kit.settings import Settings
from core.scheduling.models import Worker
from core.tenants import service as tenant_service
from core.tenants.models import ApiKey, Tenant
from core.tenants.scope import TenantId

RATE_WINDOW = timedelta(minutes=15)
PRIORITY_RANGE = (-100, 100)
QUOTA_FIELDS = ("max_running_jobs", "max_queued_jobs", "max_file_bytes", "storage_bytes")


# ----- audit -----------------------------------------------------------------------------


def audit(session: Session, actor: str, action: str, target_type: str, target_id: str, *,
          tenant_id: str | None = None, details: dict[str, Any] | None = None) -> AuditEntry:
    entry = AuditEntry(id=ids.new_id(ids.AUDIT), actor=actor, action=action,
                       target_type=target_type, target_id=target_id, tenant_id=tenant_id,
                       details=details)
    session.add(entry)
    session.flush()
    return entry


def audit_page(session: Session, *, after: str | None, limit: int,
               target_id: str | None = None) -> tuple[list[AuditEntry], bool]:
    stmt = select(AuditEntry)
    if target_id:
        stmt = stmt.where(AuditEntry.target_id == target_id)
    return newest_first(session, stmt, AuditEntry.id, after=after, limit=limit)


# ----- the queue -------------------------------------------------------------------------


@dataclass
class TenantQueue:
    tenant_id: str
    tenant_name: str
    gpu_class: str
    queued: int = 0
    running: int = 0
    paused: int = 0
    oldest_queued_at: datetime | None = None


@dataclass
class QueueSummary:
    generated_at: datetime
    rows: list[TenantQueue]
    totals: dict[str, int]
    oldest_queued_at: datetime | None
    started_last_window: int
    finished_last_window: dict[str, int] = field(default_factory=dict)


def queue_summary(session: Session, now: datetime | None = None) -> QueueSummary:
    now = now or utcnow()
    counted = (jobstate.QUEUED, jobstate.RUNNING, jobstate.PAUSED)
    rows = session.execute(
        select(FineTuningJob.tenant_id, Tenant.name, FineTuningJob.gpu_class,
               FineTuningJob.status, func.count(),
               func.min(FineTuningJob.created_at))
        .join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status.in_(counted))
        .group_by(FineTuningJob.tenant_id, Tenant.name, FineTuningJob.gpu_class,
                  FineTuningJob.status)).all()
    by_key: dict[tuple[str, str], TenantQueue] = {}
    totals = dict.fromkeys(counted, 0)
    for tenant_id, name, gpu_class, status, n, oldest in rows:
        entry = by_key.setdefault((tenant_id, gpu_class), TenantQueue(tenant_id, name, gpu_class))
        setattr(entry, status, n)
        totals[status] += n
        if status == jobstate.QUEUED:
            entry.oldest_queued_at = oldest
    since = now - RATE_WINDOW
    started = session.scalar(select(func.count()).select_from(FineTuningJob)
                             .where(FineTuningJob.started_at >= since)) or 0
    finished = dict(session.execute(
        select(FineTuningJob.status, func.count())
        .where(FineTuningJob.finished_at >= since,
               FineTuningJob.status.in_(jobstate.TERMINAL))
        .group_by(FineTuningJob.status)).tuples().all())
    ordered = sorted(by_key.values(), key=lambda q: (-q.queued, -q.running, q.tenant_name))
    waiting = [q.oldest_queued_at for q in ordered if q.oldest_queued_at]
    return QueueSummary(now, ordered, totals, min(waiting, default=None), started,
                        {s: finished.get(s, 0) for s in sorted(jobstate.TERMINAL)})


# ----- workers ---------------------------------------------------------------------------


@dataclass
class WorkerView:
    row: Worker
    state: str  # alive | lost | stopped
    running_jobs: list[str]


def workers(session: Session, settings: Settings, limit: int = 200) -> list[WorkerView]:
    since = func.now() - timedelta(seconds=settings.worker_timeout_seconds)
    rows = session.execute(select(Worker, Worker.alive(since))
                           .order_by(Worker.last_heartbeat_at.desc()).limit(limit)).all()
    running: dict[str, list[str]] = {}
    for job_id, worker_id in session.execute(
            select(FineTuningJob.id, FineTuningJob.worker_id)
            .where(FineTuningJob.status == jobstate.RUNNING)):
        running.setdefault(worker_id or "", []).append(job_id)
    return [WorkerView(w, "stopped" if w.stopped_at else "alive" if alive else "lost",
                       running.get(w.id, [])) for w, alive in rows]


# ----- jobs across tenants ---------------------------------------------------------------


def jobs_page(session: Session, *, status: list[str] | None, tenant_id: str | None,
              older_than: timedelta | None, after: str | None,
              limit: int) -> tuple[list[FineTuningJob], bool]:
    stmt = select(FineTuningJob)
    if status:
        unknown = sorted(set(status) - set(jobstate.STATUSES))
        if unknown:
            raise InvalidRequest(f"unknown status {', '.join(unknown)}; one of "
                                 f"{', '.join(jobstate.STATUSES)}", param="status")
        stmt = stmt.where(FineTuningJob.status.in_(status))
    if tenant_id:
        stmt = stmt.where(FineTuningJob.tenant_id == tenant_id)
    if older_than is not None:
        stmt = stmt.where(FineTuningJob.created_at <= utcnow() - older_than)
    return newest_first(session, stmt, FineTuningJob.id, after=after, limit=limit)


def get_job(session: Session, job_id: str) -> FineTuningJob:
    job = session.get(FineTuningJob, job_id)
    if job is None:
        raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def metric_events(session: Session, job_id: str, limit: int = 5000) -> list[dict[str, Any]]:
    """The job's step metrics, oldest first (the loss curve)."""
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.id.desc()).limit(limit))
    return [d for d in reversed(list(rows)) if d]


def requeue(session: Session, actor: str, job_id: str) -> FineTuningJob:
    """Put a job back in the queue: a failed one (it resumes from its last checkpoint), a
    running one whose worker is wedged (its lease is revoked, so the old worker's writes
    are refused), or a queued one whose dispatch was lost."""
    job = get_job(session, job_id)
    before = job.status
    if before == jobstate.QUEUED:
        job.dispatched_at = None
        session.flush()
        requeued: FineTuningJob | None = job
    elif before in (jobstate.FAILED, jobstate.RUNNING):
        values: dict[str, Any] = {
            "lease_token": None, "worker_id": None, "heartbeat_at": None,
            "dispatched_at": None, "error": None, "finished_at": None,
            "cancel_requested_at": None, "pause_requested_at": None,
        }
        if before == jobstate.FAILED:
            values["attempt"] = 0  # a fresh allowance of worker losses
        requeued = jobstate.transition(session, job_id, jobstate.QUEUED, values=values)
    else:
        requeued = None
    if requeued is None:
        raise InvalidRequest(f"job {job_id} is {job.status}; only failed, running or queued "
                             "jobs can be requeued", param="fine_tuning_job_id",
                             code="job_not_requeueable")
    job_repo.add_event(session, requeued, f"Job requeued by an operator (was {before})")
    audit(session, actor, "job.requeue", "job", job_id, tenant_id=requeued.tenant_id,
          details={"from": before})
    return requeued


def cancel(session: Session, actor: str, job_id: str) -> FineTuningJob:
    job = get_job(session, job_id)
    before = job.status
    cancelled = job_service.cancel(session, TenantId(job.tenant_id), job_id)
    audit(session, actor, "job.cancel", "job", job_id, tenant_id=job.tenant_id,
          details={"from": before})
    return cancelled


def set_priority(session: Session, actor: str, job_id: str, priority: int) -> FineTuningJob:
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise InvalidRequest(f"priority must be between {low} and {high}", param="priority")
    job = get_job(session, job_id)
    if job.status in jobstate.TERMINAL:
        raise InvalidRequest(f"job {job_id} has {job.status}; priority only matters for "
                             "unfinished jobs", param="fine_tuning_job_id",
                             code="job_finished")
    before = job.priority
    job.priority = priority
    session.flush()
    audit(session, actor, "job.priority", "job", job_id, tenant_id=job.tenant_id,
          details={"from": before, "to": priority})
    return job


# ----- tenants ---------------------------------------------------------------------------


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param="tenant_id")
    return tenant


def tenants_page(session: Session, *, after: str | None,
                 limit: int) -> tuple[list[Tenant], bool]:
    return newest_first(session, select(Tenant), Tenant.id, after=after, limit=limit)


def set_quotas(session: Session, actor: str, tenant_id: str,
               quotas: dict[str, int]) -> Tenant:
    tenant = get_tenant(session, tenant_id)
    changes = {}
    for name, value in quotas.items():
        if name not in QUOTA_FIELDS:
            raise InvalidRequest(f"unknown quota {name!r}; one of {', '.join(QUOTA_FIELDS)}",
                                 param=name)
        if value < 0:
            raise InvalidRequest(f"{name} must be 0 or more", param=name)
        changes[name] = {"from": getattr(tenant, name), "to": value}
        setattr(tenant, name, value)
    session.flush()
    audit(session, actor, "tenant.quotas", "tenant", tenant_id, tenant_id=tenant_id,
          details=changes)
    return tenant


def set_suspended(session: Session, actor: str, tenant_id: str, suspended: bool) -> Tenant:
    """A suspended tenant's keys stop working at once; its jobs are left as they are."""
    tenant = get_tenant(session, tenant_id)
    if suspended and tenant.suspended_at is None:
        tenant.suspended_at = utcnow()
    elif not suspended:
        tenant.suspended_at = None
    session.flush()
    audit(session, actor, "tenant.suspend" if suspended else "tenant.unsuspend", "tenant",
          tenant_id, tenant_id=tenant_id)
    return tenant


def create_tenant(session: Session, actor: str, name: str, settings: Settings,
                  quotas: dict[str, int] | None = None) -> Tenant:
    tenant = tenant_service.create_tenant(session, name, settings)
    audit(session, actor, "tenant.create", "tenant", tenant.id, tenant_id=tenant.id,
          details={"name": name})
    if quotas:
        set_quotas(session, actor, tenant.id, quotas)
    return tenant


def issue_key(session: Session, actor: str, tenant_id: str | None, *, name: str = "",
              scopes: list[str] | None = None) -> tenant_service.IssuedKey:
    """A new key of ``tenant_id``, or an admin key when it is None (the server CLI)."""
    if tenant_id is None:
        issued = tenant_service.issue_key(session, None, admin=True, name=name)
    else:
        issued = tenant_service.issue_key(session, get_tenant(session, tenant_id), name=name,
                                          scopes=tenant_service.tenant_scopes(scopes))
    audit(session, actor, "key.create", "api_key", issued.row.id, tenant_id=tenant_id,
          details={"prefix": issued.row.prefix, "scopes": list(issued.row.scopes)})
    return issued


def revoke_key(session: Session, actor: str, tenant_id: str, key_id: str) -> ApiKey:
    get_tenant(session, tenant_id)
    key = tenant_service.revoke_key(session, tenant_id, key_id)
    audit(session, actor, "key.revoke", "api_key", key_id, tenant_id=tenant_id,
          details={"prefix": key.prefix})
    return key


# ----- the dashboard's views ---------------------------------------------------------------


@dataclass
class RunningJob:
    job: FineTuningJob
    tenant_name: str
    step: int
    total_steps: int | None
    train_loss: float | None

    @property
    def progress(self) -> float:
        return progress(self.step, self.total_steps)


def progress(step: int, total_steps: int | None) -> float:
    """The share of a job's steps done, 0 to 1 (0 before its first metrics)."""
    return min(1.0, step / total_steps) if total_steps else 0.0


def running_jobs(session: Session, limit: int = 100) -> list[RunningJob]:
    """Running jobs with their progress, from each one's latest metrics event."""
    rows = session.execute(
        select(FineTuningJob, Tenant.name).join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status == jobstate.RUNNING)
        .order_by(FineTuningJob.started_at).limit(limit)).all()
    latest: dict[str, dict[str, Any]] = {}
    if rows:
        found = session.execute(
            select(JobEvent.job_id, JobEvent.data)
            .where(JobEvent.job_id.in_([job.id for job, _ in rows]),
                   JobEvent.type == "metrics")
            .order_by(JobEvent.job_id, JobEvent.id.desc())
            .distinct(JobEvent.job_id)).all()
        latest = {job_id: data or {} for job_id, data in found}
    out = []
    for job, name in rows:
        m = latest.get(job.id, {})
        out.append(RunningJob(job, name, int(m.get("step", 0)), m.get("total_steps"),
                              m.get("train_loss")))
    return out


def recent_finished(session: Session, statuses: list[str],
                    limit: int = 10) -> list[tuple[FineTuningJob, str]]:
    return [(job, name) for job, name in session.execute(
        select(FineTuningJob, Tenant.name).join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status.in_(statuses))
        .order_by(FineTuningJob.finished_at.desc().nulls_last()).limit(limit)).tuples()]


def recent_events(session: Session, job_id: str, limit: int = 50) -> list[JobEvent]:
    """The job's messages, newest first, without the per-step metrics lines."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                       JobEvent.type != "metrics")
                                .order_by(JobEvent.id.desc()).limit(limit)))
