from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import BigInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, utcnow


class BaseModel(Base):
    """A registered base model that jobs may fine-tune (safetensors weights only)."""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source_uri: Mapped[str] = mapped_column(String(1024))
    architecture: Mapped[str] = mapped_column(String(100))
    params: Mapped[int] = mapped_column(BigInteger)
    context_length: Mapped[int]
    gpu_class: Mapped[str] = mapped_column(String(32))
    # the operator's choice (--gpu-class): jobs take it, or larger; otherwise each job's
    # class comes from its predicted memory (core/base_models/memory.py)
    gpu_class_pinned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # what the memory model needs of config.json (memory.Shape); none before migration 0010
    shape: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # the chat template renders tool definitions and tool calls (read at registration)
    renders_tools: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # chat and preference data are rendered with it; a base without one trains only
    # prompt/completion and text data
    has_chat_template: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    # a model in object storage (source_uri s3://bucket/prefix/): its files' name, bytes
    # and sha256, which local caches check downloads against; None for a local path
    files: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
