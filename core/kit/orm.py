from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, MetaData, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        list[Any]: JSONB,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def last_sign_of_life(heartbeat: Any) -> ColumnElement[datetime]:
    """A lease holder's last sign of life: its heartbeat, or the database server's start
    if that is later (a PostgreSQL restart silences every holder at once; GREATEST also
    ignores a NULL heartbeat, a claim that never beat)."""
    return func.greatest(heartbeat, func.pg_postmaster_start_time())


def IdString() -> String:
    """Ids compare byte-wise so that time-ordered ids sort the same in any locale."""
    return String(64, collation="C")
