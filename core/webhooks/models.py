from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class WebhookEndpoint(Base):
    """A tenant's URL that receives its jobs' end events, signed with ``secret`` the
    Standard Webhooks way (the secret is shown once, when the endpoint is made)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]]
    name: Mapped[str] = mapped_column(String(200), default="")
    # HMAC key: needed in the clear to sign, so stored as such (an API key is hashed)
    secret: Mapped[str] = mapped_column(String(100))
    # after a rotation that keeps the old secret for a day: deliveries carry both
    # signatures until then (Standard Webhooks' space-separated list)
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event for one endpoint: written in the transaction that ended the job (an
    outbox: nothing is lost to a crash), sent by the scheduler with exponential retries,
    and kept as the endpoint's delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(IdString())
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # succeeded, failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
