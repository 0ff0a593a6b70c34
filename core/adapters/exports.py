"""Exports of a version, on request: a merged model and a GGUF LoRA adapter, built by a
worker of the base model's class (worker/exports.py), stored beside the version under
``exports/<format>/`` with an ``export_manifest.json`` of sha256s, downloadable like the
adapter.

Asking again is how a lost export is recovered: one ``failed``, or still ``queued`` or
``running`` after :data:`STALE` (its message or worker was lost), is queued anew; one that
``succeeded`` is answered as it is.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.adapters import service as adapter_service
from core.adapters.models import AdapterExport, AdapterVersion
from core.kit import ids
from core.kit.errors import NotFound
from core.kit.orm import utcnow
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
        found.status, found.error, found.files = "queued", None, []
        found.created_at, found.started_at, found.finished_at = now, None, None
        session.flush()
        return found, True
    return found, False


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
