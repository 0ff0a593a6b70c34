from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import ts
from core.files.models import File


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    # loramill extensions
    sha256: str
    format: str | None
    line_count: int
    example_count: int
    tool_examples: int = 0

    @classmethod
    def of(cls, f: File) -> FileObject:
        return cls(
            id=f.id, bytes=f.bytes, created_at=ts(f.created_at) or 0, filename=f.filename,
            purpose=f.purpose, status=f.status, status_details=f.status_details,
            sha256=f.sha256, format=f.format, line_count=f.line_count,
            example_count=f.example_count, tool_examples=f.tool_examples,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class DatasetLimits(BaseModel):
    object: Literal["dataset_limits"] = "dataset_limits"
    max_file_bytes: int = Field(description="the largest file this key may upload now: the "
                                            "file size limit, or the storage left if less")
    storage_bytes_left: int
    max_line_bytes: int
    max_json_depth: int
    formats: list[str] = Field(description="the dataset formats the upload accepts")
