"""A tenant's own API keys: create (the secret is shown once), list (prefix only),
revoke. Managing keys needs the ``keys:write`` scope."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import KeysWriter, UoW
from api.schemas.common import ListPage, ts
from core.tenants import service as tenant_service
from core.tenants.models import ApiKey

router = APIRouter(prefix="/v1/api_keys", tags=["api keys"])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    scopes: list[str] | None = None


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    prefix: str
    scopes: list[str]
    created_at: int
    last_used_at: int | None
    revoked_at: int | None
    secret: str | None = None  # only in the response that created it
    # in a replay of that response (Idempotency-Key): why the secret is not there
    note: str | None = None

    @classmethod
    def of(cls, key: ApiKey, secret: str | None = None) -> KeyObject:
        return cls(id=key.id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
                   created_at=ts(key.created_at) or 0, last_used_at=ts(key.last_used_at),
                   revoked_at=ts(key.revoked_at), secret=secret)


@router.post("", response_model=KeyObject)
def create_key(body: CreateKey, tenant_id: KeysWriter, uow: UoW) -> KeyObject:
    tenant = tenant_service.get(uow.session, tenant_id)
    issued = tenant_service.issue_key(uow.session, tenant, name=body.name,
                                      scopes=tenant_service.tenant_scopes(body.scopes))
    return KeyObject.of(issued.row, secret=issued.secret)


@router.get("", response_model=ListPage[KeyObject])
def list_keys(tenant_id: KeysWriter, uow: UoW) -> ListPage[KeyObject]:
    return ListPage.of([KeyObject.of(k) for k in tenant_service.list_keys(uow.session,
                                                                          tenant_id)], False)


@router.delete("/{key_id}", response_model=KeyObject)
def revoke_key(key_id: str, tenant_id: KeysWriter, uow: UoW) -> KeyObject:
    return KeyObject.of(tenant_service.revoke_key(uow.session, tenant_id, key_id))
