"""The Celery application shared by the API, training workers and the scheduler.

A Celery message is a hint, not a lease (design.md §1): it carries a job id only, and the
task re-reads the job and claims it with a conditional UPDATE before doing anything. So
correctness never rests on the broker's visibility timeout, and a duplicate or replayed
message is a no-op.

Training workers run ``--pool solo`` (one job per process; one process per GPU), listen
on ``train-<class>`` and announce their capacity in the ``workers`` table. The scheduler is
a worker on ``loramill-scheduler`` with beat embedded (``-B``), running dispatch and sweep.
"""

from __future__ import annotations

from celery import Celery

from core.kit import logs
from core.kit.queue import DISPATCH_TASK, SCHEDULER_QUEUE, SWEEP_TASK, broker_url, queue_for
from core.kit.settings import get_settings

# JSON logs from the first line: warnings Celery and the ML libraries raise while starting
# (before its setup_logging signal) and no progress bars (read once, at their import)
logs.configure()


def make_app() -> Celery:
    """Task names and queues come from core/queue.py, which is how core sends to them."""
    settings = get_settings()
    app = Celery("loramill", broker=broker_url(), include=["worker.tasks"])
    app.conf.update(
        task_default_queue=queue_for(settings.gpu_class),
        task_routes={DISPATCH_TASK: {"queue": SCHEDULER_QUEUE},
                     SWEEP_TASK: {"queue": SCHEDULER_QUEUE}},
        task_acks_late=True,  # a message is only gone once a task finished with it
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks: never hold jobs another worker could run
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 12 * 3600},
        worker_hijack_root_logger=False,
        # task events, so Flower (or `celery events`) can attach to a running fleet
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            "dispatch": {"task": DISPATCH_TASK, "schedule": settings.dispatch_interval_seconds,
                         "options": {"expires": max(settings.dispatch_interval_seconds, 1)}},
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds,
                      "options": {"expires": max(settings.sweep_interval_seconds, 1)}},
        },
    )
    return app


app = make_app()
