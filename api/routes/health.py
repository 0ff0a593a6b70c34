from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from core import metrics
from core.db import get_engine
from core.settings import get_settings
from core.storage import get_storage

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> JSONResponse:
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
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@lru_cache(maxsize=1)
def _queue_collector() -> metrics.QueueCollector:
    settings = get_settings()
    return metrics.QueueCollector(settings.worker_timeout_seconds, settings.gpu_class)


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """Prometheus text format: this API's (every process's) samples and the queue."""
    body = generate_latest(metrics.registry(_queue_collector()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
