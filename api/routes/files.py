from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentTenant, FilesWriter, SettingsDep, UoW
from api.schemas.common import ListPage
from api.schemas.files import FileDeleted, FileObject
from api.uploads import drain, stream_form
from core.errors import InvalidRequest, LoramillError
from core.models import Tenant
from core.repositories import files as file_repo
from core.services import files as file_service
from core.storage import file_key, get_storage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    request: Request, tenant_id: FilesWriter, uow: UoW, settings: SettingsDep
) -> FileObject:
    tenant = await run_in_threadpool(uow.session.get, Tenant, tenant_id)
    assert tenant is not None  # authentication checked it
    limit, too_large = await run_in_threadpool(file_service.upload_limit, uow.session,
                                               tenant, settings)
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + 64 * 1024:  # multipart framing adds a little
        await drain(request)
        raise file_service.too_large(too_large)

    file_id = file_service.new_file_id()
    ingest = file_service.FileIngest(
        get_storage(), file_key(tenant_id, file_id), max_bytes=limit, settings=settings,
        too_large=too_large,
    )

    def start(filename: str | None) -> None:
        file_service.check_filename(filename)

    try:
        form = await stream_form(request, "file", start, ingest.write)
        if not form.file_seen:
            raise InvalidRequest("missing required parameter: 'file'", param="file",
                                 code="missing_parameter")
        purpose = file_service.check_purpose(form.fields.get("purpose"))
        filename = file_service.check_filename(form.filename)
        report = await run_in_threadpool(ingest.finish)
        if not report.ok:
            raise file_service.invalid_dataset(filename, report)
    except LoramillError:
        await run_in_threadpool(ingest.abort)
        await drain(request)
        raise
    except BaseException:
        await run_in_threadpool(ingest.abort)
        raise
    uow.on_rollback(lambda: get_storage().delete(ingest.key))
    file = await run_in_threadpool(
        lambda: file_service.record(
            uow.session, tenant_id=tenant_id, file_id=file_id, filename=filename,
            purpose=purpose, ingest=ingest, report=report,
        )
    )
    return FileObject.of(file)


@router.get("", response_model=ListPage[FileObject])
def list_files(
    tenant_id: CurrentTenant, uow: UoW,
    after: str | None = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    purpose: str | None = None, order: str = "desc",
) -> ListPage[FileObject]:
    if order != "desc":
        raise InvalidRequest("only order=desc (newest first) is supported", param="order")
    items, more = file_repo.list_page(
        uow.session, tenant_id, after=after, limit=limit, purpose=purpose
    )
    return ListPage.of([FileObject.of(f) for f in items], more)


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, tenant_id: CurrentTenant, uow: UoW) -> FileObject:
    return FileObject.of(file_service.get(uow.session, tenant_id, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, tenant_id: FilesWriter, uow: UoW) -> FileDeleted:
    file = file_service.delete(uow.session, tenant_id, file_id)
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
        headers={
            "Content-Disposition": f'attachment; filename="{file.id}.jsonl"',
            "Content-Length": str(file.bytes),
        },
    )
