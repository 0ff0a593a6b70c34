"""A tenant's integration credentials (Weights & Biases): what its jobs' ``integrations``
log with. Setting them needs the ``jobs:write`` scope; the key is never shown again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentTenant, JobsWriter, UoW
from core.tenants import integrations
from core.tenants import repository as tenant_repo

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])


@router.get("")
def list_integrations(tenant_id: CurrentTenant, uow: UoW) -> dict[str, Any]:
    tenant = tenant_repo.get(uow.session, tenant_id)
    assert tenant is not None
    return {"object": "list", "data": integrations.shown(tenant)}


@router.put("/wandb")
def set_wandb(body: integrations.WandbCredentials, tenant_id: JobsWriter,
              uow: UoW) -> dict[str, Any]:
    """The W&B API key (and server) the tenant's jobs log their runs with."""
    tenant = integrations.set_wandb(uow.session, tenant_id, body)
    return {"object": "list", "data": integrations.shown(tenant)}


@router.delete("/wandb")
def delete_wandb(tenant_id: JobsWriter, uow: UoW) -> dict[str, Any]:
    tenant = integrations.delete(uow.session, tenant_id, "wandb")
    return {"object": "list", "data": integrations.shown(tenant)}
