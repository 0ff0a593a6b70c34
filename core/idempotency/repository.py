"""All SQL on ``idempotency_keys``. A row with no ``status_code`` is a reservation whose
``expires_at`` is the lease of the request running with the key."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.idempotency.models import IdempotencyKey
from core.kit.orm import utcnow


def _where(scope: str, key: str) -> ColumnElement[bool]:
    return (IdempotencyKey.scope == scope) & (IdempotencyKey.key == key)


def reserve(session: Session, scope: str, tenant_id: str | None, key: str,
            lease: timedelta) -> bool:
    """Reserve ``key`` for a request; False when another has it (or had it). A row whose
    lease or lifetime ran out is taken over."""
    now = utcnow()
    session.execute(delete(IdempotencyKey).where(_where(scope, key),
                                                 IdempotencyKey.expires_at < now))
    inserted = session.execute(
        insert(IdempotencyKey)
        .values(scope=scope, tenant_id=tenant_id, key=key, request_hash="", created_at=now,
                expires_at=now + lease)
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    ).first()
    return inserted is not None


def get(session: Session, scope: str, key: str) -> IdempotencyKey | None:
    row: IdempotencyKey | None = session.scalars(
        select(IdempotencyKey).where(_where(scope, key))).one_or_none()
    return row


def renew(session: Session, scope: str, key: str, lease: timedelta) -> None:
    session.execute(update(IdempotencyKey)
                    .where(_where(scope, key), IdempotencyKey.status_code.is_(None))
                    .values(expires_at=utcnow() + lease))


def store(session: Session, scope: str, key: str, *, request_hash: str, status: int,
          response: dict[str, Any], keep: timedelta) -> None:
    session.execute(update(IdempotencyKey).where(_where(scope, key)).values(
        request_hash=request_hash, status_code=status, response=response,
        expires_at=utcnow() + keep))


def release(session: Session, scope: str, key: str) -> None:
    session.execute(delete(IdempotencyKey).where(_where(scope, key)))


def delete_expired(session: Session, now: datetime) -> None:
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
