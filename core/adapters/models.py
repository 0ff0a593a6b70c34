from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class Adapter(Base):
    """A named line of adapter versions in one tenant's account."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterVersion(Base):
    """An immutable published adapter. One job publishes at most one version."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    adapter_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("adapters.id", ondelete="CASCADE")
    )
    version: Mapped[int]
    job_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("fine_tuning_jobs.id"), unique=True
    )
    base_model: Mapped[str] = mapped_column(String(200))
    fine_tuned_model: Mapped[str] = mapped_column(String(400))
    object_prefix: Mapped[str] = mapped_column(String(512))
    files: Mapped[list[Any]]
    manifest: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # DELETE /v1/models/{fine_tuned_model}: the model is gone (not listed, not callable);
    # the version's files stay, downloadable through the adapters API
    model_deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # the version itself deleted (by its owner, or pruned by retention): its files are
    # removed, nothing lists, downloads, calls or continues from it; its number stays used
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class AdapterAlias(Base):
    """A name pointing at one version of an adapter (``production``, ``staging``, ...):
    serving and downloads take ``adapter@alias``. ``history``: the version numbers it
    pointed at before, newest last (what a rollback returns to)."""

    __tablename__ = "adapter_aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),
                      Index("ix_adapter_aliases_version_id", "version_id"))

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    adapter_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("adapters.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[str] = mapped_column(IdString(), ForeignKey("adapter_versions.id"))
    history: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterExport(Base):
    """A version in another form, made on request by a worker: ``merged`` (the base with
    the adapter folded in) or ``gguf`` (a llama.cpp LoRA adapter)."""

    __tablename__ = "adapter_exports"
    __table_args__ = (UniqueConstraint("version_id", "format"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    version_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("adapter_versions.id", ondelete="CASCADE")
    )
    format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    object_prefix: Mapped[str] = mapped_column(String(512))
    files: Mapped[list[Any]] = mapped_column(default=list)  # name, bytes, sha256
    error: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]  # renewed by the worker building it
    attempt: Mapped[int] = mapped_column(default=0)  # workers that took it
