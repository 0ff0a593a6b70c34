"""Checkpoints: a running job's state made durable (files to S3, then its row), so a lost
worker's job resumes exactly where it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.checkpoints import repository
from core.checkpoints.models import JobCheckpoint
from core.jobs import repository as job_repo
from core.jobs.models import FineTuningJob
from core.kit.storage import Storage, checkpoint_prefix, file_entries


@dataclass(frozen=True)
class Uploaded:
    prefix: str
    files: list[dict[str, Any]]  # name, bytes, sha256


def upload(storage: Storage, tenant_id: str, job_id: str, step: int,
           directory: Path) -> Uploaded:
    """The checkpoint's files, to their prefix, with their sha256s. Nothing points at them
    until :func:`record` writes the row."""
    prefix = checkpoint_prefix(tenant_id, job_id, step)
    paths = sorted(p for p in directory.iterdir() if p.is_file())
    files = file_entries(paths)
    for path in paths:
        storage.upload_file(path, prefix + path.name)
    return Uploaded(prefix, files)


def record(session: Session, job: FineTuningJob, step: int, metrics: dict[str, Any],
           uploaded: Uploaded) -> JobCheckpoint:
    """The checkpoint's row and event, in the caller's (fenced) transaction."""
    row = repository.add(session, tenant_id=job.tenant_id, job_id=job.id, step=step,
                         metrics=metrics, object_prefix=uploaded.prefix, files=uploaded.files)
    job_repo.add_event(session, job, f"Checkpoint saved at step {step}", data={"step": step})
    return row


latest = repository.latest
