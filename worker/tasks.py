"""Celery tasks: thin adapters from a message to a service call."""

from __future__ import annotations

import logging

from core import jobstate
from core.db import session_scope
from core.models import FineTuningJob
from worker.celery_app import TRAIN_TASK, app

log = logging.getLogger("loramill.worker")


@app.task(name=TRAIN_TASK)  # type: ignore[untyped-decorator]
def train_job(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(FineTuningJob, job_id)
        if job is None or job.status != jobstate.QUEUED:
            log.info("job %s: nothing to do (status %s)", job_id, job and job.status)
            return
    # The training recipe lands with the training worker; until then a queued job
    # stays queued and is picked up once a worker that can train is deployed.
    log.warning("job %s is queued but this worker has no training recipe yet", job_id)
