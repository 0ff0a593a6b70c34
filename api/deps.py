"""Request-scoped dependencies: the one transaction per request, and authentication.

The session dependency owns the transaction: it commits after the endpoint returns and
only then runs the work queued with :meth:`UnitOfWork.after_commit` (enqueueing Celery
messages), so a message never points at rows that were rolled back.

No request holds a pooled connection while it waits for a thread: authentication is one
short transaction in one thread hop; scoping to the tenant costs no query (it is set when
the endpoint's transaction begins, core.kit.db.set_tenant); the endpoint's queries and its
commit then run without giving their connection back in between. Each tenant has a cap
on requests in flight (api/concurrency.py), and the ``Idempotency-Key`` of a POST is
claimed only once authentication, suspension, the rate limit and the key's scopes passed
(:func:`require`, :func:`admin_actor`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.concurrency import slots
from core.kit import logs
from core.kit.db import admin_scope, get_admin_sessionmaker, get_sessionmaker, set_tenant
from core.kit.errors import AuthenticationFailed, PermissionDenied
from core.kit.settings import Settings, get_settings
from core.tenants import keys, ratelimit
from core.tenants import repository as tenant_repo
from core.tenants.scope import TenantId

log = logging.getLogger("loramill.api")
T = TypeVar("T")


@dataclass
class UnitOfWork:
    session: Session
    _after_commit: list[Callable[[], object]] = field(default_factory=list)
    _on_rollback: list[Callable[[], object]] = field(default_factory=list)

    def after_commit(self, fn: Callable[[], object]) -> None:
        self._after_commit.append(fn)

    def peek(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read-only ``fn(session, *args)`` and end its transaction at once, returning
        the pooled connection (for endpoints that then wait a long time, like uploads)."""
        try:
            return fn(self.session, *args)
        finally:
            self.session.rollback()

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Undo outside the database (an uploaded object) if the transaction fails."""
        self._on_rollback.append(fn)

    def _run(self, hooks: list[Callable[[], object]], what: str) -> None:
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("%s hook failed", what)


def get_uow() -> Iterator[UnitOfWork]:
    """The request's transaction as the app role; tenant endpoints scope it to the caller's
    tenant (:func:`current_tenant`), so row-level security backs every query's filter."""
    yield from _unit_of_work(get_sessionmaker())


def get_admin_uow() -> Iterator[UnitOfWork]:
    """The request's transaction as the admin role, for /v1/admin and /ops."""
    yield from _unit_of_work(get_admin_sessionmaker())


def _unit_of_work(factory: sessionmaker[Session]) -> Iterator[UnitOfWork]:
    uow = UnitOfWork(factory())
    try:
        yield uow
        uow.session.commit()
    except BaseException:
        uow.session.rollback()
        uow._run(uow._on_rollback, "rollback")
        raise
    finally:
        uow.session.close()
    uow._run(uow._after_commit, "after-commit")


