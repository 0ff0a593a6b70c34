from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.adapters.models import Adapter, AdapterVersion
from core.kit import ids
from core.kit.pagination import newest_first
from core.tenants.scope import TenantId


def lock_or_create(session: Session, tenant_id: TenantId, name: str) -> Adapter:
    """The adapter row, locked until the transaction ends, so two jobs publishing to
    one adapter number their versions one after the other."""
    session.execute(
        insert(Adapter).values(id=ids.new_id("adp"), tenant_id=tenant_id, name=name,
                               created_at=func.now())
        .on_conflict_do_nothing(index_elements=["tenant_id", "name"])
    )
    return session.scalars(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
        .with_for_update()
    ).one()


def add_version(session: Session, row: AdapterVersion) -> AdapterVersion:
    session.add(row)
    session.flush()
    return row


def next_version(session: Session, adapter: Adapter) -> int:
    latest = session.scalar(select(func.max(AdapterVersion.version)).where(
        AdapterVersion.adapter_id == adapter.id))
    return int(latest or 0) + 1


def get(session: Session, tenant_id: TenantId, name: str) -> Adapter | None:
    return session.scalars(select(Adapter).where(
        Adapter.tenant_id == tenant_id, Adapter.name == name)).one_or_none()


def list_page(session: Session, tenant_id: TenantId, *, after: str | None,
              limit: int) -> tuple[list[Adapter], bool]:
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id)
    return newest_first(session, stmt, Adapter.id, after=after, limit=limit)


def latest_versions(session: Session, adapter_ids: list[str]) -> dict[str, int]:
    rows = session.execute(
        select(AdapterVersion.adapter_id, func.max(AdapterVersion.version))
        .where(AdapterVersion.adapter_id.in_(adapter_ids))
        .group_by(AdapterVersion.adapter_id)
    ).all()
    return {adapter_id: int(version) for adapter_id, version in rows}


def versions_page(session: Session, tenant_id: TenantId, adapter: Adapter, *,
                  after: str | None, limit: int) -> tuple[list[AdapterVersion], bool]:
    stmt = select(AdapterVersion).where(AdapterVersion.tenant_id == tenant_id,
                                        AdapterVersion.adapter_id == adapter.id)
    return newest_first(session, stmt, AdapterVersion.id, after=after, limit=limit)


def get_version(session: Session, tenant_id: TenantId, adapter: Adapter,
                version: int) -> AdapterVersion | None:
    return session.scalars(select(AdapterVersion).where(
        AdapterVersion.tenant_id == tenant_id, AdapterVersion.adapter_id == adapter.id,
        AdapterVersion.version == version)).one_or_none()


def for_job(session: Session, job_id: str) -> AdapterVersion | None:
    return session.scalars(select(AdapterVersion).where(
        AdapterVersion.job_id == job_id)).one_or_none()


def fine_tuned_models(session: Session, tenant_id: TenantId) -> list[AdapterVersion]:
    """The tenant's fine-tuned models that were not deleted, newest first."""
    return list(session.scalars(select(AdapterVersion).where(
        AdapterVersion.tenant_id == tenant_id, AdapterVersion.model_deleted_at.is_(None))
        .order_by(AdapterVersion.id.desc())))


def by_fine_tuned_model(session: Session, tenant_id: TenantId, name: str, *,
                        for_update: bool = False) -> AdapterVersion | None:
    """The version behind a fine-tuned model id, unless the model was deleted."""
    stmt = select(AdapterVersion).where(
        AdapterVersion.tenant_id == tenant_id, AdapterVersion.fine_tuned_model == name,
        AdapterVersion.model_deleted_at.is_(None))
    return session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()
