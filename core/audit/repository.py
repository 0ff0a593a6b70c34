"""All SQL on ``audit_log`` (the admin role only: the app role has no access)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit.models import AuditEntry
from core.kit.pagination import newest_first


def add(session: Session, entry: AuditEntry) -> AuditEntry:
    session.add(entry)
    session.flush()
    return entry


def page(session: Session, *, after: str | None, limit: int,
         target_id: str | None = None) -> tuple[list[AuditEntry], bool]:
    stmt = select(AuditEntry)
    if target_id:
        stmt = stmt.where(AuditEntry.target_id == target_id)
    return newest_first(session, stmt, AuditEntry.id, after=after, limit=limit)