# scope="function": commit (and the after-commit work) runs when the endpoint returns,
# before the response is sent, so a client never sees a 200 for a rolled-back write.
UoW = Annotated[UnitOfWork, Depends(get_uow, scope="function")]
AdminUoW = Annotated[UnitOfWork, Depends(get_admin_uow, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: TenantId | None
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return keys.ADMIN_SCOPE in self.scopes

    @property
    def owner(self) -> str:
        """Whose requests count together against the concurrency cap."""
        return self.tenant_id or self.key_id


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "missing API key: send it as 'Authorization: Bearer lm-sk-...'",
            code="missing_api_key",
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "malformed Authorization header: expected 'Bearer lm-sk-...'",
            code="invalid_authorization_header",
        )
    if not keys.is_well_formed(token):
        raise AuthenticationFailed(
            "malformed API key: loramill keys look like 'lm-sk-' followed by 43 characters",
            code="invalid_api_key",
        )
    return token


async def authenticate(request: Request,
                       settings: Annotated[Settings, Depends(get_settings)],
                       ) -> AsyncIterator[Principal]:
    """Who is calling, holding one of its owner's slots for the rest of the request. Keys
    are found by hash before any tenant is known: the admin role's one short transaction."""
    token = _bearer(request)
    key_hash = keys.hash_key(token)
    limit = settings.max_concurrent_requests_per_tenant
    held: str | None = None
    try:
        known = slots.owner_of(key_hash)
        if known is not None:
            slots.acquire(known, limit)  # a flood is refused here, before any I/O
            held = known
        principal = await run_in_threadpool(_lookup, token)
        if held != principal.owner:
            if held is not None:
                slots.release(held)
                held = None
            slots.acquire(principal.owner, limit)
            held = principal.owner
        slots.remember(key_hash, principal.owner)
        logs.bind(tenant_id=principal.tenant_id)
        yield principal
    finally:
        if held is not None:
            slots.release(held)


def _lookup(token: str) -> Principal:
    with admin_scope() as session:
        return principal_for(session, token)


def principal_for(session: Session, token: str) -> Principal:
    """Who a well-formed key belongs to; refused when unknown, revoked or suspended."""
    key = tenant_repo.find_key(session, keys.hash_key(token))
    if key is None:
        raise AuthenticationFailed(f"unknown API key {keys.display_prefix(token)}...")
    if key.revoked_at is not None:
        raise AuthenticationFailed(
            f"API key {key.prefix}... was revoked", code="revoked_api_key"
        )
    if key.tenant_id is not None:
        tenant = tenant_repo.get(session, key.tenant_id)
        if tenant is None or tenant.suspended_at is not None:
            raise AuthenticationFailed("this account is suspended", code="account_suspended")
    ratelimit.check(key.id)
    tenant_repo.touch_key(session, key)
    tenant_id = TenantId(key.tenant_id) if key.tenant_id else None
    return Principal(key_id=key.id, tenant_id=tenant_id, scopes=tuple(key.scopes))


async def current_tenant(principal: Annotated[Principal, Depends(authenticate)],
                         uow: UoW) -> TenantId:
    if principal.tenant_id is None:
        raise PermissionDenied(
            "admin keys manage the service and cannot act as a tenant; use a tenant key"
        )
    set_tenant(uow.session, principal.tenant_id)  # SET LOCAL on each of its transactions
    return principal.tenant_id


CurrentTenant = Annotated[TenantId, Depends(current_tenant)]


def require(scope: str) -> Callable[..., Awaitable[TenantId]]:
    """A tenant whose key carries ``scope`` (read-only keys cannot change anything); a POST's
    Idempotency-Key is claimed only then."""

    async def check(request: Request, principal: Annotated[Principal, Depends(authenticate)],
                    tenant_id: CurrentTenant) -> TenantId:
        if scope not in principal.scopes:
            raise PermissionDenied(
                f"this API key lacks the '{scope}' scope (it has: "
                f"{', '.join(principal.scopes) or 'none'})", code="missing_scope")
        await idempotency.claim(request, tenant_id)
        return tenant_id

    return check


FilesWriter = Annotated[TenantId, Depends(require(keys.FILES_WRITE))]
JobsWriter = Annotated[TenantId, Depends(require(keys.JOBS_WRITE))]
KeysWriter = Annotated[TenantId, Depends(require(keys.KEYS_WRITE))]


@dataclass(frozen=True)
class Actor:
    """A tenant's key acting: the tenant, and the key's name in the audit log."""

    tenant_id: TenantId
    name: str


async def jobs_actor(principal: Annotated[Principal, Depends(authenticate)],
                     tenant_id: JobsWriter) -> Actor:
    return Actor(tenant_id, f"key:{principal.key_id}")


JobsActor = Annotated[Actor, Depends(jobs_actor)]


async def admin_actor(request: Request,
                      principal: Annotated[Principal, Depends(authenticate)]) -> str:
    """An admin key's audit name; tenant keys are refused. Operators' Idempotency-Keys
    have a namespace of their own."""
    if not principal.is_admin:
        raise PermissionDenied("this endpoint is for operators: use an admin key",
                               code="admin_only")
    await idempotency.claim(request, None)
    return f"key:{principal.key_id}"


AdminActor = Annotated[str, Depends(admin_actor)]
