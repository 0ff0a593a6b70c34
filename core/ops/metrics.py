"""The queue as Prometheus gauges, read from PostgreSQL at scrape time by the API's
/metrics (so every API replica reports the same numbers): jobs by status and GPU class
(the demand signal an autoscaler reads: jobs reach Redis only once a worker has a free
slot), the work that needs a worker of each class (what KEDA scales on), the oldest
queued job's age, live workers, and per tenant its queued jobs and
their oldest's age."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.jobs.state import ACTIVE
from core.kit.db import admin_scope
from core.ops import repository

log = logging.getLogger("loramill.metrics")


class QueueCollector(Collector):
    """Queue depth, oldest queued job and live workers, read from PostgreSQL."""

    def __init__(self, worker_timeout_seconds: float, gpu_classes: Iterable[str]):
        self.worker_timeout = worker_timeout_seconds
        # the deployment's classes: reported with zeros when nothing is known of them yet
        self.gpu_classes = frozenset(gpu_classes)

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
            GaugeMetricFamily("loramill_worker_demand",
                              "Queued and running jobs and live exports needing a worker "
                              "of the class (the autoscaling signal).",
                              labels=["gpu_class"]),
            GaugeMetricFamily("loramill_tenant_queued_jobs",
                              "Queued jobs of each tenant that has some, by GPU class.",
                              labels=["tenant_id", "gpu_class"]),
            GaugeMetricFamily("loramill_tenant_oldest_queued_job_age_seconds",
                              "Age of each tenant's oldest queued job, by GPU class.",
                              labels=["tenant_id", "gpu_class"]),
        ]

    def collect(self) -> Iterator[Metric]:
        up, depth, oldest, alive, demand, tenant_depth, tenant_oldest = self.describe()
        try:
            with admin_scope() as session:  # counts across tenants
                counts = repository.active_jobs_by_class(session)
                ages = repository.oldest_queued_age_by_class(session)
                by_tenant = repository.queued_by_tenant(session)
                workers = repository.workers_alive_by_class(
                    session, timedelta(seconds=self.worker_timeout))
                classes = {g for _, g, _ in counts} | set(workers) | self.gpu_classes
                demands = repository.worker_demand(session, sorted(classes))
        except Exception:
            log.warning("metrics: could not read the queue", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        seen = {(s, g) for s, g, _ in counts}
        for status, gpu_class, n in counts:
            depth.add_metric([status, gpu_class], n)
        for status in sorted(ACTIVE):  # zeros too, so alerts see the series
            for gpu_class in classes:
                if (status, gpu_class) not in seen:
                    depth.add_metric([status, gpu_class], 0)
        queued_age = ages
        for gpu_class in classes:
            oldest.add_metric([gpu_class], queued_age.get(gpu_class, 0.0))
        live = workers
        for gpu_class in classes:
            alive.add_metric([gpu_class], live.get(gpu_class, 0))
        for gpu_class, n in demands.items():
            demand.add_metric([gpu_class], n)
        for tenant_id, gpu_class, n, age in by_tenant:
            tenant_depth.add_metric([tenant_id, gpu_class], n)
            tenant_oldest.add_metric([tenant_id, gpu_class], age)
        yield from (up, depth, oldest, alive, demand, tenant_depth, tenant_oldest)
