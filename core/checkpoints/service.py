"""Checkpoints: a running job's state made durable (files to S3, then its row), so a lost
worker's job resumes exactly where it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.checkpoints import repository
from core.checkpoints.models import JobCheckpoint
from core.jobs import repository as job_repo
from core.jobs.models import FineTuningJob
from core.kit.storage import Storage, checkpoint_prefix


def upload(storage: Storage, tenant_id: str, job_id: str, step: int, directory: Path) -> str:
    """The checkpoint's files, to their prefix; returns it. Nothing points at them until
    :func:`record` writes the row."""
    prefix = checkpoint_prefix(tenant_id, job_id, step)
    for path in sorted(directory.iterdir()):
        storage.upload_file(path, prefix + path.name)
    return prefix


def record(session: Session, job: FineTuningJob, step: int, metrics: dict[str, Any],
           prefix: str) -> JobCheckpoint:
    """The checkpoint's row and event, in the caller's (fenced) transaction."""
    row = repository.add(session, tenant_id=job.tenant_id, job_id=job.id, step=step,
                         metrics=metrics, object_prefix=prefix)
    job_repo.add_event(session, job, f"Checkpoint saved at step {step}", data={"step": step})
    return row


latest = repository.latest
