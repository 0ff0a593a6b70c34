from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.jobs.models import FineTuningJob, JobEvent
from core.jobs.state import ACTIVE
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
        FineTuningJob.tenant_id == tenant_id, FineTuningJob.status == "queued")) or 0)


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
