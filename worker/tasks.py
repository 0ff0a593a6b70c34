"""Celery tasks and worker signals: thin adapters from a message to a service call."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import signals
from celery.exceptions import WorkerShutdown

from core.kit import logs, metrics, queue
from core.kit.db import admin_scope, session_scope
from core.kit.queue import DISPATCH_TASK, EXPORT_TASK, SWEEP_TASK, TRAIN_TASK
from core.kit.settings import get_settings
from core.kit.storage import StorageUnavailable, get_storage
from core.scheduling import repository as worker_repo
from core.scheduling import service as scheduler
from worker.celery_app import app
from worker.ticker import Ticker

log = logging.getLogger("loramill.worker")
SHUTTING_DOWN = threading.Event()  # set on SIGTERM: running jobs checkpoint and hand back


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@app.task(name=TRAIN_TASK)  # type: ignore[untyped-decorator]
def train_job(job_id: str, tenant_id: str | None = None) -> None:
    """Claim and run one job, as its tenant (row-level security holds the worker to that
    tenant's rows). A duplicate or stale message finds the job no longer queued and does
    nothing; one without a tenant (sent before messages carried it) is dropped, and the
    sweeper dispatches the job again."""
    from worker.runner import run_job

    if tenant_id is None:
        log.warning("job %s: message without a tenant id; dropped", job_id)
        return
    token = logs.start(job_id=job_id, tenant_id=tenant_id)  # on every line of this job
    try:
        outcome = run_job(job_id, tenant_id, worker_id(), shutting_down=SHUTTING_DOWN)
        log.info("job %s: %s", job_id, outcome, extra={"outcome": outcome})
    finally:
        logs.end(token)
    if SHUTTING_DOWN.is_set():
        # The job is checkpointed and back in the queue; stop now rather than wait for the
        # solo pool's event loop to notice the warm shutdown.
        raise WorkerShutdown()


@app.task(name=EXPORT_TASK)  # type: ignore[untyped-decorator]
def export_adapter(export_id: str, tenant_id: str) -> None:
    """Build a version's export (merged model, GGUF adapter) as its tenant."""
    from worker.exports import run_export

    token = logs.start(tenant_id=tenant_id)
    try:
        log.info("export %s: %s", export_id, run_export(export_id, tenant_id))
    finally:
        logs.end(token)


@contextlib.contextmanager
def _tick(task: str) -> Iterator[None]:
    """A scheduler tick, timed; its end is the scheduler's liveness."""
    started = time.monotonic()
    yield
    metrics.SCHEDULER_TICKS.labels(task).observe(time.monotonic() - started)
    metrics.SCHEDULER_LAST_TICK.labels(task).set(time.time())


@app.task(name=DISPATCH_TASK)  # type: ignore[untyped-decorator]
def dispatch_jobs() -> None:
    with _tick("dispatch"):
        _dispatch()


def _dispatch() -> None:
    settings = get_settings()
    with admin_scope() as session:  # the scheduler spans tenants
        picks = scheduler.dispatch_tick(session, settings)
    failed = [p.job_id for p in picks
              if not queue.enqueue(p.job_id, p.tenant_id, p.gpu_class)]
    if failed:
        with admin_scope() as session:
            scheduler.undispatch(session, failed)


@app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
def sweep_jobs() -> None:
    with _tick("sweep"):
        _sweep()


def _sweep() -> None:
    settings = get_settings()
    with admin_scope() as session:
        result = scheduler.sweep(session, settings)
    for outcome in ("requeued", "failed"):
        if result[outcome]:
            metrics.LEASE_EXPIRIES.labels(outcome).inc(len(result[outcome]))
    if any(result.values()):
        log.warning("sweep: %s", result)
    with admin_scope() as session:
        lost, failed = scheduler.sweep_exports(session, settings)
    for export in lost:
        queue.enqueue_export(export.export_id, export.tenant_id, export.gpu_class)
    if lost or failed:
        log.warning("exports whose worker was lost: sent again %s, failed %s",
                    [e.export_id for e in lost], failed)
    if scheduler.janitor.due(settings):
        try:
            with admin_scope() as session:
                cleaned = scheduler.janitor.run(session, get_storage(), settings)
        except StorageUnavailable:
            return  # next time
        if any(cleaned.values()):
            log.warning("storage clean-up: %s", cleaned)


# ----- training workers announce themselves ---------------------------------------------


class WorkerHeartbeat:
    """This training worker's slot, announced in ``workers`` every few seconds (the
    dispatcher counts only workers heard from recently), and withdrawn when it stops."""

    def __init__(self, gpu_class: str, capacity: int):
        self.id, self.gpu_class, self.capacity = worker_id(), gpu_class, capacity
        self._ticker = Ticker("worker heartbeat", get_settings().heartbeat_seconds, self.beat,
                              at_once=True)

    def beat(self, stopped: bool = False) -> None:
        with session_scope() as session:
            worker_repo.beat(session, self.id, hostname=socket.gethostname(),
                             gpu_class=self.gpu_class, capacity=self.capacity,
                             stopped=stopped)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
        try:
            self.beat(stopped=True)
        except Exception:
            log.warning("could not mark worker %s stopped", self.id, exc_info=True)


_heartbeat: WorkerHeartbeat | None = None
_webhooks: Ticker | None = None
WEBHOOK_SECONDS = 1.0  # how often the scheduler looks for due webhook deliveries


@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _json_logs(**_: Any) -> None:
    """Celery's own lines and ours, as JSON lines (connecting here replaces Celery's
    logging setup)."""
    logs.configure()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _announce(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    settings = get_settings()
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else []
    classes = [c for c in (queue.class_of(q) for q in queues) if c is not None]
    if not classes:  # the scheduler: no training slots; it sends webhooks
        global _webhooks
        from core.webhooks.delivery import tick

        _webhooks = Ticker("webhook deliveries", WEBHOOK_SECONDS, tick).start()
        return
    _heartbeat = WorkerHeartbeat(classes[0], 1)
    _heartbeat.start()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _shutting_down(**_: Any) -> None:
    SHUTTING_DOWN.set()
    if _heartbeat is not None:
        _heartbeat.stop()
    if _webhooks is not None:
        _webhooks.stop(timeout=30)


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stopped(**_: Any) -> None:
    from core.kit.process import mark_clean_exit

    mark_clean_exit()
