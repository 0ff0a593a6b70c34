"""The audit log: every operator action (admin API, server CLI) writes one entry, in the
same transaction as the action, so an action is never done without its entry."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.audit import repository
from core.audit.models import AuditEntry
from core.kit import ids


def record(session: Session, actor: str, action: str, target_type: str, target_id: str, *,
           tenant_id: str | None = None, details: dict[str, Any] | None = None) -> AuditEntry:
    return repository.add(session, AuditEntry(
        id=ids.new_id(ids.AUDIT), actor=actor, action=action, target_type=target_type,
        target_id=target_id, tenant_id=tenant_id, details=details))


page = repository.page
