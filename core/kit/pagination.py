from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


def newest_first(
    session: Session, stmt: Select[T], id_column: InstrumentedAttribute[Any],
    *, after: str | None, limit: int,
) -> tuple[list[T], bool]:
    """One page of a list ordered newest first by time-ordered id; ``after`` is the last
    id of the previous page. Returns the items and whether more follow."""
    if after:
        stmt = stmt.where(id_column < after)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
