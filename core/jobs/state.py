"""The job state machine (design.md §4): the only place that changes a job's status.

Every transition is one conditional UPDATE whose WHERE clause names the states it may
leave, so two actors racing on one job cannot both win; the loser gets ``None``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.jobs.models import FineTuningJob
from core.kit import metrics
from core.kit.orm import utcnow
from core.webhooks import service as webhooks


class JobStatus(StrEnum):
    """A job's status; the names are OpenAI's fine-tuning API's."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUSES = tuple(JobStatus)
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL

# target status -> the statuses it may be entered from
ALLOWED_FROM: dict[str, frozenset[str]] = {
    # from running: worker lost, re-queued; from failed: an operator's requeue (/v1/admin)
    JobStatus.QUEUED: frozenset({JobStatus.VALIDATING_FILES, JobStatus.RUNNING,
                                 JobStatus.PAUSED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED}),
    JobStatus.PAUSED: frozenset({JobStatus.RUNNING}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.CANCELLED: frozenset(ACTIVE),
}

# Columns the finishing transitions stamp on their own.
_FINISHING = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def can_transition(source: str, target: str) -> bool:
    return source in ALLOWED_FROM.get(target, frozenset())


def transition(
    session: Session,
    job_id: str,
    target: str,
    *,
    tenant_id: str | None = None,
    lease_token: str | None = None,
    values: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> FineTuningJob | None:
    """Move ``job_id`` to ``target`` if its current status allows it.

    ``lease_token`` fences a worker's write: a worker whose lease was taken over loses.
    Returns the updated job, or ``None`` when the job is missing or in another state.
    """
    if target not in ALLOWED_FROM:
        raise ValueError(f"no transition leads to {target!r}")
    changes: dict[str, Any] = {"status": target, **(values or {})}
    if target in _FINISHING:
        changes.setdefault("finished_at", now or utcnow())
    stmt = (
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id)
        .where(FineTuningJob.status.in_(ALLOWED_FROM[target]))
        .values(**changes)
        .returning(FineTuningJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if tenant_id is not None:
        stmt = stmt.where(FineTuningJob.tenant_id == tenant_id)
    if lease_token is not None:
        stmt = stmt.where(FineTuningJob.lease_token == lease_token)
    job: FineTuningJob | None = session.execute(stmt).scalar_one_or_none()
    if job is not None and target in TERMINAL:  # the tenant's webhooks, in this transaction
        webhooks.enqueue(session, job.tenant_id, f"fine_tuning.job.{target}", {"id": job.id})
        metrics.JOBS_FINISHED.labels(job.gpu_class, target).inc()
    return job
