"""``loramill-server``: run and administer a loramill deployment.

    up / down / status     the local stack (embedded services + api, worker, scheduler)
    migrate                apply database migrations and create the S3 bucket
    create-tenant NAME     create a tenant and print its first key
    create-key             a new key for a tenant (--tenant NAME) or an admin key (--admin)
    register-model ID PATH register a base model directory (safetensors only)
"""

from __future__ import annotations

import argparse
import os
import sys

from sqlalchemy.orm import Session

from core.settings import Settings, load_settings, read_env_file

DEMO_TENANT = "demo"


def _settings() -> Settings:
    return load_settings()


def _session() -> Session:
    from core.db import make_engine

    # the server CLI administers every tenant: the admin role
    return Session(make_engine(_settings().require_admin_database_url()),
                   expire_on_commit=False)


def cmd_up(args: argparse.Namespace) -> int:
    from core.localstack import LocalStack, StackError

    settings = _settings()
    stack = LocalStack(settings)
    print(f"loramill local stack in {settings.home}")
    try:
        stack.up()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = load_settings()
    _ensure_demo(settings)
    _ensure_tiny_model(settings)
    print(f"\nAPI      {settings.api_url}\n"
          f"ops      {settings.api_url}/ops  (sign in with LORAMILL_ADMIN_KEY from dev.env)\n"
          f"metrics  {settings.api_url}/metrics\n"
          f"env      {settings.home / 'dev.env'}  "
          f"(source it: set -a; . {settings.home / 'dev.env'}; set +a)")
    return 0


def _ensure_demo(settings: Settings) -> None:
    """The demo tenant with a tenant key and an admin key, in dev.env (kept across ups)."""
    from core.repositories import tenants as tenant_repo
    from core.services import tenants as tenant_service

    dev_env = settings.home / "dev.env"
    existing = read_env_file(dev_env)
    with _session() as session:
        tenant = tenant_repo.get_by_name(session, DEMO_TENANT)
        if tenant is None:
            tenant = tenant_service.create_tenant(session, DEMO_TENANT, settings)
        api_key = existing.get("LORAMILL_API_KEY", "")
        if not tenant_service.key_is_valid(session, api_key):
            api_key = tenant_service.issue_key(session, tenant, name="demo").secret
        admin_key = existing.get("LORAMILL_ADMIN_KEY", "")
        if not tenant_service.key_is_valid(session, admin_key):
            admin_key = tenant_service.issue_key(session, None, admin=True, name="demo").secret
        session.commit()
    dev_env.write_text(
        f"LORAMILL_API_URL={settings.api_url}\n"
        f"LORAMILL_API_KEY={api_key}\n"
        f"LORAMILL_ADMIN_KEY={admin_key}\n"
    )


def _ensure_tiny_model(settings: Settings) -> None:
    """Generate and register the tiny base model (no model hub is reachable)."""
    from core.services import base_models

    try:
        from worker.training import tinymodel
    except ImportError:
        print("note: training packages not installed; skipping the tiny base model")
        return
    try:
        path = tinymodel.ensure(settings.models_dir / "tiny-llama")
    except ImportError as exc:
        print(f"note: cannot build the tiny base model ({exc}); install the 'train' extra")
        return
    with _session() as session:
        base_models.register(session, tinymodel.MODEL_ID, str(path), gpu_class="cpu")
        session.commit()
    print(f"model    {tinymodel.MODEL_ID} ({path})")


def cmd_down(args: argparse.Namespace) -> int:
    from core.localstack import LocalStack

    LocalStack(_settings()).down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from core.localstack import LocalStack

    pieces = LocalStack(_settings()).status()
    for piece in pieces:
        print(piece.line())
    return 1 if any(p.state == "crashed" for p in pieces) else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from core import migrate
    from core.storage import Storage, make_client

    settings = _settings()
    admin_url = settings.require_admin_database_url()
    migrate.upgrade(admin_url)
    print("database is at the latest migration")
    role = migrate.ensure_app_role(admin_url, settings.require_database_url())
    print(f"app role {role} is ready (row-level security applies to it)" if role else
          "warning: LORAMILL_DATABASE_URL and LORAMILL_ADMIN_DATABASE_URL use one role, so "
          "row-level security is not a second wall; see docs/security.md")
    Storage(make_client(settings), settings.s3_bucket).ensure_bucket()
    print(f"bucket {settings.s3_bucket} is ready")
    return 0


def _actor() -> str:
    """The audit log's name for whoever runs this command."""
    import getpass

    return f"cli:{getpass.getuser()}"


def cmd_create_tenant(args: argparse.Namespace) -> int:
    from core.errors import LoramillError
    from core.services import ops

    with _session() as session:
        try:
            tenant = ops.create_tenant(session, _actor(), args.name, _settings())
        except LoramillError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        issued = ops.issue_key(session, _actor(), tenant.id, name="initial")
        session.commit()
    print(f"tenant {tenant.id} ({tenant.name})", file=sys.stderr)
    print(issued.secret)
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    from core.repositories import tenants as tenant_repo
    from core.services import ops

    with _session() as session:
        tenant = None
        if not args.admin:
            if not args.tenant:
                print("error: give --tenant NAME or --admin", file=sys.stderr)
                return 2
            tenant = tenant_repo.get_by_name(session, args.tenant)
            if tenant is None:
                print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
                return 2
        issued = ops.issue_key(session, _actor(), tenant.id if tenant else None,
                               name=args.name)
        session.commit()
    print(issued.secret)
    return 0


def cmd_register_model(args: argparse.Namespace) -> int:
    from core.errors import LoramillError
    from core.services import base_models

    with _session() as session:
        try:
            model = base_models.register(session, args.id, args.path, gpu_class=args.gpu_class)
        except LoramillError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        session.commit()
        print(f"registered {model.id}: {model.architecture}, {model.params:,} parameters, "
              f"context {model.context_length}, gpu class {model.gpu_class}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loramill-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack").set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="show each process of the local stack").set_defaults(
        fn=cmd_status)
    sub.add_parser("migrate", help="apply database migrations, create the bucket").set_defaults(
        fn=cmd_migrate)
    p = sub.add_parser("create-tenant", help="create a tenant; prints its first key")
    p.add_argument("name")
    p.set_defaults(fn=cmd_create_tenant)
    p = sub.add_parser("create-key", help="create an API key; prints it once")
    p.add_argument("--tenant", help="tenant name")
    p.add_argument("--admin", action="store_true", help="an operator key (admin scope)")
    p.add_argument("--name", default="", help="a label for the key")
    p.set_defaults(fn=cmd_create_key)
    p = sub.add_parser("register-model", help="register a base model directory")
    p.add_argument("id", help="model id, e.g. acme/llama-3-8b")
    p.add_argument("path", help="directory with config.json and *.safetensors")
    p.add_argument("--gpu-class", help="override the GPU class derived from the size")
    p.set_defaults(fn=cmd_register_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("LORAMILL_HOME", str(_settings().home))
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
