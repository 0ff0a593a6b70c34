from __future__ import annotations

from functools import lru_cache

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from core.kit import metrics
from core.kit.db import get_engine, pool_usage
from core.kit.settings import get_settings
from core.kit.storage import get_storage
from core.ops.metrics import QueueCollector

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: a check failed"}})
async def readyz() -> JSONResponse:
    """Ready when the database and storage answer and this process has room: a pool with
    every connection in use, or every worker thread busy, is reported as saturated."""
    checks = _capacity()
    if all(v == "ok" for v in checks.values()):
        checks.update(await run_in_threadpool(_services))
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


def _capacity() -> dict[str, str]:
    in_use, capacity = pool_usage(get_engine())
    threads = anyio.to_thread.current_default_thread_limiter()
    busy, total = threads.borrowed_tokens, int(threads.total_tokens)
    return {
        "database_pool": (f"saturated ({in_use} of {capacity} connections in use)"
                          if in_use >= capacity else "ok"),
        "threads": f"saturated ({busy} of {total} busy)" if busy >= total else "ok",
    }


def _services() -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("select 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        get_storage().client.head_bucket(Bucket=get_storage().bucket)
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable: {type(exc).__name__}"
    return checks


@lru_cache(maxsize=1)
def _queue_collector() -> QueueCollector:
    settings = get_settings()
    return QueueCollector(settings.worker_timeout_seconds,
                          {settings.gpu_class, *settings.gpu_classes})


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """Prometheus text format: this API's (every process's) samples and the queue."""
    body = generate_latest(metrics.registry(_queue_collector()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
