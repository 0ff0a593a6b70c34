"""Tenants and their API keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.kit.errors import Conflict, InvalidRequest, NotFound
from core.kit.orm import utcnow
from core.kit.settings import Settings
from core.tenants import keys
from core.tenants import repository as tenant_repo
from core.tenants.models import ApiKey, Tenant


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``secret`` is shown once and never stored."""

    row: ApiKey
    secret: str


def create_tenant(session: Session, name: str, settings: Settings) -> Tenant:
    tenant = tenant_repo.create_tenant(session, name, settings)
    if tenant is None:
        raise Conflict(f"a tenant named {name!r} already exists", param="name",
                       code="tenant_exists")
    return tenant


def get(session: Session, tenant_id: str) -> Tenant | None:
    return tenant_repo.get(session, tenant_id)


def issue_key(
    session: Session, tenant: Tenant | None, *, admin: bool = False, name: str = "",
    scopes: list[str] | None = None,
) -> IssuedKey:
    if tenant is None and not admin:
        raise NotFound("a tenant key needs a tenant")
    secret = keys.generate_key()
    row = tenant_repo.add_key(
        session, tenant_id=None if admin else tenant.id if tenant else None,
        prefix=keys.display_prefix(secret), key_hash=keys.hash_key(secret),
        scopes=[keys.ADMIN_SCOPE] if admin else (scopes or list(keys.TENANT_SCOPES)),
        name=name,
    )
    return IssuedKey(row=row, secret=secret)


def tenant_scopes(scopes: list[str] | None) -> list[str]:
    """The scopes of a new tenant key: all of them by default; ``read`` always."""
    if scopes is None:
        return list(keys.TENANT_SCOPES)
    unknown = sorted(set(scopes) - set(keys.TENANT_SCOPES))
    if unknown or not scopes:
        raise InvalidRequest(f"scopes must be a non-empty subset of "
                             f"{', '.join(keys.TENANT_SCOPES)} (unknown: {unknown})",
                             param="scopes")
    return scopes if keys.READ in scopes else [keys.READ, *scopes]


def key_is_valid(session: Session, secret: str) -> bool:
    row = tenant_repo.find_key(session, keys.hash_key(secret))
    return row is not None and row.revoked_at is None


def list_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return tenant_repo.keys_of(session, tenant_id)


def revoke_key(session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys; effective on its next request."""
    key = tenant_repo.key_of(session, tenant_id, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
