"""Files: streaming ingest (hash, validate, store) and the tenant-scoped operations."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from core.files import repository as file_repo
from core.files.models import File
from core.files.validation import DatasetValidator, Report
from core.kit import ids
from core.kit.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from core.kit.orm import utcnow
from core.kit.settings import Settings
from core.kit.storage import MultipartWriter, Storage, file_key
from core.tenants import repository as tenant_repo
from core.tenants.models import Tenant
from core.tenants.scope import TenantId

PURPOSES = ("fine-tune",)
MAX_FILENAME = 255


def new_file_id() -> str:
    return ids.new_id(ids.FILE)


JSONL_MEDIA_TYPE = "application/jsonl"


class FileIngest:
    """One upload in flight: every byte is hashed, validated and streamed to S3 once.

    Holds at most one S3 part and one dataset line in memory. Once the data is known to
    be invalid, nothing more is sent to S3 (the multipart upload is aborted) but the
    validator keeps reading, so the report can name up to N problems.
    """

    def __init__(self, storage: Storage, key: str, *, max_bytes: int, settings: Settings,
                 too_large: str | None = None):
        self.key = key
        self.max_bytes = max_bytes
        self.too_large = too_large or f"file is larger than the limit of {max_bytes} bytes"
        self.size = 0
        self._sha = hashlib.sha256()
        self._validator = DatasetValidator(
            max_line_bytes=settings.max_line_bytes,
            max_json_depth=settings.max_json_depth,
            max_problems=settings.max_problems_reported,
        )
        self._writer: MultipartWriter | None = storage.writer(
            key, settings.upload_part_bytes, content_type=JSONL_MEDIA_TYPE)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise too_large(self.too_large)
        self._sha.update(chunk)
        self._validator.feed(chunk)
        if self._writer is not None:
            if self._validator.report.problem_count:
                self._writer.abort()
                self._writer = None
            else:
                self._writer.write(chunk)

    def finish(self) -> Report:
        """Validate the tail; store the object only if the whole file is valid."""
        report = self._validator.finish()
        if not report.ok:
            self.abort()
        elif self._writer is not None:
            self._writer.complete()
            self._writer = None
        return report

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def too_large(message: str) -> PayloadTooLarge:
    code = "storage_quota_exceeded" if "quota" in message else "file_too_large"
    return PayloadTooLarge(message, param="file", code=code)


def upload_limit(session: Session, tenant_id: TenantId, settings: Settings) -> tuple[int, str]:
    """The most bytes this upload may have, and what to say when it has more: the file
    size limit, or what is left of the tenant's storage quota if that is less. Concurrent
    uploads all see the same room; :func:`record` checks the quota again, under a lock."""
    tenant, file_limit, used = _room(session, tenant_id, settings)
    left = max(0, tenant.storage_bytes - used)
    if left < file_limit:
        return left, _quota_exceeded(tenant, used)
    return file_limit, f"file is larger than the limit of {file_limit} bytes"


def _room(session: Session, tenant_id: TenantId,
          settings: Settings) -> tuple[Tenant, int, int]:
    """The tenant, its file size limit, and the bytes it already stores."""
    tenant = tenant_repo.get(session, tenant_id)
    assert tenant is not None  # authentication checked it
    file_limit = min(tenant.max_file_bytes, settings.max_file_bytes)
    return tenant, file_limit, file_repo.stored_bytes(session, tenant_id)


@dataclass(frozen=True)
class Limits:
    """What the upload checks, for the SDK's local check (``GET /v1/files/limits``)."""

    max_file_bytes: int  # the file size limit, or the storage left if that is less
    storage_bytes_left: int
    max_line_bytes: int
    max_json_depth: int


def limits(session: Session, tenant_id: TenantId, settings: Settings) -> Limits:
    tenant, file_limit, used = _room(session, tenant_id, settings)
    left = max(0, tenant.storage_bytes - used)
    return Limits(max_file_bytes=min(file_limit, left), storage_bytes_left=left,
                  max_line_bytes=settings.max_line_bytes,
                  max_json_depth=settings.max_json_depth)


