from __future__ import annotations

from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.files.models import File
from core.kit.pagination import newest_first
from core.tenants.scope import TenantId


def add(session: Session, file: File) -> File:
    session.add(file)
    session.flush()
    return file


def get(session: Session, tenant_id: TenantId, file_id: str, *,
        lock: Literal["share", "update"] | None = None) -> File | None:
    """A file that is not deleted. ``lock="share"`` keeps it from being deleted until the
    transaction ends (a job being created on it); ``"update"``: the deletion itself."""
    stmt = select(File).where(File.tenant_id == tenant_id, File.id == file_id,
                              File.deleted_at.is_(None))
    if lock is not None:
        stmt = stmt.with_for_update(read=lock == "share")
    return session.scalars(stmt).one_or_none()


def by_id(session: Session, file_id: str) -> File | None:
    """A file by id, deleted or not (a job's own files, read by its worker)."""
    return session.get(File, file_id)


def list_page(
    session: Session, tenant_id: TenantId, *, after: str | None, limit: int,
    purpose: str | None = None,
) -> tuple[list[File], bool]:
    stmt = select(File).where(File.tenant_id == tenant_id, File.deleted_at.is_(None))
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    return newest_first(session, stmt, File.id, after=after, limit=limit)


def stored_bytes(session: Session, tenant_id: TenantId) -> int:
    total = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(
        File.tenant_id == tenant_id, File.deleted_at.is_(None)
    ))
    return int(total or 0)
