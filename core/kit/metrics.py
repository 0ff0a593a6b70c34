"""Prometheus metrics for the API, the training workers and the scheduler.

Multi-process safe: a process started with ``PROMETHEUS_MULTIPROC_DIR`` set (the local
stack sets one directory per process kind; a forking server shares one among its
children) writes its samples to files there, and :func:`registry` reads them all back.
Without it, the process keeps its samples in memory.

Counters and histograms are observed where things happen (a request, a job finishing, a
lease expiring). What the database already knows (queue depth, the oldest queued job,
live workers) is read at scrape time by :class:`QueueCollector` on the API, so every API
replica reports the same numbers and nothing drifts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("loramill.metrics")

HTTP_LATENCY = Histogram(
    "loramill_http_request_duration_seconds", "API request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_DURATION = Histogram(
    "loramill_job_duration_seconds",
    "Wall time from a job's start to its end (succeeded, failed or cancelled).",
    ["gpu_class", "status"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
TRAINED_TOKENS = Counter(
    "loramill_trained_tokens", "Tokens trained on (loss-bearing and context).", ["gpu_class"],
)
LEASE_EXPIRIES = Counter(
    "loramill_lease_expiries",
    "Running jobs whose worker stopped heartbeating, by what the sweeper did with them.",
    ["outcome"],
)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry(*extra: Collector) -> CollectorRegistry:
    """The registry to expose: every process's samples (or this process's, without a
    multi-process directory), plus ``extra`` collectors."""
    reg = CollectorRegistry()
    if multiprocess():
        MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    else:
        reg.register(REGISTRY)
    for collector in extra:
        reg.register(collector)
    return reg


class QueueCollector(Collector):
    """Queue depth, oldest queued job and live workers, read from PostgreSQL."""

    def __init__(self, worker_timeout_seconds: float, gpu_class: str):
        self.worker_timeout = worker_timeout_seconds
        self.gpu_class = gpu_class  # reported with zeros when nothing is known yet

    def describe(self) -> list[GaugeMetricFamily]:
        """The families, empty (a registry asks for them without querying anything)."""
        return [
            GaugeMetricFamily("loramill_database_up",
                              "1 when the metrics query reached PostgreSQL."),
            GaugeMetricFamily("loramill_jobs", "Unfinished jobs by status and GPU class.",
                              labels=["status", "gpu_class"]),
            GaugeMetricFamily("loramill_oldest_queued_job_age_seconds",
                              "Age of the oldest job waiting in the queue.",
                              labels=["gpu_class"]),
            GaugeMetricFamily("loramill_workers_alive",
                              "Training workers heard from within the worker timeout.",
                              labels=["gpu_class"]),
        ]

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from core.jobs import state as jobstate
        from core.jobs.models import FineTuningJob
        from core.jobs.state import JobStatus
        from core.kit.db import admin_scope
        from core.scheduling.models import Worker

        up, depth, oldest, alive = self.describe()
        try:
            with admin_scope() as session:  # counts across tenants
                counts = session.execute(
                    select(FineTuningJob.status, FineTuningJob.gpu_class, func.count())
                    .where(FineTuningJob.status.in_(jobstate.ACTIVE))
                    .group_by(FineTuningJob.status, FineTuningJob.gpu_class)).all()
                ages = session.execute(
                    select(FineTuningJob.gpu_class,
                           func.extract("epoch", func.now() - func.min(FineTuningJob.created_at)))
                    .where(FineTuningJob.status == JobStatus.QUEUED)
                    .group_by(FineTuningJob.gpu_class)).all()
                workers = session.execute(
                    select(Worker.gpu_class, func.count())
                    .where(Worker.alive(func.now() - timedelta(seconds=self.worker_timeout)))
                    .group_by(Worker.gpu_class)).all()
        except Exception:
            log.warning("metrics: could not read the queue", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        seen = {(s, g) for s, g, _ in counts}
        classes = {g for _, g, _ in counts} | {g for g, _ in workers} | {self.gpu_class}
        for status, gpu_class, n in counts:
            depth.add_metric([status, gpu_class], n)
        for status in sorted(jobstate.ACTIVE):  # zeros too, so alerts see the series
            for gpu_class in classes:
                if (status, gpu_class) not in seen:
                    depth.add_metric([status, gpu_class], 0)
        queued_age = {g: float(a) for g, a in ages}
        for gpu_class in classes:
            oldest.add_metric([gpu_class], queued_age.get(gpu_class, 0.0))
        live = dict(workers)
        for gpu_class in classes:
            alive.add_metric([gpu_class], live.get(gpu_class, 0))
        yield from (up, depth, oldest, alive)


def serve(host: str, port: int) -> None:
    """Expose this process's metrics on ``host:port`` (workers and the scheduler)."""
    start_http_server(port, addr=host, registry=registry())
    log.info("metrics on %s:%s", host, port)
