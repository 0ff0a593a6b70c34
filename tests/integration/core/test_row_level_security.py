"""PostgreSQL row-level security, the second wall behind every query's tenant filter: the
API and workers' role sees no tenant rows unless its transaction names a tenant, and then
only that tenant's."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from core.files.models import File
from core.jobs.models import FineTuningJob
from core.kit import ids
from core.kit.db import admin_scope, get_engine, session_scope, tenant_scope
from core.kit.migrate import ADMIN_ONLY_TABLES
from core.tenants.models import Tenant
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok

MODEL = "loramill/tiny-llama"


def tenant_tables() -> list[str]:
    """Every table with a tenant column, from the catalog (so a new table is covered)."""
    with admin_scope() as session:
        found = session.scalars(text(
            "select table_name from information_schema.columns where table_schema = 'public' "
            "and column_name = 'tenant_id' order by table_name")).all()
    return ["tenants", *found]


@pytest.fixture
def two_tenants_with_data(tenant: TenantHandle,
                          other_tenant: TenantHandle) -> tuple[TenantHandle, TenantHandle]:
    for t in (tenant, other_tenant):
        file_id = upload_ok(t.client)["id"]
        response = t.client.post("/v1/fine_tuning/jobs",
                                 json={"model": MODEL, "training_file": file_id})
        assert response.status_code == 200, response.text
    return tenant, other_tenant


def test_the_app_role_is_held_to_row_level_security(stack: StackInfo) -> None:
    with get_engine().connect() as conn:
        role = conn.execute(text(
            "select rolname, rolsuper, rolbypassrls from pg_roles "
            "where rolname = current_user")).one()
        assert role.rolname == "loramill_app"
        assert (role.rolsuper, role.rolbypassrls) == (False, False)
        # and it cannot become anyone else
        with pytest.raises(DBAPIError, match="permission denied"):
            conn.execute(text("set role postgres"))
    with psycopg.connect(stack.database_url) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute("select count(*) from audit_log")  # operators' table: no access


def test_the_app_role_appends_its_tenants_audit_entries_only(
        stack: StackInfo, tenant: TenantHandle, other_tenant: TenantHandle) -> None:
    """A tenant's own changes (an alias promoted) are audited in their transaction: the app
    role may insert entries of the transaction's tenant, never another's, and may neither
    read nor change any."""
    insert = ("insert into audit_log (id, created_at, actor, action, target_type, "
              "target_id, tenant_id) values (%s, now(), 'key:k', 'test', 'adapter', 'a', %s)")
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("select set_config('loramill.tenant_id', %s, true)", (tenant.id,))
        conn.execute(insert, (f"audit-{tenant.id[-12:]}", tenant.id))
        for statement, args in ((insert, (f"audit-{other_tenant.id[-12:]}", other_tenant.id)),
                                ("update audit_log set actor = 'x'", ()),
                                ("delete from audit_log", ())):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement, args)


def test_catalog_shows_rls_enabled_and_forced_on_every_tenant_table() -> None:
    tables = tenant_tables()
    assert {"tenants", "api_keys", "files", "fine_tuning_jobs", "job_events",
            "job_checkpoints", "adapters", "adapter_versions", "adapter_aliases",
            "idempotency_keys", "audit_log"} <= set(tables)
    with admin_scope() as session:
        rows = session.execute(text(
            "select c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "(select count(*) from pg_policy p where p.polrelid = c.oid) as policies "
            "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'public' and c.relname = any(:tables)"),
            {"tables": tables}).all()
    assert {r.relname for r in rows} == set(tables)
    for r in rows:
        assert r.relrowsecurity and r.relforcerowsecurity and r.policies >= 1, r


def test_without_the_tenant_setting_no_rows(
        two_tenants_with_data: tuple[TenantHandle, TenantHandle]) -> None:
    tables = tenant_tables()
    with admin_scope() as session:
        everywhere = {t: session.scalar(text(f"select count(*) from {t}")) for t in tables}
    assert everywhere["files"] and everywhere["fine_tuning_jobs"] and everywhere["job_events"]
    with session_scope() as session:  # the app role, no tenant named
        for table in tables:
            if table not in ADMIN_ONLY_TABLES:  # those it cannot read at all (above)
                assert session.scalar(text(f"select count(*) from {table}")) == 0, table


def test_with_the_setting_only_that_tenants_rows(
        two_tenants_with_data: tuple[TenantHandle, TenantHandle]) -> None:
    mine, theirs = two_tenants_with_data
    with tenant_scope(mine.id) as session:
        # no WHERE clause at all: the policy filters
        assert set(session.scalars(select(File.tenant_id))) == {mine.id}
        assert set(session.scalars(select(FineTuningJob.tenant_id))) == {mine.id}
        assert session.scalars(select(Tenant.id)).all() == [mine.id]
        assert session.scalar(select(func.count()).select_from(FineTuningJob).where(
            FineTuningJob.tenant_id == theirs.id)) == 0
    # writing a row for another tenant is refused by the policy's WITH CHECK
    with pytest.raises(DBAPIError, match="row-level security"), \
            tenant_scope(mine.id) as session:
        session.add(File(id=ids.new_id(ids.FILE), tenant_id=theirs.id, filename="x.jsonl",
                         purpose="fine-tune", bytes=1, object_key="x", status="processed",
                         sha256="0" * 64, example_count=1, format="chat"))
        session.flush()
    # nor can a tenant's transaction move its rows to another tenant
    with tenant_scope(mine.id) as session:
        job_id = session.scalars(select(FineTuningJob.id)).first()
    with pytest.raises(DBAPIError, match="row-level security"), \
            tenant_scope(mine.id) as session:
        session.execute(text("update fine_tuning_jobs set tenant_id = :other where id = :id"),
                        {"other": theirs.id, "id": job_id})


def test_the_setting_ends_with_the_transaction(tenant: TenantHandle) -> None:
    upload_ok(tenant.client)
    engine = get_engine()
    with engine.connect() as conn:
        conn.execute(select(func.set_config("loramill.tenant_id", tenant.id, True)))
        assert conn.scalar(text("select count(*) from files")) >= 1
        conn.commit()
        # the same pooled connection, a new transaction: nothing again
        assert conn.scalar(text("select count(*) from files")) == 0
