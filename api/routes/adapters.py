from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path

from api.deps import CurrentTenant, JobsActor, UoW
from api.schemas.adapters import (
    AdapterObject,
    AdapterVersionObject,
    AliasObject,
    CreateExport,
    DownloadFile,
    DownloadObject,
    ExportObject,
    SetAlias,
)
from api.schemas.common import Limit, ListPage, Version
from core.adapters import exports
from core.adapters import repository as adapter_repo
from core.adapters import service as adapter_service
from core.adapters.models import AdapterAlias, AdapterVersion
from core.base_models import repository as model_repo
from core.kit import queue
from core.kit.errors import Conflict
from core.kit.storage import get_storage

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
AliasName = Path(description="an alias: production, staging or any name")
ExportFormat = Literal["merged", "gguf"]


@router.get("", response_model=ListPage[AdapterObject])
def list_adapters(tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                  limit: Limit = 20) -> ListPage[AdapterObject]:
    items, more = adapter_repo.list_page(uow.session, tenant_id, after=after, limit=limit)
    latest = adapter_repo.latest_versions(uow.session, [a.id for a in items])
    return ListPage.of([AdapterObject.of(a, latest.get(a.id), {
        alias.name: version for alias, version in adapter_repo.aliases(uow.session, a)})
        for a in items], more)


@router.get("/{name}/versions", response_model=ListPage[AdapterVersionObject])
def list_versions(name: str, tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                  limit: Limit = 20,
                  ) -> ListPage[AdapterVersionObject]:
    adapter = adapter_service.get(uow.session, tenant_id, name)
    items, more = adapter_repo.versions_page(uow.session, tenant_id, adapter, after=after,
                                             limit=limit)
    aliases = adapter_repo.aliases_of_versions(uow.session, [v.id for v in items])
    return ListPage.of([AdapterVersionObject.of(v, adapter.name, aliases.get(v.id))
                        for v in items], more)


@router.get("/{name}/versions/{version}", response_model=AdapterVersionObject)
def get_version(name: str, version: Version, tenant_id: CurrentTenant,
                uow: UoW) -> AdapterVersionObject:
    adapter, row = adapter_service.get_version(uow.session, tenant_id, name, version)
    aliases = adapter_repo.aliases_of_versions(uow.session, [row.id]).get(row.id)
    return AdapterVersionObject.of(row, adapter.name, aliases)


@router.delete("/{name}/versions/{version}", response_model=AdapterVersionObject)
def delete_version(name: str, version: Version, actor: JobsActor,
                   uow: UoW) -> AdapterVersionObject:
    """Delete a version and its files: refused (409 ``version_aliased``) while an alias
    points at it. Its fine-tuned model goes with it; the number is never reused."""
    row = adapter_service.delete_version(uow.session, actor.tenant_id, actor.name, name,
                                         version)
    uow.after_commit(lambda: adapter_service.remove_files(get_storage(), row))
    return AdapterVersionObject.of(row, name)


@router.get("/{name}/versions/{version}/download", response_model=DownloadObject)
def download(name: str, version: Version, tenant_id: CurrentTenant, uow: UoW) -> DownloadObject:
    adapter, row = adapter_service.get_version(uow.session, tenant_id, name, version)
    expires, files = adapter_service.download_urls(get_storage(), row.object_prefix,
                                                   row.files)
    return DownloadObject(adapter=adapter.name, version=row.version, expires_at=expires,
                          files=[DownloadFile.model_validate(f) for f in files])


@router.post("/{name}/versions/{version}/exports", response_model=ExportObject)
def request_export(name: str, version: Version, body: CreateExport, actor: JobsActor,
                   uow: UoW) -> ExportObject:
    """Ask for the version as a merged model or a GGUF LoRA adapter, built by a worker;
    asking again answers the same export (and re-queues one that failed or was lost)."""
    row, send = exports.request(uow.session, actor.tenant_id, name, version, body.format)
    if send:
        base = model_repo.get(uow.session, _version(uow, row.version_id).base_model)
        assert base is not None
        gpu_class = base.gpu_class
        uow.after_commit(lambda: queue.enqueue_export(row.id, actor.tenant_id, gpu_class))
    return ExportObject.of(row, name, version)


