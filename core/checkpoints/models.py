from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (Index("ix_job_checkpoints_job_id_id", "job_id", "id"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    job_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE")
    )
    step: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    object_prefix: Mapped[str] = mapped_column(String(512))
    # name, bytes, sha256 of each file: what serving checks a checkpoint model against
    files: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
