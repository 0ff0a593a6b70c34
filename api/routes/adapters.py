from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentTenant, UoW
from api.schemas.adapters import (
    AdapterObject,
    AdapterVersionObject,
    DownloadFile,
    DownloadObject,
)
from api.schemas.common import Limit, ListPage, Version
from core.adapters import repository as adapter_repo
from core.adapters import service as adapter_service
from core.kit.storage import get_storage

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=ListPage[AdapterObject])
def list_adapters(tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                  limit: Limit = 20) -> ListPage[AdapterObject]:
    items, more = adapter_repo.list_page(uow.session, tenant_id, after=after, limit=limit)
    latest = adapter_repo.latest_versions(uow.session, [a.id for a in items])
    return ListPage.of([AdapterObject.of(a, latest.get(a.id)) for a in items], more)


@router.get("/{name}/versions", response_model=ListPage[AdapterVersionObject])
def list_versions(name: str, tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                  limit: Limit = 20,
                  ) -> ListPage[AdapterVersionObject]:
    adapter = adapter_service.get(uow.session, tenant_id, name)
    items, more = adapter_repo.versions_page(uow.session, tenant_id, adapter, after=after,
                                             limit=limit)
    return ListPage.of([AdapterVersionObject.of(v, adapter.name) for v in items], more)


@router.get("/{name}/versions/{version}", response_model=AdapterVersionObject)
def get_version(name: str, version: Version, tenant_id: CurrentTenant,
                uow: UoW) -> AdapterVersionObject:
    adapter, row = adapter_service.get_version(uow.session, tenant_id, name, version)
    return AdapterVersionObject.of(row, adapter.name)


@router.get("/{name}/versions/{version}/download", response_model=DownloadObject)
def download(name: str, version: Version, tenant_id: CurrentTenant, uow: UoW) -> DownloadObject:
    adapter, row = adapter_service.get_version(uow.session, tenant_id, name, version)
    expires, files = adapter_service.download_urls(get_storage(), row.object_prefix,
                                                   row.files)
    return DownloadObject(adapter=adapter.name, version=row.version, expires_at=expires,
                          files=[DownloadFile.model_validate(f) for f in files])
