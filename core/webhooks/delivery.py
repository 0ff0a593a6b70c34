"""Sending webhook deliveries: the scheduler process calls :func:`deliver_due` every
second on a thread of its own (so a slow endpoint never delays dispatch).

Each pass claims the due deliveries (``FOR UPDATE SKIP LOCKED``, pushed a lease ahead so a
second scheduler replica leaves them alone), sends them concurrently, and records each
outcome: a 2xx answer delivers it; anything else (another status, a timeout, a refused
connection, an address that is no longer allowed) is retried after
``webhook_retry_seconds`` x 4^(attempt-1), at most six hours, until
``webhook_max_attempts`` have failed. A delivery keeps its id (the ``webhook-id``) across
retries, so receivers can drop duplicates; each attempt is signed afresh with its own
``webhook-timestamp`` (Standard Webhooks, with the ``standardwebhooks`` library).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select
from standardwebhooks import Webhook

from core.kit import metrics
from core.kit.db import admin_scope
from core.kit.orm import utcnow
from core.kit.settings import Settings, get_settings
from core.webhooks.models import WebhookDelivery, WebhookEndpoint
from core.webhooks.service import UnsafeURL, check_url, signing_secrets

log = logging.getLogger("loramill.webhooks")
BATCH = 32
SENDERS = 8
MAX_WAIT = timedelta(hours=6)


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    url: str
    secrets: list[str]  # each signs: the current one, and a rotated one kept for a day
    body: bytes


@dataclass(frozen=True)
class Outcome:
    delivery_id: str
    ok: bool
    status_code: int | None
    error: str | None


def deliver_due(settings: Settings | None = None) -> int:
    """One pass: returns how many deliveries were attempted."""
    settings = settings or get_settings()
    attempts = _claim(settings)
    if not attempts:
        return 0
    with ThreadPoolExecutor(min(SENDERS, len(attempts))) as pool:
        outcomes = list(pool.map(lambda a: send(a, settings), attempts))
    _record(outcomes, settings)
    return len(outcomes)


def tick() -> None:
    """:func:`deliver_due`, as the scheduler's ticker calls it."""
    deliver_due()


def _claim(settings: Settings) -> list[Attempt]:
    lease = timedelta(seconds=settings.webhook_timeout_seconds * 2 + 30)
    now = utcnow()
    with admin_scope() as session:  # every tenant's deliveries
        rows = session.execute(
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(BATCH)
            .with_for_update(of=WebhookDelivery, skip_locked=True)).all()
        for delivery, _ in rows:
            delivery.next_attempt_at = now + lease
        return [Attempt(d.id, e.url, signing_secrets(e), json.dumps(d.payload).encode())
                for d, e in rows]


def send(attempt: Attempt, settings: Settings) -> Outcome:
    """POST one delivery, signed; never raises."""
    try:
        addresses = check_url(attempt.url, settings.webhook_allowed_hosts)  # DNS may change
    except UnsafeURL as exc:
        return Outcome(attempt.delivery_id, False, None, f"refused: the URL {exc}")
    now = utcnow()
    headers = {
        "content-type": "application/json", "user-agent": "loramill-webhooks",
        "webhook-id": attempt.delivery_id, "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(secret).sign(attempt.delivery_id, now,
                                                           attempt.body)
                                      for secret in attempt.secrets)}
    try:
        response = _post_pinned(attempt, addresses, headers, settings)
    except httpx.HTTPError as exc:
        return Outcome(attempt.delivery_id, False, None,
                       f"{type(exc).__name__}: {exc}"[:500])
    ok = 200 <= response.status_code < 300
    return Outcome(attempt.delivery_id, ok, response.status_code,
                   None if ok else f"HTTP {response.status_code}")


def _post_pinned(attempt: Attempt, addresses: list[str], headers: dict[str, str],
                 settings: Settings) -> httpx.Response:
    """POST to the addresses the URL's check resolved, each in turn while one refuses the
    connection: a host name is not looked up again (a DNS answer that changes between
    the check and the connection, DNS rebinding, cannot point the request inside). The
    name still goes in the Host header and TLS (SNI, the certificate check)."""
    url = httpx.URL(attempt.url)
    targets = [(url.copy_with(host=address), {"host": url.netloc.decode("ascii")},
                {"sni_hostname": url.host}) for address in addresses]
    if not targets:  # a host the operator allowed by name
        targets = [(url, {}, {})]
    refused: httpx.ConnectError | None = None
    with httpx.Client(timeout=settings.webhook_timeout_seconds,
                      follow_redirects=False) as client:
        for target, host, extensions in targets:
            try:
                return client.post(target, content=attempt.body, headers={**headers, **host},
                                   extensions=extensions)
            except httpx.ConnectError as exc:
                refused = exc
    assert refused is not None
    raise refused


def retry_at(now: datetime, attempts: int, settings: Settings) -> datetime:
    wait = settings.webhook_retry_seconds * 4.0 ** min(attempts - 1, 32)
    return now + timedelta(seconds=min(wait, MAX_WAIT.total_seconds()))


def _record(outcomes: list[Outcome], settings: Settings) -> None:
    now = utcnow()
    with admin_scope() as session:
        for outcome in outcomes:
            delivery = session.get(WebhookDelivery, outcome.delivery_id, with_for_update=True)
            if delivery is None or delivery.status != "pending":
                continue  # its endpoint was deleted meanwhile
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.last_status_code = outcome.status_code
            delivery.last_error = outcome.error
            if outcome.ok:
                delivery.status, delivery.delivered_at = "succeeded", now
                result = "delivered"
            elif delivery.attempts >= settings.webhook_max_attempts:
                delivery.status, result = "failed", "failed"
                log.warning("webhook delivery %s failed after %d attempts: %s", delivery.id,
                            delivery.attempts, outcome.error)
            else:
                delivery.next_attempt_at = retry_at(now, delivery.attempts, settings)
                result = "retried"
            metrics.WEBHOOK_DELIVERIES.labels(result).inc()
