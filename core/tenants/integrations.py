"""A tenant's credentials for its jobs' integrations (Weights & Biases): set by the
tenant, read by the worker that runs one of its jobs, never shown again in full."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from core.kit.errors import InvalidRequest, NotFound
from core.kit.settings import Settings
from core.tenants import repository as tenant_repo
from core.tenants.models import Tenant
from core.tenants.scope import TenantId

TYPES = ("wandb",)


class WandbCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=8, max_length=200)
    base_url: str | None = Field(None, max_length=500)  # a self-hosted W&B server


@dataclass(frozen=True)
class Wandb:
    """What a worker logs a job's W&B run with."""

    mode: Literal["online", "offline", "disabled"]
    api_key: str | None
    base_url: str | None


def _tenant(session: Session, tenant_id: TenantId) -> Tenant:
    tenant = tenant_repo.get(session, tenant_id)
    assert tenant is not None
    return tenant


def set_wandb(session: Session, tenant_id: TenantId, credentials: WandbCredentials) -> Tenant:
    tenant = _tenant(session, tenant_id)
    tenant.integrations = {**(tenant.integrations or {}), "wandb": credentials.model_dump()}
    session.flush()
    return tenant


def delete(session: Session, tenant_id: TenantId, kind: str) -> Tenant:
    tenant = _tenant(session, tenant_id)
    if kind not in (tenant.integrations or {}):
        raise NotFound(f"no {kind} credentials are set", param="integration")
    tenant.integrations = {k: v for k, v in (tenant.integrations or {}).items() if k != kind}
    session.flush()
    return tenant


def shown(tenant: Tenant) -> list[dict[str, Any]]:
    """The tenant's integrations as the API lists them: the key's last four only."""
    return [{"object": "integration", "type": kind, "key_hint": f"…{value['api_key'][-4:]}",
             "base_url": value.get("base_url")}
            for kind, value in sorted((tenant.integrations or {}).items())]


def wandb_for(tenant: Tenant, settings: Settings) -> Wandb:
    own = (tenant.integrations or {}).get("wandb") or {}
    return Wandb(mode=settings.wandb_mode,
                 api_key=own.get("api_key") or settings.wandb_api_key,
                 base_url=own.get("base_url") or settings.wandb_base_url)


def check_usable(tenant: Tenant, settings: Settings, kinds: list[str]) -> None:
    """A job's integrations can log where this deployment runs (job creation)."""
    if "wandb" not in kinds:
        return
    found = wandb_for(tenant, settings)
    if found.mode == "disabled":
        raise InvalidRequest("Weights & Biases logging is disabled on this deployment "
                             "(LORAMILL_WANDB_MODE); leave out the wandb integration",
                             param="integrations", code="integration_unavailable")
    if found.mode == "online" and not found.api_key:
        raise InvalidRequest("no Weights & Biases API key is set for your account: "
                             "PUT /v1/integrations/wandb {\"api_key\": ...} first",
                             param="integrations", code="integration_not_configured")
