"""The Celery application shared by the API (to enqueue), workers and the scheduler.

A Celery message is a hint, not a lease (design.md §1): it carries a job id only, and the
task re-reads the job and checks its state before doing anything.
"""

from __future__ import annotations

from celery import Celery

from core.settings import get_settings

TRAIN_TASK = "loramill.train_job"


def queue_for(gpu_class: str) -> str:
    return f"gpu-{gpu_class}"


def make_app() -> Celery:
    settings = get_settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("loramill", broker=broker, include=["worker.tasks"])
    app.conf.update(
        task_default_queue=queue_for(settings.gpu_class),
        task_acks_late=True,  # a message is only gone once a task finished with it
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks: never hold jobs another worker could run
        worker_concurrency=settings.worker_concurrency,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 12 * 3600},
        worker_hijack_root_logger=False,
        beat_schedule={},
    )
    return app


app = make_app()
