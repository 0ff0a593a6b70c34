from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.adapters.models import Adapter, AdapterAlias, AdapterVersion
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
        .where(AdapterVersion.adapter_id.in_(adapter_ids), AdapterVersion.deleted_at.is_(None))
        .group_by(AdapterVersion.adapter_id)
    ).all()
    return {adapter_id: int(version) for adapter_id, version in rows}


def versions_page(session: Session, tenant_id: TenantId, adapter: Adapter, *,
                  after: str | None, limit: int) -> tuple[list[AdapterVersion], bool]:
    stmt = select(AdapterVersion).where(AdapterVersion.tenant_id == tenant_id,
                                        AdapterVersion.adapter_id == adapter.id,
                                        AdapterVersion.deleted_at.is_(None))
    return newest_first(session, stmt, AdapterVersion.id, after=after, limit=limit)


def get_version(session: Session, tenant_id: TenantId, adapter: Adapter,
                version: int, *, for_update: bool = False) -> AdapterVersion | None:
    """A version not deleted."""
    stmt = select(AdapterVersion).where(
        AdapterVersion.tenant_id == tenant_id, AdapterVersion.adapter_id == adapter.id,
        AdapterVersion.version == version, AdapterVersion.deleted_at.is_(None))
    return session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()


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


# ----- aliases --------------------------------------------------------------------------


def aliases(session: Session, adapter: Adapter) -> list[tuple[AdapterAlias, int]]:
    """The adapter's aliases with the version number each points at, by name."""
    rows = session.execute(
        select(AdapterAlias, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.id == AdapterAlias.version_id)
        .where(AdapterAlias.adapter_id == adapter.id).order_by(AdapterAlias.name)).all()
    return [(alias, int(version)) for alias, version in rows]


def alias(session: Session, adapter: Adapter, name: str, *,
          for_update: bool = False) -> AdapterAlias | None:
    stmt = select(AdapterAlias).where(AdapterAlias.adapter_id == adapter.id,
                                      AdapterAlias.name == name)
    return session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()


def aliases_of_versions(session: Session, version_ids: list[str]) -> dict[str, list[str]]:
    """Version id -> the names of the aliases pointing at it."""
    found: dict[str, list[str]] = {}
    for version_id, name in session.execute(
            select(AdapterAlias.version_id, AdapterAlias.name)
            .where(AdapterAlias.version_id.in_(version_ids)).order_by(AdapterAlias.name)):
        found.setdefault(version_id, []).append(name)
    return found


def all_aliases(session: Session, tenant_id: TenantId) -> list[tuple[str, AdapterAlias,
                                                                     AdapterVersion]]:
    """Every alias of the tenant's: (adapter name, alias, the version it points at)."""
    rows = session.execute(
        select(Adapter.name, AdapterAlias, AdapterVersion)
        .join(AdapterAlias, AdapterAlias.adapter_id == Adapter.id)
        .join(AdapterVersion, AdapterVersion.id == AdapterAlias.version_id)
        .where(Adapter.tenant_id == tenant_id).order_by(Adapter.name, AdapterAlias.name)).all()
    return [(str(n), a, v) for n, a, v in rows]


def prunable(session: Session, keep: int) -> list[AdapterVersion]:
    """Versions (any tenant's: the admin role) older than their adapter's newest ``keep``
    live ones, with no alias pointing at them, locked for the caller's transaction."""
    ranked = (select(AdapterVersion.id, func.row_number().over(
        partition_by=AdapterVersion.adapter_id, order_by=AdapterVersion.version.desc())
        .label("rank")).where(AdapterVersion.deleted_at.is_(None)).subquery())
    aliased = select(AdapterAlias.version_id)
    return list(session.scalars(
        select(AdapterVersion).join(ranked, ranked.c.id == AdapterVersion.id)
        .where(ranked.c.rank > keep, AdapterVersion.id.not_in(aliased))
        .with_for_update(of=AdapterVersion, skip_locked=True)))
