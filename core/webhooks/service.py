"""Webhooks: tenants register endpoints; a job's end (``fine_tuning.job.succeeded``,
``.failed``, ``.cancelled``, OpenAI's event names) becomes a delivery for each endpoint
that takes it, written in the transaction that ended the job (an outbox), and sent by the
scheduler (:mod:`core.webhooks.delivery`) signed the Standard Webhooks way.

Endpoints may not point into the deployment's own network: a URL whose host resolves to a
private, loopback, link-local or otherwise non-global address is refused, at registration
and again before each delivery, unless an operator allows that host, address or network
(``LORAMILL_WEBHOOK_ALLOWED_HOSTS``).
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.kit import ids
from core.kit.errors import InvalidRequest, NotFound
from core.kit.orm import utcnow
from core.kit.pagination import newest_first
from core.kit.settings import get_settings
from core.webhooks.models import WebhookDelivery, WebhookEndpoint

EVENTS = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
MAX_ENDPOINTS = 20  # a tenant's


class UnsafeURL(ValueError):
    """A webhook URL that may not be called (scheme, or an address inside the network)."""


def check_url(url: str, allowed: list[str]) -> None:
    """Raise :class:`UnsafeURL` unless ``url`` is http(s) to a host whose every address is
    global, or is allowed by the operator (a host name, an address or a CIDR network)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UnsafeURL("must not carry credentials")
    host = parts.hostname
    if host in allowed:
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 443,
                                                           type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"its host {host!r} cannot be resolved") from exc
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    for address in found:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if not ip.is_global and not any(ip in net for net in networks):
            raise UnsafeURL(f"its host {host!r} resolves to {ip}, a private, loopback or "
                            "link-local address; an operator can allow it "
                            "(LORAMILL_WEBHOOK_ALLOWED_HOSTS)")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create(session: Session, tenant_id: str, url: str, events: list[str] | None,
           description: str) -> WebhookEndpoint:
    try:
        check_url(url, get_settings().webhook_allowed_hosts)
    except UnsafeURL as exc:
        raise InvalidRequest(f"url {url[:200]!r} {exc}", param="url",
                             code="invalid_webhook_url") from None
    chosen = list(dict.fromkeys(events or EVENTS))
    for event in chosen:
        if event not in EVENTS:
            raise InvalidRequest(f"unknown event {event!r}; one of {', '.join(EVENTS)}",
                                 param="events", code="invalid_event")
    count = len(list(session.scalars(select(WebhookEndpoint.id).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None)))))
    if count >= MAX_ENDPOINTS:
        raise InvalidRequest(f"at most {MAX_ENDPOINTS} webhook endpoints; delete one first",
                             param="url", code="too_many_webhooks")
    endpoint = WebhookEndpoint(id=ids.new_id(ids.WEBHOOK), tenant_id=tenant_id, url=url,
                               events=chosen, description=description, secret=new_secret())
    session.add(endpoint)
    session.flush()
    return endpoint


def get(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id,
        WebhookEndpoint.deleted_at.is_(None))).one_or_none()
    if endpoint is None:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}", param="webhook_id")
    return endpoint


def list_page(session: Session, tenant_id: str, *, after: str | None,
              limit: int) -> tuple[list[WebhookEndpoint], bool]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id,
                                         WebhookEndpoint.deleted_at.is_(None))
    return newest_first(session, stmt, WebhookEndpoint.id, after=after, limit=limit)


def delete(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """No more deliveries (pending ones are dropped); the log stays readable by id."""
    endpoint = get(session, tenant_id, endpoint_id)
    endpoint.deleted_at = utcnow()
    for delivery in session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")):
        delivery.status, delivery.last_error = "failed", "the endpoint was deleted"
    session.flush()
    return endpoint


def deliveries(session: Session, tenant_id: str, endpoint_id: str, *, after: str | None,
               limit: int) -> tuple[list[WebhookDelivery], bool]:
    endpoint = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id)
    ).one_or_none()
    if endpoint is None:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}", param="webhook_id")
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return newest_first(session, stmt, WebhookDelivery.id, after=after, limit=limit)


def enqueue(session: Session, tenant_id: str, event_type: str, data: dict[str, Any]) -> int:
    """The event, as one pending delivery for each of the tenant's endpoints that takes
    it, in the caller's transaction. Returns how many."""
    endpoints = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))).all()
    event_id = ids.new_id(ids.EVENT_OUT)
    now = utcnow()
    payload = {"id": event_id, "object": "event", "created_at": int(now.timestamp()),
               "type": event_type, "data": data}
    wanted = [e for e in endpoints if event_type in e.events]
    for endpoint in wanted:
        session.add(WebhookDelivery(
            id=ids.new_id(ids.DELIVERY), tenant_id=tenant_id, endpoint_id=endpoint.id,
            event_id=event_id, event_type=event_type, payload=payload, status="pending",
            attempts=0, next_attempt_at=now, created_at=now))
    return len(wanted)
