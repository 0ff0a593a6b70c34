from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, IdString, utcnow


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        IdString(), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(32))
    line_count: Mapped[int] = mapped_column(default=0)
    example_count: Mapped[int] = mapped_column(default=0)
    # examples that use tools or tool calls: they need a base model whose template renders them
    tool_examples: Mapped[int] = mapped_column(default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text)
    object_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Deleted files keep their row (jobs refer to them); the object is removed.
    deleted_at: Mapped[datetime | None]
