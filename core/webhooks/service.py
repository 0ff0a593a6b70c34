"""Webhooks, in the shape of OpenAI's webhook-endpoints API: tenants register endpoints;
a job's end (``fine_tuning.job.succeeded``, ``.failed``, ``.cancelled``, OpenAI's event
names) becomes a delivery for each endpoint that takes it, written in the transaction
that ended the job (an outbox), and sent by the scheduler (:mod:`core.webhooks.delivery`)
signed the Standard Webhooks way.

Endpoints may not point into the deployment's own network: a URL whose host resolves to a
private, loopback, link-local or otherwise non-global address is refused, at registration
and again before each delivery (which then connects to the addresses checked, not to a
second lookup's), unless an operator allows that host, address or network
(``LORAMILL_WEBHOOK_ALLOWED_HOSTS``).
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from datetime import timedelta
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


def check_url(url: str, allowed: list[str]) -> list[str]:
    """Raise :class:`UnsafeURL` unless ``url`` is http(s) to a host whose every address is
    global, or is allowed by the operator (a host name, an address or a CIDR network).
    Returns the addresses checked, in the resolver's order (none for a host the operator
    allowed by name): a delivery connects to these, never to a second lookup's answer."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UnsafeURL("must not carry credentials")
    host = parts.hostname
    if host in allowed:
        return []
    try:
        found = list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(
            host, parts.port or 443, type=socket.SOCK_STREAM)))
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"its host {host!r} cannot be resolved") from exc
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    checked = [ipaddress.ip_address(address.split("%", 1)[0]) for address in found]
    for ip in checked:
        if not ip.is_global and not any(ip in net for net in networks):
            raise UnsafeURL(f"its host {host!r} resolves to {ip}, a private, loopback or "
                            "link-local address; an operator can allow it "
                            "(LORAMILL_WEBHOOK_ALLOWED_HOSTS)")
    return [str(ip) for ip in checked]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked_url(url: str) -> str:
    try:
        check_url(url, get_settings().webhook_allowed_hosts)
    except UnsafeURL as exc:
        raise InvalidRequest(f"url {url[:200]!r} {exc}", param="url",
                             code="invalid_webhook_url") from None
    return url


def check_event_type(event_type: str, param: str = "event_type") -> str:
    if event_type not in EVENTS:
        raise InvalidRequest(f"loramill sends {', '.join(EVENTS)}; not {event_type!r}",
                             param=param, code="invalid_event_type")
    return event_type


def _checked_events(event_types: list[str]) -> list[str]:
    return [check_event_type(e, "event_types") for e in dict.fromkeys(event_types)]


def create(session: Session, tenant_id: str, url: str, event_types: list[str] | None,
           name: str) -> WebhookEndpoint:
    count = len(list(session.scalars(select(WebhookEndpoint.id).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None)))))
    if count >= MAX_ENDPOINTS:
        raise InvalidRequest(f"at most {MAX_ENDPOINTS} webhook endpoints; delete one first",
                             param="url", code="too_many_webhooks")
    endpoint = WebhookEndpoint(
        id=ids.new_id(ids.WEBHOOK), tenant_id=tenant_id, url=_checked_url(url),
        event_types=_checked_events(event_types or list(EVENTS)), name=name,
        secret=new_secret())
    session.add(endpoint)
    session.flush()
    return endpoint


def update(session: Session, tenant_id: str, endpoint_id: str, *, url: str | None,
           event_types: list[str] | None, name: str | None) -> WebhookEndpoint:
    endpoint = get(session, tenant_id, endpoint_id)
    if url is not None:
        endpoint.url = _checked_url(url)
    if event_types is not None:
        endpoint.event_types = _checked_events(event_types)
    if name is not None:
        endpoint.name = name
    endpoint.updated_at = utcnow()
    session.flush()
    return endpoint


def rotate_secret(session: Session, tenant_id: str, endpoint_id: str, *,
                  keep_old: bool) -> WebhookEndpoint:
    """A new secret; the old one stops signing at once, or after a day (``keep_old``:
    deliveries carry both signatures until then, so receivers can switch over)."""
    endpoint = get(session, tenant_id, endpoint_id)
    now = utcnow()
    endpoint.previous_secret = endpoint.secret if keep_old else None
    endpoint.previous_secret_expires_at = now + timedelta(hours=24) if keep_old else None
    endpoint.secret, endpoint.updated_at = new_secret(), now
    session.flush()
    return endpoint


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one
    while a rotation keeps it."""
    kept = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and kept is not None and kept > utcnow():
        return [endpoint.secret, endpoint.previous_secret]
    return [endpoint.secret]


def hint(secret: str) -> str:
    """What an endpoint shows of its secret after it was made: enough to tell two apart."""
    return f"{secret[:10]}…{secret[-4:]}"


def event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A webhook payload as OpenAI sends them."""
    return {"id": ids.new_id(ids.EVENT_OUT), "object": "event",
            "created_at": int(utcnow().timestamp()), "type": event_type, "data": data}


def get(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id,
        WebhookEndpoint.deleted_at.is_(None))).one_or_none()
    if endpoint is None:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}",
                       param="webhook_endpoint_id")
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
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}",
                       param="webhook_endpoint_id")
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return newest_first(session, stmt, WebhookDelivery.id, after=after, limit=limit)


def enqueue(session: Session, tenant_id: str, event_type: str, data: dict[str, Any]) -> int:
    """The event, as one pending delivery for each of the tenant's endpoints that takes
    it, in the caller's transaction. Returns how many."""
    endpoints = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))).all()
    payload = event(event_type, data)
    now = utcnow()
    wanted = [e for e in endpoints if event_type in e.event_types]
    for endpoint in wanted:
        session.add(WebhookDelivery(
            id=ids.new_id(ids.DELIVERY), tenant_id=tenant_id, endpoint_id=endpoint.id,
            event_id=payload["id"], event_type=event_type, payload=payload,
            status="pending", attempts=0, next_attempt_at=now, created_at=now))
    return len(wanted)
