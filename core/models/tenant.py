from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, IdString, utcnow


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
