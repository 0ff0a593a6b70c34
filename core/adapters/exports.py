"""Exports of a version, on request: a merged model and a GGUF LoRA adapter, built by a
worker of the base model's class (worker/exports.py), stored beside the version under
``exports/<format>/`` with an ``export_manifest.json`` of sha256s, downloadable like the
adapter.

The worker building an export renews its ``heartbeat_at``; when that stops (the worker
died), the scheduler's sweep queues the export anew and sends it again
(:func:`requeue_lost`), up to ``max_attempts`` workers, then fails it. Asking again also
recovers an export: one ``failed``, or still ``queued`` or ``running`` after :data:`STALE`
(its message was lost with a broker that kept nothing), is queued anew; one that
``succeeded`` is answered as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.adapters import service as adapter_service
from core.adapters.models import AdapterExport, AdapterVersion
from core.base_models.models import BaseModel
from core.kit import ids
from core.kit.errors import NotFound
from core.kit.orm import last_sign_of_life, utcnow
from core.tenants.scope import TenantId

FORMATS = ("merged", "gguf")
STALE = timedelta(hours=1)
MANIFEST = "export_manifest.json"


def prefix_of(version: AdapterVersion, format_: str) -> str:
    return f"{version.object_prefix}exports/{format_}/"


def _find(session: Session, version_id: str, format_: str, *,
          lock: bool = False) -> AdapterExport | None:
    stmt = select(AdapterExport).where(AdapterExport.version_id == version_id,
                                       AdapterExport.format == format_)
    return session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()


def request(session: Session, tenant_id: TenantId, name: str, version: int,
            format_: str) -> tuple[AdapterExport, bool]:
    """The version's export in ``format_``, made now or found; and whether it must be
    sent to a worker (new, or failed or stale before)."""
    _, row = adapter_service.get_version(session, tenant_id, name, version)
    found = _find(session, row.id, format_, lock=True)
    now = utcnow()
    if found is None:
        found = AdapterExport(id=ids.new_id("exp"), tenant_id=tenant_id, version_id=row.id,
                              format=format_, status="queued", files=[], created_at=now,
                              object_prefix=prefix_of(row, format_))
        session.add(found)
        session.flush()
        return found, True
    stale = found.status in ("queued", "running") and \
        (found.started_at or found.created_at) < now - STALE
    if found.status == "failed" or stale:
        _requeue(found, now)
        found.attempt = 0  # asked anew: a fresh allowance of lost workers
        session.flush()
        return found, True
    return found, False


def _requeue(found: AdapterExport, now: datetime) -> None:
    found.status, found.error, found.files = "queued", None, []
    found.created_at, found.started_at, found.finished_at = now, None, None
    found.heartbeat_at = None


@dataclass(frozen=True)
class Lost:
    """An export sent to a worker again: which, whose, and to which class's queue."""

    export_id: str
    tenant_id: str
    gpu_class: str


def requeue_lost(session: Session, lost_before: datetime, max_attempts: int,
                 now: datetime) -> tuple[list[Lost], list[str]]:
    """Every tenant's ``running`` exports whose worker's last sign of life
    (:func:`last_sign_of_life`, as for jobs) is older than ``lost_before``: queued anew
    (to send again, after commit), or failed with ``worker_lost`` once ``max_attempts``
    workers were lost on it. Returns both."""
    rows = session.execute(
        select(AdapterExport, BaseModel.gpu_class)
        .join(AdapterVersion, AdapterVersion.id == AdapterExport.version_id)
        .join(BaseModel, BaseModel.id == AdapterVersion.base_model)
        .where(AdapterExport.status == "running",
               last_sign_of_life(AdapterExport.heartbeat_at) < lost_before)
        .with_for_update(of=AdapterExport, skip_locked=True)).all()
    again, failed = [], []
    for found, gpu_class in rows:
        if found.attempt >= max_attempts:
            found.status, found.finished_at = "failed", now
            found.error = {"code": "worker_lost", "message": (
                f"the export lost its worker {found.attempt} times; giving up after "
                f"{max_attempts} attempts")}
            failed.append(found.id)
        else:
            _requeue(found, now)
            again.append(Lost(found.id, found.tenant_id, gpu_class))
    session.flush()
    return again, failed


def get(session: Session, tenant_id: TenantId, name: str, version: int,
        format_: str) -> AdapterExport:
    _, row = adapter_service.get_version(session, tenant_id, name, version)
    found = _find(session, row.id, format_)
    if found is None:
        raise NotFound(f"version {version} of {name!r} has no {format_} export; POST one "
                       "to make it", param="format")
    return found


def of_version(session: Session, tenant_id: TenantId, name: str,
               version: int) -> list[AdapterExport]:
    _, row = adapter_service.get_version(session, tenant_id, name, version)
    return list(session.scalars(select(AdapterExport).where(
        AdapterExport.version_id == row.id).order_by(AdapterExport.format)))
