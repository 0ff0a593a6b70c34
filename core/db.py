"""Engine and session factories, and the worker-side transaction scope.

The API's transaction belongs to its session dependency (api/deps.py); everything else
uses :func:`session_scope`. Repositories and services only flush.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings


def normalize_url(url: str) -> str:
    """Make a plain ``postgresql://`` URL use psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,  # survive a PostgreSQL restart without restarting ourselves
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
    )


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(get_settings().require_database_url())


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