@router.get("/{name}/versions/{version}/exports", response_model=ListPage[ExportObject])
def list_exports(name: str, version: Version, tenant_id: CurrentTenant,
                 uow: UoW) -> ListPage[ExportObject]:
    return ListPage.of([ExportObject.of(e, name, version) for e in
                        exports.of_version(uow.session, tenant_id, name, version)], False)


@router.get("/{name}/versions/{version}/exports/{format}", response_model=ExportObject)
def get_export(name: str, version: Version, format: ExportFormat, tenant_id: CurrentTenant,
               uow: UoW) -> ExportObject:
    return ExportObject.of(exports.get(uow.session, tenant_id, name, version, format), name,
                           version)


@router.get("/{name}/versions/{version}/exports/{format}/download",
            response_model=DownloadObject)
def download_export(name: str, version: Version, format: ExportFormat,
                    tenant_id: CurrentTenant, uow: UoW) -> DownloadObject:
    row = exports.get(uow.session, tenant_id, name, version, format)
    if row.status != "succeeded":
        raise Conflict(f"the {format} export of {name!r} v{version} is {row.status}"
                       + (", not ready yet" if row.status in ("queued", "running") else
                          "; POST it again to retry"), param="format",
                       code="export_not_ready")
    expires, files = adapter_service.download_urls(get_storage(), row.object_prefix,
                                                   row.files)
    return DownloadObject(adapter=name, version=version, expires_at=expires,
                          files=[DownloadFile.model_validate(f) for f in files])


def _version(uow: UoW, version_id: str) -> AdapterVersion:
    found = uow.session.get(AdapterVersion, version_id)
    assert found is not None
    return found


@router.get("/{name}/aliases", response_model=ListPage[AliasObject])
def list_aliases(name: str, tenant_id: CurrentTenant, uow: UoW) -> ListPage[AliasObject]:
    adapter = adapter_service.get(uow.session, tenant_id, name)
    return ListPage.of([_alias(uow, name, alias)
                        for alias, _ in adapter_repo.aliases(uow.session, adapter)], False)


@router.put("/{name}/aliases/{alias}", response_model=AliasObject)
def set_alias(name: str, body: SetAlias, actor: JobsActor, uow: UoW,
              alias: str = AliasName) -> AliasObject:
    """Promote: point the alias at a version (created, or moved; audited)."""
    row, before = adapter_service.set_alias(uow.session, actor.tenant_id, actor.name, name,
                                            alias, body.version)
    return _alias(uow, name, row, before)


@router.post("/{name}/aliases/{alias}/rollback", response_model=AliasObject)
def rollback_alias(name: str, actor: JobsActor, uow: UoW,
                   alias: str = AliasName) -> AliasObject:
    """Point the alias back at the version it pointed at before (audited)."""
    row, left, _ = adapter_service.rollback_alias(uow.session, actor.tenant_id, actor.name,
                                                  name, alias)
    return _alias(uow, name, row, left)


@router.delete("/{name}/aliases/{alias}", response_model=ListPage[AliasObject])
def delete_alias(name: str, actor: JobsActor, uow: UoW,
                 alias: str = AliasName) -> ListPage[AliasObject]:
    """Remove the alias (audited); answers with the adapter's aliases left."""
    adapter_service.delete_alias(uow.session, actor.tenant_id, actor.name, name, alias)
    return list_aliases(name, actor.tenant_id, uow)


def _alias(uow: UoW, name: str, alias: AdapterAlias,
           previous: int | None = None) -> AliasObject:
    version = uow.session.get(AdapterVersion, alias.version_id)
    assert version is not None
    return AliasObject.of(name, alias, version, previous)
