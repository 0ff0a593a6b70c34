from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.checkpoints.models import JobCheckpoint
from core.kit import ids
from core.kit.pagination import newest_first
from core.tenants.scope import TenantId


def add(session: Session, *, tenant_id: str, job_id: str, step: int,
        metrics: dict[str, Any], object_prefix: str,
        files: list[dict[str, Any]]) -> JobCheckpoint:
    row = JobCheckpoint(id=ids.new_id(ids.CHECKPOINT), tenant_id=tenant_id, job_id=job_id,
                        step=step, metrics=metrics, object_prefix=object_prefix, files=files)
    session.add(row)
    session.flush()
    return row


def list_page(session: Session, tenant_id: TenantId, job_id: str, *, after: str | None,
              limit: int) -> tuple[list[JobCheckpoint], bool]:
    stmt = select(JobCheckpoint).where(JobCheckpoint.tenant_id == tenant_id,
                                       JobCheckpoint.job_id == job_id)
    return newest_first(session, stmt, JobCheckpoint.id, after=after, limit=limit)


def latest(session: Session, job_id: str) -> JobCheckpoint | None:
    return session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
                           .order_by(JobCheckpoint.step.desc()).limit(1)).first()


def at_step(session: Session, tenant_id: TenantId, job_id: str,
            step: int) -> JobCheckpoint | None:
    return session.scalars(select(JobCheckpoint).where(
        JobCheckpoint.tenant_id == tenant_id, JobCheckpoint.job_id == job_id,
        JobCheckpoint.step == step).order_by(JobCheckpoint.id.desc()).limit(1)).first()
