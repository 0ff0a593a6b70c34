"""Operator endpoints under /v1/admin (admin keys only). Every change is audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminActor, AdminUoW, SettingsDep
from api.routes.keys import CreateKey, KeyObject
from api.schemas.admin import (
    AdminJobObject,
    AuditObject,
    CreateTenant,
    PriorityBody,
    QueueObject,
    Quotas,
    TenantObject,
    WorkerObject,
)
from api.schemas.common import Limit, ListPage
from core.audit import service as audit
from core.kit.queue import wake_dispatcher
from core.kit.types import IntRange
from core.ops import service as ops
from core.tenants import service as tenant_service
from core.tenants.prices import PriceTable

router = APIRouter(prefix="/v1/admin", tags=["admin"])
MAX_AGE_SECONDS = 10 * 366 * 86400  # older_than_seconds: ten years


@router.get("/queue", response_model=QueueObject)
def queue(_: AdminActor, uow: AdminUoW) -> QueueObject:
    return QueueObject.of(ops.queue_summary(uow.session))


@router.get("/workers", response_model=ListPage[WorkerObject])
def workers(_: AdminActor, uow: AdminUoW, settings: SettingsDep) -> ListPage[WorkerObject]:
    return ListPage.of([WorkerObject.of(w) for w in ops.workers(uow.session, settings)], False)


@router.get("/jobs", response_model=ListPage[AdminJobObject])
def list_jobs(
    _: AdminActor, uow: AdminUoW,
    status: Annotated[list[str] | None, Query(description="repeat or comma-separate")] = None,
    tenant_id: str | None = None,
    older_than_seconds: Annotated[int | None, Query(), IntRange(0, MAX_AGE_SECONDS)] = None,
    after: str | None = None, limit: Limit = 20,
) -> ListPage[AdminJobObject]:
    statuses = [s for v in status or [] for s in v.split(",") if s]
    older = timedelta(seconds=older_than_seconds) if older_than_seconds is not None else None
    items, more = ops.jobs_page(uow.session, status=statuses, tenant_id=tenant_id,
                                older_than=older, after=after, limit=limit)
    return ListPage.of([AdminJobObject.of(j) for j in items], more)


@router.get("/jobs/{job_id}", response_model=AdminJobObject)
def get_job(job_id: str, _: AdminActor, uow: AdminUoW) -> AdminJobObject:
    return AdminJobObject.of(ops.get_job(uow.session, job_id))


@router.post("/jobs/{job_id}/requeue", response_model=AdminJobObject)
def requeue(job_id: str, actor: AdminActor, uow: AdminUoW) -> AdminJobObject:
    job = ops.requeue(uow.session, actor, job_id)
    uow.after_commit(wake_dispatcher)
    return AdminJobObject.of(job)


@router.post("/jobs/{job_id}/cancel", response_model=AdminJobObject)
def cancel(job_id: str, actor: AdminActor, uow: AdminUoW) -> AdminJobObject:
    return AdminJobObject.of(ops.cancel(uow.session, actor, job_id))


@router.post("/jobs/{job_id}/priority", response_model=AdminJobObject)
def priority(job_id: str, body: PriorityBody, actor: AdminActor, uow: AdminUoW) -> AdminJobObject:
    return AdminJobObject.of(ops.set_priority(uow.session, actor, job_id, body.priority))


@router.get("/tenants", response_model=ListPage[TenantObject])
def list_tenants(_: AdminActor, uow: AdminUoW, after: str | None = None,
                 limit: Limit = 20) -> ListPage[TenantObject]:
    items, more = ops.tenants_page(uow.session, after=after, limit=limit)
    return ListPage.of([TenantObject.of(t) for t in items], more)


@router.post("/tenants", response_model=TenantObject)
def create_tenant(body: CreateTenant, actor: AdminActor, uow: AdminUoW,
                  settings: SettingsDep) -> TenantObject:
    quotas = body.quotas.given() if body.quotas else None
    return TenantObject.of(ops.create_tenant(uow.session, actor, body.name, settings, quotas))


@router.get("/tenants/{tenant_id}", response_model=TenantObject)
def get_tenant(tenant_id: str, _: AdminActor, uow: AdminUoW) -> TenantObject:
    return TenantObject.of(ops.get_tenant(uow.session, tenant_id))


@router.post("/tenants/{tenant_id}/quotas", response_model=TenantObject)
def set_quotas(tenant_id: str, body: Quotas, actor: AdminActor, uow: AdminUoW) -> TenantObject:
    return TenantObject.of(ops.set_quotas(uow.session, actor, tenant_id, body.given()))


@router.put("/tenants/{tenant_id}/prices", response_model=TenantObject)
def set_prices(tenant_id: str, body: PriceTable, actor: AdminActor,
               uow: AdminUoW) -> TenantObject:
    """The tenant's price table for estimates (audited)."""
    return TenantObject.of(ops.set_prices(uow.session, actor, tenant_id, body))


@router.delete("/tenants/{tenant_id}/prices", response_model=TenantObject)
def clear_prices(tenant_id: str, actor: AdminActor, uow: AdminUoW) -> TenantObject:
    """Back to the deployment's default table (``LORAMILL_PRICES``)."""
    return TenantObject.of(ops.set_prices(uow.session, actor, tenant_id, None))


@router.post("/tenants/{tenant_id}/suspend", response_model=TenantObject)
def suspend(tenant_id: str, actor: AdminActor, uow: AdminUoW) -> TenantObject:
    return TenantObject.of(ops.set_suspended(uow.session, actor, tenant_id, True))


@router.post("/tenants/{tenant_id}/unsuspend", response_model=TenantObject)
def unsuspend(tenant_id: str, actor: AdminActor, uow: AdminUoW) -> TenantObject:
    return TenantObject.of(ops.set_suspended(uow.session, actor, tenant_id, False))


@router.get("/tenants/{tenant_id}/api_keys", response_model=ListPage[KeyObject])
def list_keys(tenant_id: str, _: AdminActor, uow: AdminUoW) -> ListPage[KeyObject]:
    ops.get_tenant(uow.session, tenant_id)
    return ListPage.of([KeyObject.of(k) for k in tenant_service.list_keys(uow.session,
                                                                          tenant_id)], False)


@router.post("/tenants/{tenant_id}/api_keys", response_model=KeyObject)
def create_key(tenant_id: str, body: CreateKey, actor: AdminActor, uow: AdminUoW) -> KeyObject:
    issued = ops.issue_key(uow.session, actor, tenant_id, name=body.name, scopes=body.scopes)
    return KeyObject.of(issued.row, secret=issued.secret)


@router.delete("/tenants/{tenant_id}/api_keys/{key_id}", response_model=KeyObject)
def revoke_key(tenant_id: str, key_id: str, actor: AdminActor, uow: AdminUoW) -> KeyObject:
    return KeyObject.of(ops.revoke_key(uow.session, actor, tenant_id, key_id))


@router.get("/audit_log", response_model=ListPage[AuditObject])
def audit_log(_: AdminActor, uow: AdminUoW, target_id: str | None = None, after: str | None = None,
              limit: Limit = 20) -> ListPage[AuditObject]:
    items, more = audit.page(uow.session, after=after, limit=limit, target_id=target_id)
    return ListPage.of([AuditObject.of(e) for e in items], more)
