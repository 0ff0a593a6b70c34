from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel

from core.kit.types import MAX_INT32, IntRange

T = TypeVar("T")


# Request parameters used by many routes
Limit = Annotated[int, Query(description="page size"), IntRange(1, 100)]
Version = Annotated[int, Path(description="adapter version number"), IntRange(1, MAX_INT32)]


def ts(value: datetime | None) -> int | None:
    """OpenAI's wire format uses Unix seconds."""
    return int(value.timestamp()) if value is not None else None


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, items: list[Any], has_more: bool) -> ListPage[Any]:
        return cls(
            data=items, has_more=has_more,
            first_id=items[0].id if items else None, last_id=items[-1].id if items else None,
        )
