"""Messages to the workers, by task name: what core, the API and the scheduler send, and
what worker/celery_app.py registers its tasks under. Core sends through a producer-only
Celery app of its own, so it never imports the worker.

A message is a hint, not a lease (design.md §1): it carries ids only, and PostgreSQL stays
the source of truth, so a broker outage loses no job, it only delays one (the dispatcher
sends again).
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from core.kit.settings import get_settings

log = logging.getLogger("loramill.queue")

TRAIN_TASK = "loramill.train_job"
DISPATCH_TASK = "loramill.dispatch"
SWEEP_TASK = "loramill.sweep"
EXPORT_TASK = "loramill.export"
SCHEDULER_QUEUE = "loramill-scheduler"


TRAIN_PREFIX = "train-"


def queue_for(gpu_class: str) -> str:
    """The queue a GPU class's workers listen on: ``train-cpu``, ``train-gpu-24gb``…"""
    return f"{TRAIN_PREFIX}{gpu_class}"


def class_of(queue: str) -> str | None:
    """The GPU class a training queue is for; None for another queue (the scheduler's)."""
    return queue.removeprefix(TRAIN_PREFIX) if queue.startswith(TRAIN_PREFIX) else None


def broker_url() -> str:
    return get_settings().redis_url or "redis://127.0.0.1:6379/0"


@lru_cache(maxsize=1)
def _producer() -> Celery:
    return Celery("loramill-producer", broker=broker_url())


def _send(task: str, what: str, object_id: str, tenant_id: str, gpu_class: str) -> bool:
    """One message to a GPU class's training queue, naming the tenant (the worker opens
    its transactions as that tenant); False when the broker refused it."""
    try:
        _producer().send_task(task, args=[object_id, tenant_id], queue=queue_for(gpu_class),
                              retry=False)
    except Exception as exc:
        log.warning("could not send %s %s to the broker: %s", what, object_id, exc)
        return False
    return True


def enqueue(job_id: str, tenant_id: str, gpu_class: str) -> bool:
    """Send a job's wake-up message to its GPU class's queue."""
    return _send(TRAIN_TASK, "job", job_id, tenant_id, gpu_class)


def enqueue_export(export_id: str, tenant_id: str, gpu_class: str) -> bool:
    """Send an adapter export to a worker of its base model's class (it needs the base
    model's weights and the ML stack, as training does)."""
    return _send(EXPORT_TASK, "export", export_id, tenant_id, gpu_class)


def wake_dispatcher() -> None:
    """Ask the scheduler to dispatch now rather than at its next tick (best effort)."""
    try:
        _producer().send_task(DISPATCH_TASK, queue=SCHEDULER_QUEUE, retry=False, expires=10)
    except Exception as exc:
        log.warning("could not wake the dispatcher (broker unavailable?): %s", exc)
