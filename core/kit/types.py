"""Pydantic building blocks with no domain knowledge: bounded integers."""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

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
