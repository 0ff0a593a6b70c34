from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentTenant, FilesWriter, SettingsDep, UoW
from api.schemas.common import ListPage
from api.schemas.files import DatasetLimits, FileDeleted, FileObject
from api.uploads import FORM_OVERHEAD, Body, refuse, stream_form
from core.files import repository as file_repo
from core.files import service as file_service
from core.files.validation import FORMATS
from core.jobs import repository as job_repo
from core.kit.errors import InvalidRequest, LoramillError
from core.kit.storage import file_key, get_storage
from core.kit.types import IntRange

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    request: Request, tenant_id: FilesWriter, uow: UoW, settings: SettingsDep
) -> FileObject:
    # A read-only peek at the limits, ended at once: no pooled connection is held while
    # the body streams in (that may take minutes).
    limit, too_large = await run_in_threadpool(uow.peek, file_service.upload_limit,
                                               tenant_id, settings)
    body = Body(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        error = file_service.too_large(too_large)  # refused before reading a byte
        error.headers = {"Connection": "close"}
        raise error

    file_id = file_service.new_file_id()
    ingest = file_service.FileIngest(
        get_storage(), file_key(tenant_id, file_id), max_bytes=limit, settings=settings,
        too_large=too_large,
    )
    try:
        form = await stream_form(
            body, request.headers.get("content-type", ""), "file",
            file_service.check_filename, ingest.write, max_body_bytes=limit + FORM_OVERHEAD,
            too_large=lambda: file_service.too_large(too_large))
        if not form.file_seen:
            raise InvalidRequest("missing required parameter: 'file'", param="file",
                                 code="missing_parameter")
        purpose = file_service.check_purpose(form.fields.get("purpose"))
        filename = file_service.check_filename(form.filename)
        report = await run_in_threadpool(ingest.finish)
        if not report.ok:
            raise file_service.invalid_dataset(filename, report)
    except LoramillError as error:
        await _abort(ingest)
        raise await refuse(body, error) from None
    except BaseException:
        await _abort(ingest)
        raise
    uow.on_rollback(lambda: get_storage().delete(ingest.key))
    file = await run_in_threadpool(
        lambda: file_service.record(
            uow.session, tenant_id=tenant_id, file_id=file_id, filename=filename,
            purpose=purpose, ingest=ingest, report=report,
        )
    )
    return FileObject.of(file)


async def _abort(ingest: file_service.FileIngest) -> None:
    """Abort the object's multipart upload, even while the request is being cancelled (a
    client that went away), so no unfinished upload is left in the bucket."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(ingest.abort)


@router.get("", response_model=ListPage[FileObject])
def list_files(
    tenant_id: CurrentTenant, uow: UoW,
    after: str | None = None, limit: Annotated[int, Query(), IntRange(1, 10000)] = 10000,
    purpose: str | None = None, order: str = "desc",
) -> ListPage[FileObject]:
    if order != "desc":
        raise InvalidRequest("only order=desc (newest first) is supported", param="order")
    items, more = file_repo.list_page(
        uow.session, tenant_id, after=after, limit=limit, purpose=purpose
    )
    return ListPage.of([FileObject.of(f) for f in items], more)


@router.get("/limits", response_model=DatasetLimits)
def dataset_limits(tenant_id: CurrentTenant, uow: UoW, settings: SettingsDep) -> DatasetLimits:
    """What an upload is checked against, so a local check (the SDK's, the CLI's) applies
    the server's limits instead of copies of them."""
    found = file_service.limits(uow.session, tenant_id, settings)
    return DatasetLimits(**asdict(found), formats=list(FORMATS))


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, tenant_id: CurrentTenant, uow: UoW) -> FileObject:
    return FileObject.of(file_service.get(uow.session, tenant_id, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, tenant_id: FilesWriter, uow: UoW) -> FileDeleted:
    file = file_service.delete(uow.session, tenant_id, file_id,
                               used_by=job_repo.active_job_using_file)
    key = file.object_key
    uow.after_commit(lambda: get_storage().delete(key))
    return FileDeleted(id=file.id)


@router.get("/{file_id}/content")
def file_content(file_id: str, tenant_id: CurrentTenant, uow: UoW) -> StreamingResponse:
    file = file_service.get(uow.session, tenant_id, file_id)
    chunks = get_storage().iter_object(file.object_key)
    first = next(chunks, b"")  # surface a storage outage as 503 before headers go out

    def body() -> object:
        yield first
        yield from chunks

    return StreamingResponse(
        body(),  # type: ignore[arg-type]
        media_type="application/octet-stream",
        headers={"Content-Disposition": attachment(file.filename),
                 "Content-Length": str(file.bytes)},
    )


def attachment(filename: str) -> str:
    """A Content-Disposition for any filename: an ASCII fallback, and the real name in
    RFC 5987's ``filename*`` (headers themselves must be Latin-1)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
