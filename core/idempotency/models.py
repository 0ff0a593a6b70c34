from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class IdempotencyKey(Base):
    """A POST's first response, replayed for retries with the same key and body. While
    the first request runs, ``status_code`` is NULL and ``expires_at`` is its lease."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(IdString(), primary_key=True)  # a tenant id, or "admin"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(  # for row-level security; None: operators
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
