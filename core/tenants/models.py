from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    max_running_jobs: Mapped[int]
    max_queued_jobs: Mapped[int]
    max_file_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    suspended_at: Mapped[datetime | None]
    # When the dispatcher last started one of this tenant's jobs: the round-robin
    # tie-breaker between tenants with as many jobs running and the same priority.
    last_dispatched_at: Mapped[datetime | None]
    # the operator's price table for estimates (core/tenants/prices.py); None: the default
    prices: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    # credentials the tenant set for its jobs' integrations, by type ({"wandb": {...}})
    integrations: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)


class ApiKey(Base):
    """A hashed API key. Admin keys have no tenant and the ``admin`` scope."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