def _quota_exceeded(tenant: Tenant, used: int) -> str:
    return (f"storage quota of {tenant.storage_bytes} bytes exceeded ({used} bytes already "
            "stored); delete files or ask for a larger quota")


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest("missing required parameter: 'purpose'", param="purpose",
                             code="missing_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"purpose must be 'fine-tune' (got {purpose!r})", param="purpose",
            code="invalid_purpose",
        )
    return purpose


def check_filename(filename: str | None) -> str:
    """Any language's text, but no control or formatting characters: those can hide what a
    name really is (U+202E turns ``evil\u202egpj.jsonl`` into ``eviljpg.jsonl`` on screen)."""
    if not filename:
        raise InvalidRequest("the 'file' part needs a filename", param="file")
    if len(filename) > MAX_FILENAME:
        raise InvalidRequest(f"filename is longer than {MAX_FILENAME} characters",
                             param="file")
    bad = next((c for c in filename
                if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")),
               None)
    if bad is not None:
        raise InvalidRequest(f"filename contains a control or formatting character "
                             f"(U+{ord(bad):04X}); use printable characters", param="file")
    return filename


def invalid_dataset(filename: str, report: Report) -> InvalidRequest:
    return InvalidRequest(
        f"{filename} is not a valid fine-tuning dataset: {report.summary()}",
        param="file", code="invalid_file",
    )


def record(
    session: Session, *, tenant_id: TenantId, file_id: str, filename: str, purpose: str,
    ingest: FileIngest, report: Report,
) -> File:
    """The file's row, if the tenant's storage quota still has room for it: the tenant row
    is locked, so concurrent uploads are counted one after the other."""
    tenant = tenant_repo.get(session, tenant_id, lock=True)
    assert tenant is not None
    used = file_repo.stored_bytes(session, tenant_id)
    if used + ingest.size > tenant.storage_bytes:
        raise too_large(_quota_exceeded(tenant, used))
    return file_repo.add(session, File(
        id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose,
        bytes=ingest.size, sha256=ingest.sha256, format=report.format,
        line_count=report.line_count, example_count=report.example_count,
        tool_examples=report.tool_examples, status="processed", status_details=None,
        object_key=ingest.key,
    ))


def result_file(*, tenant_id: str, file_id: str, key: str, filename: str, size: int,
                sha256: str, lines: int) -> File:
    """A result file's row (a job's metrics CSV), built here like every other file row."""
    return File(id=file_id, tenant_id=tenant_id, filename=filename,
                purpose="fine-tune-results", bytes=size, sha256=sha256, format="csv",
                line_count=lines, example_count=0, status="processed", object_key=key)


def add_result(session: Session, file: File) -> File:
    return file_repo.add(session, file)


def get(session: Session, tenant_id: TenantId, file_id: str, *,
        lock: Literal["share", "update"] | None = None) -> File:
    file = file_repo.get(session, tenant_id, file_id, lock=lock)
    if file is None:
        raise NotFound(f"no file with id {file_id!r}", param="file_id")
    return file


UsedBy = Callable[[Session, TenantId, str], str | None]  # an unfinished job using the file


def delete(session: Session, tenant_id: TenantId, file_id: str, *, used_by: UsedBy) -> File:
    """Mark the file deleted; the caller removes its object once this commits. The row is
    locked first, so a job being created on the file either commits before (and is found
    by ``used_by``, the jobs domain's query) or finds the file gone."""
    file = get(session, tenant_id, file_id, lock="update")
    active = used_by(session, tenant_id, file_id)
    if active:
        raise Conflict(
            f"file {file_id} is used by job {active}, which has not finished; cancel the "
            "job or wait for it before deleting the file", param="file_id",
            code="file_in_use",
        )
    file.deleted_at = utcnow()
    session.flush()
    return file


__all__ = ["FileIngest", "file_key", "new_file_id"]
