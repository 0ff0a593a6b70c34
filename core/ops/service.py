"""What operators see and do across all tenants: the queue, workers, jobs and tenants.
Every action is written to the audit log (core/audit) in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.audit import service as audit
from core.files import repository as file_repo
from core.jobs import repository as job_repo
from core.jobs import service as job_service
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob, JobEvent
from core.jobs.state import JobStatus
from core.kit.errors import InvalidRequest, NotFound
from core.kit.orm import utcnow
from core.kit.settings import Settings
from core.ops import repository
from core.scheduling.models import Worker
from core.tenants import repository as tenant_repo
from core.tenants import service as tenant_service
from core.tenants.models import ApiKey, Tenant
from core.tenants.prices import PriceTable
from core.tenants.scope import TenantId

RATE_WINDOW = timedelta(minutes=15)
PRIORITY_RANGE = (-100, 100)
QUOTA_FIELDS = ("max_running_jobs", "max_queued_jobs", "max_file_bytes", "storage_bytes")


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
    counted = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
    rows = repository.queue_counts(session, counted)
    by_key: dict[tuple[str, str], TenantQueue] = {}
    totals: dict[str, int] = dict.fromkeys(counted, 0)
    for tenant_id, name, gpu_class, status, n, oldest in rows:
        entry = by_key.setdefault((tenant_id, gpu_class), TenantQueue(tenant_id, name, gpu_class))
        setattr(entry, status, n)
        totals[status] += n
        if status == JobStatus.QUEUED:
            entry.oldest_queued_at = oldest
    since = now - RATE_WINDOW
    started = repository.started_since(session, since)
    finished = repository.finished_since(session, since)
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
    rows = repository.workers_with_liveness(
        session, timedelta(seconds=settings.worker_timeout_seconds), limit)
    running = repository.running_by_worker(session)
    return [WorkerView(w, "stopped" if w.stopped_at else "alive" if alive else "lost",
                       running.get(w.id, [])) for w, alive in rows]


# ----- jobs across tenants ---------------------------------------------------------------


def jobs_page(session: Session, *, status: list[str] | None, tenant_id: str | None,
              older_than: timedelta | None, after: str | None,
              limit: int) -> tuple[list[FineTuningJob], bool]:
    unknown = sorted(set(status or ()) - set(jobstate.STATUSES))
    if unknown:
        raise InvalidRequest(f"unknown status {', '.join(unknown)}; one of "
                             f"{', '.join(jobstate.STATUSES)}", param="status")
    return repository.jobs_page(
        session, statuses=status or [], tenant_id=tenant_id,
        created_before=utcnow() - older_than if older_than is not None else None,
        after=after, limit=limit)


def queued_jobs(session: Session, limit: int = 100) -> list[tuple[FineTuningJob, str]]:
    return repository.queued_jobs(session, limit)


@dataclass
class JobSearch:
    jobs: list[FineTuningJob]
    tenant_names: dict[str, str]
    more: bool
    tenant: Tenant | None = None  # the tenant searched for, when one was


def search_jobs(session: Session, *, job_id: str = "", tenant: str = "",
                status: list[str] | None = None, limit: int = 50) -> JobSearch:
    """Jobs of every tenant: one by id, or newest first by tenant (id or name) and
    status. An unknown tenant or status is an InvalidRequest saying so."""
    if job_id:
        found = job_repo.by_id(session, job_id.strip())
        jobs = [found] if found is not None else []
        return JobSearch(jobs, repository.with_tenant_names(session, jobs), False)
    owner = None
    if tenant:
        owner = (session.get(Tenant, tenant.strip())
                 or tenant_repo.get_by_name(session, tenant.strip()))
        if owner is None:
            raise InvalidRequest(f"no tenant with id or name {tenant!r}", param="tenant")
    jobs, more = jobs_page(session, status=status, tenant_id=owner.id if owner else None,
                           older_than=None, after=None, limit=limit)
    return JobSearch(jobs, repository.with_tenant_names(session, jobs), more, owner)


@dataclass
class TenantView:
    tenant: Tenant
    stored_bytes: int
    jobs: dict[str, int]  # unfinished jobs by status
    keys: list[ApiKey]
    recent: list[FineTuningJob]


def tenant_view(session: Session, tenant_id: str) -> TenantView:
    tenant = get_tenant(session, tenant_id)
    recent, _ = jobs_page(session, status=None, tenant_id=tenant.id, older_than=None,
                          after=None, limit=20)
    return TenantView(tenant=tenant,
                      stored_bytes=file_repo.stored_bytes(session, TenantId(tenant.id)),
                      jobs=repository.active_counts(session, tenant.id),
                      keys=tenant_service.list_keys(session, tenant.id), recent=recent)


def get_job(session: Session, job_id: str) -> FineTuningJob:
    job = job_repo.by_id(session, job_id)
    if job is None:
        raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def metric_events(session: Session, job_id: str, limit: int = 5000) -> list[dict[str, Any]]:
    """The job's step metrics, oldest first (the loss curve)."""
    return repository.metric_events(session, job_id, limit)


