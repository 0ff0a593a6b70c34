"""Hand a committed job id to the workers of its GPU class."""

from __future__ import annotations

import logging

log = logging.getLogger("loramill.dispatch")


def enqueue(job_id: str, gpu_class: str) -> None:
    """Send the wake-up message. A broker outage loses nothing: the job is committed as
    ``queued`` in PostgreSQL, which stays the source of truth."""
    from worker.celery_app import TRAIN_TASK, app, queue_for

    try:
        app.send_task(TRAIN_TASK, args=[job_id], queue=queue_for(gpu_class), retry=False)
    except Exception as exc:
        log.warning("could not enqueue job %s (broker unavailable?): %s", job_id, exc)
