from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, IdString, utcnow


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    job_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