def requeue(session: Session, actor: str, job_id: str) -> FineTuningJob:
    """Put a job back in the queue: a failed one (it resumes from its last checkpoint), a
    running one whose worker is wedged (its lease is revoked, so the old worker's writes
    are refused), or a queued one whose dispatch was lost."""
    job = get_job(session, job_id)
    before = job.status
    if before == JobStatus.QUEUED:
        job.dispatched_at = None
        session.flush()
        requeued: FineTuningJob | None = job
    elif before in (JobStatus.FAILED, JobStatus.RUNNING):
        values: dict[str, Any] = {
            "lease_token": None, "worker_id": None, "heartbeat_at": None,
            "dispatched_at": None, "error": None, "finished_at": None,
            "cancel_requested_at": None, "pause_requested_at": None,
        }
        if before == JobStatus.FAILED:
            values["attempt"] = 0  # a fresh allowance of worker losses
        requeued = jobstate.transition(session, job_id, JobStatus.QUEUED, values=values)
    else:
        requeued = None
    if requeued is None:
        raise InvalidRequest(f"job {job_id} is {job.status}; only failed, running or queued "
                             "jobs can be requeued", param="fine_tuning_job_id",
                             code="job_not_requeueable")
    job_repo.add_event(session, requeued, f"Job requeued by an operator (was {before})")
    audit.record(session, actor, "job.requeue", "job", job_id, tenant_id=requeued.tenant_id,
          details={"from": before})
    return requeued


def cancel(session: Session, actor: str, job_id: str) -> FineTuningJob:
    job = get_job(session, job_id)
    before = job.status
    cancelled = job_service.cancel(session, TenantId(job.tenant_id), job_id)
    audit.record(session, actor, "job.cancel", "job", job_id, tenant_id=job.tenant_id,
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
    audit.record(session, actor, "job.priority", "job", job_id, tenant_id=job.tenant_id,
          details={"from": before, "to": priority})
    return job


# ----- tenants ---------------------------------------------------------------------------


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = tenant_service.get(session, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param="tenant_id")
    return tenant


tenants_page = repository.tenants_page


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
    audit.record(session, actor, "tenant.quotas", "tenant", tenant_id, tenant_id=tenant_id,
          details=changes)
    return tenant


def set_prices(session: Session, actor: str, tenant_id: str,
               table: PriceTable | None) -> Tenant:
    """The tenant's price table for estimates; None: back to the deployment's default."""
    tenant = get_tenant(session, tenant_id)
    before = tenant.prices
    tenant.prices = table.model_dump() if table is not None else None
    session.flush()
    audit.record(session, actor, "tenant.prices", "tenant", tenant_id, tenant_id=tenant_id,
                 details={"from": before, "to": tenant.prices})
    return tenant


def set_suspended(session: Session, actor: str, tenant_id: str, suspended: bool) -> Tenant:
    """A suspended tenant's keys stop working at once; its jobs are left as they are."""
    tenant = get_tenant(session, tenant_id)
    if suspended and tenant.suspended_at is None:
        tenant.suspended_at = utcnow()
    elif not suspended:
        tenant.suspended_at = None
    session.flush()
    audit.record(session, actor, "tenant.suspend" if suspended else "tenant.unsuspend", "tenant",
          tenant_id, tenant_id=tenant_id)
    return tenant


def create_tenant(session: Session, actor: str, name: str, settings: Settings,
                  quotas: dict[str, int] | None = None) -> Tenant:
    tenant = tenant_service.create_tenant(session, name, settings)
    audit.record(session, actor, "tenant.create", "tenant", tenant.id, tenant_id=tenant.id,
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
    audit.record(session, actor, "key.create", "api_key", issued.row.id, tenant_id=tenant_id,
          details={"prefix": issued.row.prefix, "scopes": list(issued.row.scopes)})
    return issued


def revoke_key(session: Session, actor: str, tenant_id: str, key_id: str) -> ApiKey:
    get_tenant(session, tenant_id)
    key = tenant_service.revoke_key(session, tenant_id, key_id)
    audit.record(session, actor, "key.revoke", "api_key", key_id, tenant_id=tenant_id,
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
    rows = repository.running_jobs(session, limit)
    latest = repository.latest_metrics(session, [job.id for job, _ in rows])
    out = []
    for job, name in rows:
        m = latest.get(job.id, {})
        out.append(RunningJob(job, name, int(m.get("step", 0)), m.get("total_steps"),
                              m.get("train_loss")))
    return out


def recent_finished(session: Session, statuses: list[str],
                    limit: int = 10) -> list[tuple[FineTuningJob, str]]:
    return repository.recent_finished(session, statuses, limit)


def recent_events(session: Session, job_id: str, limit: int = 50) -> list[JobEvent]:
    return repository.recent_events(session, job_id, limit)
