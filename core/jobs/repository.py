from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.jobs.models import FineTuningJob, JobEvent
from core.jobs.state import ACTIVE, JobStatus
from core.kit import ids
from core.kit.pagination import newest_first
from core.tenants.scope import TenantId


def add(session: Session, job: FineTuningJob) -> FineTuningJob:
    session.add(job)
    session.flush()
    return job


def get(session: Session, tenant_id: TenantId, job_id: str) -> FineTuningJob | None:
    return session.scalars(
        select(FineTuningJob).where(
            FineTuningJob.tenant_id == tenant_id, FineTuningJob.id == job_id
        )
    ).one_or_none()


def by_id(session: Session, job_id: str) -> FineTuningJob | None:
    """Any tenant's job (operators, the admin role; row-level security limits others)."""
    return session.get(FineTuningJob, job_id)


def list_page(
    session: Session, tenant_id: TenantId, *, after: str | None, limit: int,
    metadata: dict[str, str] | None = None,
) -> tuple[list[FineTuningJob], bool]:
    stmt = select(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id)
    if metadata:
        stmt = stmt.where(FineTuningJob.metadata_.contains(metadata))
    return newest_first(session, stmt, FineTuningJob.id, after=after, limit=limit)


def add_event(
    session: Session, job: FineTuningJob, message: str, *, level: str = "info",
    type: str = "message", data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        id=ids.new_id(ids.EVENT), tenant_id=job.tenant_id, job_id=job.id, level=level,
        type=type, message=message, data=data,
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session, tenant_id: TenantId, job_id: str, *, after: str | None, limit: int,
) -> tuple[list[JobEvent], bool]:
    stmt = select(JobEvent).where(JobEvent.tenant_id == tenant_id, JobEvent.job_id == job_id)
    return newest_first(session, stmt, JobEvent.id, after=after, limit=limit)


def count_queued(session: Session, tenant_id: TenantId) -> int:
    return int(session.scalar(select(func.count()).select_from(FineTuningJob).where(
        FineTuningJob.tenant_id == tenant_id, FineTuningJob.status == JobStatus.QUEUED)) or 0)


def active_job_using_file(session: Session, tenant_id: TenantId, file_id: str) -> str | None:
    """An unfinished job of the tenant that trains or validates on ``file_id``."""
    found: str | None = session.scalars(
        select(FineTuningJob.id).where(
            FineTuningJob.tenant_id == tenant_id,
            FineTuningJob.status.in_(ACTIVE),
            (FineTuningJob.training_file == file_id)
            | (FineTuningJob.validation_file == file_id),
        ).limit(1)
    ).first()
    return found


def fence(session: Session, job_id: str, lease_token: str) -> FineTuningJob | None:
    """Touch the heartbeat of a job that still runs under this lease, locking its row for
    the transaction; None when it does not (taken over, cancelled, finished)."""
    job: FineTuningJob | None = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.lease_token == lease_token,
               FineTuningJob.status == JobStatus.RUNNING)
        .values(heartbeat_at=func.now())
        .returning(FineTuningJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    return job


def lease_state(session: Session, job_id: str) -> tuple[str, str | None, bool]:
    """(status, lease token, pause requested) — what a worker checks between steps."""
    row = session.execute(
        select(FineTuningJob.status, FineTuningJob.lease_token,
               FineTuningJob.pause_requested_at)
        .where(FineTuningJob.id == job_id)).one()
    return row.status, row.lease_token, row.pause_requested_at is not None


def cancelled_under(session: Session, job_id: str, lease_token: str) -> FineTuningJob | None:
    """The job, if it was cancelled while this lease held it."""
    job: FineTuningJob | None = session.scalars(select(FineTuningJob).where(
        FineTuningJob.id == job_id, FineTuningJob.lease_token == lease_token,
        FineTuningJob.status == JobStatus.CANCELLED)).one_or_none()
    return job


def recent_runs(session: Session, model: str, limit: int = 200) -> list[tuple[str, int, float]]:
    """The newest succeeded jobs on ``model``: (GPU class, trained tokens, seconds from
    first start to end). Across tenants under the admin role (estimates take the rate,
    never a job)."""
    seconds = func.extract("epoch", FineTuningJob.finished_at - FineTuningJob.started_at)
    rows = session.execute(
        select(FineTuningJob.gpu_class, FineTuningJob.trained_tokens, seconds)
        .where(FineTuningJob.model == model, FineTuningJob.status == JobStatus.SUCCEEDED,
               FineTuningJob.trained_tokens > 0, FineTuningJob.started_at.is_not(None),
               FineTuningJob.finished_at.is_not(None))
        .order_by(FineTuningJob.finished_at.desc()).limit(limit)).all()
    return [(str(c), int(t or 0), float(s)) for c, t, s in rows if s and s > 0]
