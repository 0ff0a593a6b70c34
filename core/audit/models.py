from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class AuditEntry(Base):
    """One operator action: who (an admin key, or the server CLI), what, on what, when.
    Rows are only ever inserted; nothing updates or deletes them."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target_type", "target_id"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))  # "key:<id> (<prefix>)" or "cli:<user>"
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(IdString())  # kept after a tenant is gone
    details: Mapped[dict[str, Any] | None]
