from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

T = TypeVar("T")
MAX_BYTES = 2**50  # 1 PiB: byte quotas and limits (the columns hold 64 bits)
MAX_INT32 = 2**31 - 1  # version numbers and other 32-bit columns


class IntRange:
    """``Annotated[int, IntRange(lo, hi)]``: an integer bounded on both sides, whose error
    names the whole range ("must be an integer from 1 to 100"), in bodies, queries and
    paths alike; the OpenAPI shows it as minimum and maximum."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def _check(self, value: Any) -> Any:
        if isinstance(value, bool):  # JSON true is not 1
            raise PydanticCustomError("int_type", "must be an integer, not a boolean")
        if not isinstance(value, int | str):
            return value  # not a number: the int schema says so
        try:
            number = int(value)
        except ValueError:
            return value
        if not self.lo <= number <= self.hi:
            raise PydanticCustomError("int_range", "must be an integer from {lo} to {hi}",
                                      {"lo": self.lo, "hi": self.hi})
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(minimum=self.lo, maximum=self.hi)
        return json_schema


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
