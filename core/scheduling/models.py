from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, String, and_
from sqlalchemy.orm import Mapped, mapped_column

from core.kit.orm import Base, utcnow


class Worker(Base):
    """A training worker process, as its own heartbeats describe it. The dispatcher counts
    free slots per GPU class from the workers seen recently."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    gpu_class: Mapped[str] = mapped_column(String(32), index=True)
    capacity: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]

    @classmethod
    def alive(cls, since: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
        """Not stopped and heard from at or after ``since``: it has slots to offer."""
        return and_(cls.stopped_at.is_(None), cls.last_heartbeat_at >= since)
