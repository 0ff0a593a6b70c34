"""Run Alembic migrations from code (the CLI, the local stack and tests use this), and
set up the app role that row-level security applies to."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import make_url

import migrations

log = logging.getLogger("loramill.migrate")

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


# Tables the app role must not touch: Alembic's bookkeeping and the operators' audit log.
ADMIN_ONLY_TABLES = ("alembic_version", "audit_log")
# ... of which the app role may append its tenant's own entries (a tenant's promotion of
# an alias is audited in its own transaction), never read or change any
APPEND_ONLY_TABLES = ("audit_log",)
# Functions the app role may call (SECURITY DEFINER: they answer across tenants, and only
# what they are written to answer)
APP_FUNCTIONS = ("loramill_worker_demand(text)",)
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ensure_app_role(admin_url: str, app_url: str) -> str | None:
    """Make the role that ``app_url`` logs in as fit for row-level security: created if
    missing (with the URL's password), never a superuser or BYPASSRLS, allowed to read and
    write the service's tables but not the admin-only ones. Returns the role's name, or
    None when both URLs log in as the same role (then RLS is no second wall: say so)."""
    app, admin = make_url(app_url), make_url(admin_url)
    if app.username == admin.username:
        log.warning("LORAMILL_DATABASE_URL and LORAMILL_ADMIN_DATABASE_URL use the same role "
                    "%r: row-level security is not a second wall", app.username)
        return None
    role = app.username or ""
    if not _ROLE_NAME.match(role):
        raise ValueError(f"app database role {role!r}: use lower-case letters, digits, _")
    ident = sql.Identifier(role)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("select rolsuper, rolbypassrls from pg_roles where rolname = %s",
                             (role,)).fetchone()
        if found is None:
            create = sql.SQL("create role {} login nosuperuser nobypassrls nocreatedb "
                             "nocreaterole").format(ident)
            if app.password:
                create += sql.SQL(" password {}").format(sql.Literal(app.password))
            conn.execute(create)
        elif any(found):
            raise RuntimeError(f"database role {role!r} is a superuser or has BYPASSRLS: "
                               "the API and workers need a role that row-level security "
                               "applies to")
        database = conn.execute("select current_database()").fetchone()
        assert database is not None
        for statement in (
            "grant connect on database {db} to {role}",
            "grant usage on schema public to {role}",
            "grant select, insert, update, delete on all tables in schema public to {role}",
            "grant usage, select on all sequences in schema public to {role}",
        ):
            conn.execute(sql.SQL(statement).format(db=sql.Identifier(database[0]), role=ident))
        for table in ADMIN_ONLY_TABLES:
            conn.execute(sql.SQL("revoke all on {} from {}").format(sql.Identifier(table),
                                                                    ident))
        for table in APPEND_ONLY_TABLES:
            conn.execute(sql.SQL("grant insert on {} to {}").format(sql.Identifier(table),
                                                                    ident))
        for function in APP_FUNCTIONS:  # names from the constant above, not from input
            conn.execute(sql.SQL("grant execute on function {} to {}").format(
                sql.SQL(function), ident))
    return role
