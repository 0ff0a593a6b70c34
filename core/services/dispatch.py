"""Messages to Celery. PostgreSQL stays the source of truth: a broker outage loses no
job, it only delays one (the dispatcher sends again)."""

from __future__ import annotations

import logging

log = logging.getLogger("loramill.dispatch")


def enqueue(job_id: str, tenant_id: str, gpu_class: str) -> bool:
    """Send a job's wake-up message to its GPU class's queue. It names the tenant, so the
    worker opens its transactions as that tenant."""
    from worker.celery_app import TRAIN_TASK, app, queue_for

    try:
        app.send_task(TRAIN_TASK, args=[job_id, tenant_id], queue=queue_for(gpu_class),
                      retry=False)
    except Exception as exc:
        log.warning("could not send job %s to the broker: %s", job_id, exc)
        return False
    return True


def wake_dispatcher() -> None:
    """Ask the scheduler to dispatch now rather than at its next tick (best effort)."""
    from worker.celery_app import DISPATCH_TASK, SCHEDULER_QUEUE, app

    try:
        app.send_task(DISPATCH_TASK, queue=SCHEDULER_QUEUE, retry=False, expires=10)
    except Exception as exc:
        log.warning("could not wake the dispatcher (broker unavailable?): %s", exc)
