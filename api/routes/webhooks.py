"""A tenant's webhook endpoints, in OpenAI's webhook-endpoints shape (the official
``openai`` client's ``client.webhooks`` works against it), and their delivery logs
(docs/api.md#webhooks). Changing endpoints needs the ``jobs:write`` scope.
``/v1/webhooks`` is the same API under a shorter name."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentTenant, JobsWriter, UoW
from api.schemas.common import Limit, ListPage, ts
from core.kit import ids
from core.kit.errors import InvalidRequest
from core.kit.settings import get_settings
from core.webhooks import delivery
from core.webhooks import service as webhooks
from core.webhooks.models import WebhookDelivery, WebhookEndpoint

PREFIX, SHORT_PREFIX = "/v1/webhook_endpoints", "/v1/webhooks"  # both mounted (api/app.py)
router = APIRouter(tags=["webhooks"])
EventTypes = list[str]


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    event_types: EventTypes | None = Field(
        None, min_length=1, max_length=len(webhooks.EVENTS),
        description="fine_tuning.job.succeeded|failed|cancelled (default: all three)")
    name: str = Field("", max_length=200)


class UpdateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048)
    event_types: EventTypes | None = Field(None, min_length=1,
                                           max_length=len(webhooks.EVENTS))
    name: str | None = Field(None, max_length=200)


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_old_secret_active_for_24_hours: bool = False


class TestEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: str


class EndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    event_types: list[str]
    name: str
    created_at: int
    updated_at: int
    signing_secret_hint: str
    # only in the answers that make it (create, rotate_secret)
    signing_secret: str | None = None

    @classmethod
    def of(cls, row: WebhookEndpoint, *, secret: bool = False) -> EndpointObject:
        return cls(id=row.id, url=row.url, event_types=list(row.event_types), name=row.name,
                   created_at=ts(row.created_at) or 0, updated_at=ts(row.updated_at) or 0,
                   signing_secret_hint=webhooks.hint(row.secret),
                   signing_secret=row.secret if secret else None)


class DeletedEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class TestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


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
    row = webhooks.create(uow.session, tenant_id, body.url, body.event_types, body.name)
    return EndpointObject.of(row, secret=True)


@router.get("", response_model=ListPage[EndpointObject])
def list_endpoints(tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
                   limit: Limit = 20) -> ListPage[EndpointObject]:
    items, more = webhooks.list_page(uow.session, tenant_id, after=after, limit=limit)
    return ListPage.of([EndpointObject.of(e) for e in items], more)


@router.get("/{webhook_endpoint_id}", response_model=EndpointObject)
def get_endpoint(webhook_endpoint_id: str, tenant_id: CurrentTenant,
                 uow: UoW) -> EndpointObject:
    return EndpointObject.of(webhooks.get(uow.session, tenant_id, webhook_endpoint_id))


@router.post("/{webhook_endpoint_id}", response_model=EndpointObject)
def update_endpoint(webhook_endpoint_id: str, body: UpdateEndpoint, tenant_id: JobsWriter,
                    uow: UoW) -> EndpointObject:
    return EndpointObject.of(webhooks.update(
        uow.session, tenant_id, webhook_endpoint_id, url=body.url,
        event_types=body.event_types, name=body.name))


@router.delete("/{webhook_endpoint_id}", response_model=DeletedEndpoint)
def delete_endpoint(webhook_endpoint_id: str, tenant_id: JobsWriter,
                    uow: UoW) -> DeletedEndpoint:
    """No more deliveries to it (pending ones are dropped); its log stays readable."""
    return DeletedEndpoint(id=webhooks.delete(uow.session, tenant_id, webhook_endpoint_id).id)


@router.post("/{webhook_endpoint_id}/rotate_secret", response_model=EndpointObject)
def rotate_secret(webhook_endpoint_id: str, tenant_id: JobsWriter, uow: UoW,
                  body: RotateSecret | None = None) -> EndpointObject:
    """A new signing secret (in this answer only); the old one stops signing at once, or
    after 24 hours with ``keep_old_secret_active_for_24_hours``."""
    row = webhooks.rotate_secret(uow.session, tenant_id, webhook_endpoint_id,
                                 keep_old=bool(body and body.keep_old_secret_active_for_24_hours))
    return EndpointObject.of(row, secret=True)


@router.post("/{webhook_endpoint_id}/test", response_model=TestResult)
def test_endpoint(webhook_endpoint_id: str, body: TestEvent, tenant_id: JobsWriter,
                  uow: UoW) -> TestResult:
    """Send one signed example event of ``event_type`` now and say what the endpoint
    answered (not logged as a delivery)."""
    row = webhooks.get(uow.session, tenant_id, webhook_endpoint_id)
    webhooks.check_event_type(body.event_type)
    payload = webhooks.event(body.event_type, {"id": "ftjob-test"})
    outcome = delivery.send(delivery.Attempt(ids.new_id(ids.DELIVERY), row.url,
                                             webhooks.signing_secrets(row),
                                             json.dumps(payload).encode()), get_settings())
    if outcome.status_code is None:
        raise InvalidRequest(f"the endpoint could not be reached: {outcome.error}",
                             param="url", code="webhook_unreachable")
    return TestResult(webhook_endpoint_id=row.id, event_type=body.event_type,
                      status_code=outcome.status_code)


@router.get("/{webhook_endpoint_id}/deliveries", response_model=ListPage[DeliveryObject])
def list_deliveries(webhook_endpoint_id: str, tenant_id: CurrentTenant, uow: UoW,
                    after: str | None = None, limit: Limit = 20) -> ListPage[DeliveryObject]:
    """The endpoint's delivery log, newest first (loramill)."""
    items, more = webhooks.deliveries(uow.session, tenant_id, webhook_endpoint_id,
                                      after=after, limit=limit)
    return ListPage.of([DeliveryObject.of(d) for d in items], more)
