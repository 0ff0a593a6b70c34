from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from core.kit.db import admin_scope
from core.kit.orm import utcnow
from core.tenants import service as tenant_service
from core.tenants.keys import hash_key
from core.tenants.models import ApiKey
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import assert_error


@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_api_key"),
    ("Basic abc", "invalid_authorization_header"),
    ("Bearer sk-not-ours", "invalid_api_key"),
    ("Bearer lm-sk-short", "invalid_api_key"),
    ("Bearer lm-sk-" + "A" * 43, "invalid_api_key"),  # well formed, unknown
])
def test_bad_keys_get_401_in_the_openai_envelope(stack: StackInfo, header: str | None,
                                                 code: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{stack.api_url}/v1/files", headers=headers)
    error = assert_error(response, 401)
    assert error["type"] == "authentication_error" and error["code"] == code


def test_revoked_key_is_refused_on_the_next_request(tenant: TenantHandle) -> None:
    assert tenant.client.get("/v1/files").status_code == 200
    with admin_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.hash == hash_key(tenant.key))
                        .values(revoked_at=utcnow()))
    error = assert_error(tenant.client.get("/v1/files"), 401, contains="revoked")
    assert error["code"] == "revoked_api_key"


def test_only_a_hash_of_the_key_is_stored(tenant: TenantHandle) -> None:
    with admin_scope() as session:
        rows = session.query(ApiKey).filter(ApiKey.tenant_id == tenant.id).all()
    assert rows and all(tenant.key not in (r.hash, r.prefix) for r in rows)
    assert rows[0].hash == hash_key(tenant.key)


def test_admin_key_cannot_act_as_a_tenant(stack: StackInfo) -> None:
    with admin_scope() as session:
        secret = tenant_service.issue_key(session, None, admin=True).secret
    response = httpx.get(f"{stack.api_url}/v1/files",
                         headers={"Authorization": f"Bearer {secret}"})
    assert_error(response, 403, contains="admin keys")
