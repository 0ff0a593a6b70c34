"""Reading published adapters and handing out presigned downloads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from core.adapters import repository as adapter_repo
from core.adapters.models import Adapter, AdapterVersion
from core.kit.errors import NotFound
from core.kit.orm import utcnow
from core.kit.storage import Storage
from core.tenants.scope import TenantId

DOWNLOAD_SECONDS = 15 * 60


def get(session: Session, tenant_id: TenantId, name: str) -> Adapter:
    adapter = adapter_repo.get(session, tenant_id, name)
    if adapter is None:
        raise NotFound(f"no adapter named {name!r}", param="adapter")
    return adapter


def get_version(session: Session, tenant_id: TenantId, name: str,
                version: int) -> tuple[Adapter, AdapterVersion]:
    adapter = get(session, tenant_id, name)
    row = adapter_repo.get_version(session, tenant_id, adapter, version)
    if row is None:
        raise NotFound(f"adapter {name!r} has no version {version}", param="version")
    return adapter, row


def download_urls(storage: Storage, row: AdapterVersion,
                  seconds: int = DOWNLOAD_SECONDS) -> tuple[int, list[dict[str, object]]]:
    """One presigned GET per file; each URL covers that object only and expires."""
    expires = int((utcnow() + timedelta(seconds=seconds)).timestamp())
    files = [{**f, "url": storage.presigned_get(row.object_prefix + str(f["name"]), seconds,
                                                filename=str(f["name"]))}
             for f in row.files]
    return expires, files
