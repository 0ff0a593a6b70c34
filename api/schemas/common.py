from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


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
