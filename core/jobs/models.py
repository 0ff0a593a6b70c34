from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_fine_tuning_jobs_status_created_at", "status", "created_at"),
        # The dispatcher's per-tenant head-of-queue lookups.
        Index("ix_fine_tuning_jobs_dispatch", "tenant_id", "gpu_class", text("priority DESC"),
              "created_at", postgresql_where=text("status = 'queued' AND dispatched_at IS NULL")),
        # Jobs holding a worker slot: few, counted on every dispatcher tick.
        Index("ix_fine_tuning_jobs_inflight", "tenant_id", "gpu_class", postgresql_where=text(
            "status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)")),
    )

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    model: Mapped[str] = mapped_column(String(200), ForeignKey("base_models.id"))
    training_file: Mapped[str] = mapped_column(IdString(), ForeignKey("files.id"))
    validation_file: Mapped[str | None] = mapped_column(IdString(), ForeignKey("files.id"))
    # The frozen spec: method with resolved hyperparameters and the lora settings.
    method: Mapped[dict[str, Any]]
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[dict[str, Any] | None]
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list[Any]] = mapped_column(
        default=list, server_default=text("'[]'::jsonb")
    )
    estimated_finish: Mapped[datetime | None]
    priority: Mapped[int] = mapped_column(default=0)
    gpu_class: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(default=0)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    pause_requested_at: Mapped[datetime | None]
    # Set when the dispatcher hands the job to Celery; cleared if no worker claims it in
    # time (a lost message), so the job is dispatched again.
    dispatched_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


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
