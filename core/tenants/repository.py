from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.kit import ids
from core.kit.orm import utcnow
from core.kit.settings import Settings
from core.tenants.models import ApiKey, Tenant


def create_tenant(session: Session, name: str, settings: Settings) -> Tenant | None:
    """The new tenant, or None when the name is taken (also by a concurrent creation)."""
    tenant_id = session.scalar(
        insert(Tenant).values(
            id=ids.new_id(ids.TENANT), name=name, created_at=utcnow(),
            max_running_jobs=settings.default_max_running_jobs,
            max_queued_jobs=settings.default_max_queued_jobs,
            max_file_bytes=settings.max_file_bytes,
            storage_bytes=settings.default_storage_bytes,
        ).on_conflict_do_nothing(index_elements=["name"]).returning(Tenant.id))
    return session.get(Tenant, tenant_id) if tenant_id else None


def get_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def get(session: Session, tenant_id: str, *, lock: bool = False) -> Tenant | None:
    """``lock``: hold the tenant's row until the transaction ends (serialises its quotas)."""
    return session.get(Tenant, tenant_id, with_for_update=lock)


def add_key(
    session: Session, *, tenant_id: str | None, prefix: str, key_hash: str,
    scopes: list[str], name: str = "",
) -> ApiKey:
    key = ApiKey(
        id=ids.new_id(ids.KEY), tenant_id=tenant_id, prefix=prefix, hash=key_hash,
        scopes=scopes, name=name,
    )
    session.add(key)
    session.flush()
    return key


def find_key(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.hash == key_hash)).one_or_none()


def touch_key(session: Session, key: ApiKey) -> None:
    """Record use at most once a minute, so auth does not write on every request."""
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        key.last_used_at = now


def keys_of(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)
                                .order_by(ApiKey.id.desc())))


def key_of(session: Session, tenant_id: str, key_id: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id,
                                                ApiKey.id == key_id)).one_or_none()
