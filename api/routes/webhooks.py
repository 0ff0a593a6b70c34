"""A tenant's webhook endpoints and their delivery logs (docs/api.md#webhooks). Making
and deleting endpoints needs the ``jobs:write`` scope."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentTenant, JobsWriter, UoW
from api.schemas.common import Limit, ListPage, ts
from core.webhooks import service as webhooks
from core.webhooks.models import WebhookDelivery, WebhookEndpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] | None = Field(None, min_length=1, max_length=len(webhooks.EVENTS),
                                     description="default: every event")
    description: str = Field("", max_length=200)


class EndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    created_at: int
    secret: str | None = None  # only in the answer that made it: sign-verification key

    @classmethod
    def of(cls, row: WebhookEndpoint, *, secret: bool = False) -> EndpointObject:
        return cls(id=row.id, url=row.url, events=list(row.events),
                   description=row.description, created_at=ts(row.created_at) or 0,
                   secret=row.secret if secret else None)


class DeliveryObject(BaseModel):
    id: str  # the webhook-id header of every attempt
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: int | None
    next_attempt_at: int | None  # pending only
    delivered_at: int | None
    created_at: int
    payload: dict[str, Any]

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryObject:
        return cls(id=row.id, endpoint_id=row.endpoint_id, event_id=row.event_id,
                   event_type=row.event_type, status=row.status,
                   attempts=row.attempts, last_status_code=row.last_status_code,
                   last_error=row.last_error, last_attempt_at=ts(row.last_attempt_at),
                   next_attempt_at=ts(row.next_attempt_at) if row.status == "pending"
                   else None, delivered_at=ts(row.delivered_at),
                   created_at=ts(row.created_at) or 0, payload=row.payload)


@router.post("", response_model=EndpointObject)
def create_endpoint(body: CreateEndpoint, tenant_id: JobsWriter, uow: UoW) -> EndpointObject:
    """An endpoint for the tenant's jobs' end events; the answer carries its signing
    secret, shown this once."""
    row = webhooks.create(uow.session, tenant_id, body.url, body.events, body.description)
    return EndpointObject.of(row, secret=True)


@router.get("", response_model=ListPage[EndpointObject])
def list_endpoints(tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                   limit: Limit = 20) -> ListPage[EndpointObject]:
    items, more = webhooks.list_page(uow.session, tenant_id, after=after, limit=limit)
    return ListPage.of([EndpointObject.of(e) for e in items], more)


@router.get("/{webhook_id}", response_model=EndpointObject)
def get_endpoint(webhook_id: str, tenant_id: CurrentTenant, uow: UoW) -> EndpointObject:
    return EndpointObject.of(webhooks.get(uow.session, tenant_id, webhook_id))


@router.delete("/{webhook_id}", response_model=EndpointObject)
def delete_endpoint(webhook_id: str, tenant_id: JobsWriter, uow: UoW) -> EndpointObject:
    """No more deliveries to it (pending ones are dropped); its log stays readable."""
    return EndpointObject.of(webhooks.delete(uow.session, tenant_id, webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=ListPage[DeliveryObject])
def list_deliveries(webhook_id: str, tenant_id: CurrentTenant, uow: UoW,
                    after: str | None = None, limit: Limit = 20) -> ListPage[DeliveryObject]:
    """The endpoint's delivery log, newest first."""
    items, more = webhooks.deliveries(uow.session, tenant_id, webhook_id, after=after,
                                      limit=limit)
    return ListPage.of([DeliveryObject.of(d) for d in items], more)
