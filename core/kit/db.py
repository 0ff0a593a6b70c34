"""Engines, session factories and transaction scopes for the two database roles.

Row-level security (migration 0006) keeps every tenant table to the rows of the tenant
named by the transaction-local setting ``loramill.tenant_id``; without it a query sees no
tenant rows at all. So:

- :func:`tenant_scope` — the app role (``database_url``), with the tenant set: everything
  done on a tenant's behalf (the API's tenant endpoints, a worker training a job).
- :func:`session_scope` — the app role, no tenant: tables without tenants (workers'
  heartbeats, base models).
- :func:`admin_scope` — the admin role (``admin_database_url``): work that spans tenants
  (auth key lookup, dispatch and sweep, the admin API, the server CLI, migrations).

The API's transaction belongs to its session dependency (api/deps.py). Repositories and
services only flush.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from core.kit.settings import get_settings


def normalize_url(url: str) -> str:
    """Make a plain ``postgresql://`` URL use psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


POOL_OVERFLOW = 8


def pool_usage(engine: Engine) -> tuple[int, int]:
    """Connections of the engine's pool in use, and how many it may have."""
    pool = engine.pool
    return pool.checkedout(), pool.size() + POOL_OVERFLOW  # type: ignore[attr-defined]


def make_engine(url: str, *, size: int | None = None) -> Engine:
    """A pool of up to ``size`` connections plus a few for commits that run outside the
    thread limit (FastAPI's dependency exits); connections open only when needed."""
    settings = get_settings()
    size = size or settings.api_threads
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,  # survive a PostgreSQL restart without restarting ourselves
        pool_size=size,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
    )


TENANT_SETTING = "loramill.tenant_id"
# What SQLAlchemy raises when PostgreSQL cannot be reached (down, restarting, network)
UNREACHABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The app role's engine: subject to row-level security."""
    return make_engine(get_settings().require_database_url())


@lru_cache(maxsize=1)
def get_admin_engine() -> Engine:
    settings = get_settings()
    url = settings.require_admin_database_url()
    if url == settings.require_database_url():
        return get_engine()
    # authentication's short lookups and the operators' requests
    return make_engine(url, size=max(settings.api_threads // 2, 4))


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache(maxsize=1)
def get_admin_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_admin_engine(), expire_on_commit=False)


def set_tenant(session: Session, tenant_id: str) -> None:
    """Scope the session to one tenant's rows: each of its transactions starts with
    ``SET LOCAL`` (:func:`_scope_transaction`), so setting it costs no query and holds no
    connection until the session first needs one."""
    session.info[TENANT_INFO] = tenant_id
    if session.in_transaction():  # already begun: scope the rest of it too
        session.execute(_set_local(tenant_id))


TENANT_INFO = "loramill_tenant_id"


def _set_local(tenant_id: str) -> Any:
    return select(func.set_config(TENANT_SETTING, tenant_id, True))


@event.listens_for(Session, "after_begin")
def _scope_transaction(session: Session, transaction: SessionTransaction,
                       connection: Connection, *_: Any) -> None:
    tenant_id = session.info.get(TENANT_INFO)
    if tenant_id is not None:
        connection.execute(_set_local(tenant_id))


@contextmanager
def session_scope() -> Iterator[Session]:
    """A transaction as the app role, with no tenant: tenant tables look empty."""
    with _scope(get_sessionmaker()) as session:
        yield session


@contextmanager
def tenant_scope(tenant_id: str) -> Iterator[Session]:
    """A transaction as the app role that sees and writes only ``tenant_id``'s rows."""
    with _scope(get_sessionmaker()) as session:
        set_tenant(session, tenant_id)
        yield session


@contextmanager
def admin_scope() -> Iterator[Session]:
    """A transaction as the admin role, across tenants."""
    with _scope(get_admin_sessionmaker()) as session:
        yield session


@contextmanager
def _scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
