"""Celery tasks: thin adapters from a message to a service call."""

from __future__ import annotations

import logging
import os
import socket

from worker.celery_app import TRAIN_TASK, app

log = logging.getLogger("loramill.worker")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # per process: prefork children differ


@app.task(name=TRAIN_TASK)  # type: ignore[untyped-decorator]
def train_job(job_id: str) -> None:
    """Claim and run one job. A duplicate or stale message finds the job no longer
    queued and does nothing."""
    from worker.runner import run_job

    outcome = run_job(job_id, worker_id())
    log.info("job %s: %s", job_id, outcome)
