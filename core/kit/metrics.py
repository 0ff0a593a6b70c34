"""Prometheus metrics for the API, the training workers and the scheduler.

Multi-process safe: a process started with ``PROMETHEUS_MULTIPROC_DIR`` set (the local
stack sets one directory per process kind; a forking server shares one among its
children) writes its samples to files there, and :func:`registry` reads them all back.
Without it, the process keeps its samples in memory.

Counters and histograms are observed where things happen (a request, a job finishing, a
lease expiring). What the database already knows (queue depth, the oldest queued job,
live workers) is read at scrape time by core/ops/metrics.py on the API, so every API
replica reports the same numbers and nothing drifts.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
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

# Serving (core/serving/gateway.py); kind: base | fine_tuned
JOBS_FINISHED = Counter(
    "loramill_jobs_finished", "Jobs that ended, by GPU class and outcome (succeeded, "
    "failed, cancelled): counted where the state machine ends them.", ["gpu_class", "status"])
# The scheduler: each tick of dispatch and sweep, how long it took, and when the last one
# ran (its liveness: a scheduler that stopped ticking is down, whatever its process says)
SCHEDULER_TICKS = Histogram(
    "loramill_scheduler_tick_seconds", "Duration of a scheduler tick.", ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SCHEDULER_LAST_TICK = Gauge(
    "loramill_scheduler_last_tick_timestamp_seconds", "When the scheduler last finished a "
    "tick (Unix time).", ["task"], multiprocess_mode="max")
BUILD_INFO = Gauge(
    "loramill_build_info", "1, labelled with the running version of loramill and Python.",
    ["version", "python"], multiprocess_mode="max")
WEBHOOK_DELIVERIES = Counter(
    "loramill_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retried (will be tried again), "
    "failed (given up)", ["outcome"])
INFERENCE_REQUESTS = Counter(
    "loramill_inference_requests", "Inference requests by endpoint, model kind and outcome.",
    ["endpoint", "kind", "outcome"],
)
INFERENCE_TTFT = Histogram(
    "loramill_inference_time_to_first_token_seconds",
    "From the gateway receiving a streamed request to the first generated token.", ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INFERENCE_TOKENS_PER_SECOND = Histogram(
    "loramill_inference_tokens_per_second", "Generated tokens per second of one request.",
    ["kind"], buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
ADAPTER_CACHE = Counter(
    "loramill_adapter_cache", "Adapter lookups in the gateway's local cache (hit or miss).",
    ["result"],
)
ADAPTER_LOADS = Counter(
    "loramill_adapter_loads", "Adapters registered with an engine, by where the files came "
    "from (disk: the local cache; storage: fetched and verified first).", ["source"],
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loramill_adapter_load_seconds", "Time to make an adapter callable (fetch, verify, "
    "register with the engine).", ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
)


def announce_build() -> None:
    """Set ``loramill_build_info`` for this process (its version and Python)."""
    import importlib.metadata as md
    import platform

    try:
        version = md.version("loramill-server")
    except md.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.labels(version, platform.python_version()).set(1)


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


def serve(host: str, port: int) -> None:
    """Expose this process's metrics on ``host:port`` (workers and the scheduler)."""
    announce_build()
    start_http_server(port, addr=host, registry=registry())
    log.info("metrics on %s:%s", host, port)
