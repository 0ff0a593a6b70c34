"""The administration commands of ``loramill-server``, for any deployment (the local
stack's ``up``/``down``/``status`` are added by devstack/cli.py, the console script)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from core.kit.settings import Settings, load_settings


def current_settings() -> Settings:
    return load_settings()


def admin_session() -> Session:
    from core.kit.db import make_engine

    # the server CLI administers every tenant: the admin role
    return Session(make_engine(current_settings().require_admin_database_url()),
                   expire_on_commit=False)


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.kit import migrate
    from core.kit.storage import Storage, make_client

    settings = current_settings()
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
    from core.kit.errors import LoramillError
    from core.ops import service as ops

    with admin_session() as session:
        try:
            tenant = ops.create_tenant(session, _actor(), args.name, current_settings())
        except LoramillError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        issued = ops.issue_key(session, _actor(), tenant.id, name="initial")
        session.commit()
    print(f"tenant {tenant.id} ({tenant.name})", file=sys.stderr)
    print(issued.secret)
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    from core.ops import service as ops
    from core.tenants import repository as tenant_repo

    with admin_session() as session:
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
    from core.base_models import service as base_models
    from core.kit.errors import LoramillError

    with admin_session() as session:
        try:
            model = base_models.register(session, args.id, args.path, gpu_class=args.gpu_class,
                                         upload=args.upload)
        except LoramillError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        session.commit()
        print(f"registered {model.id}: {model.architecture}, {model.params:,} parameters, "
              f"context {model.context_length}, gpu class {model.gpu_class}, from "
              f"{model.source_uri}")
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """A base model on this machine, for a process that reads it from disk (a serving
    engine's init container): fetched from the bucket into the model cache, every file's
    sha256 checked, or its registered path; ``--link`` points a fixed path at it."""
    from core.base_models import service as base_models
    from core.base_models.models import BaseModel
    from core.kit.db import session_scope
    from core.kit.storage import ObjectMismatch, StorageUnavailable

    with session_scope() as session:  # base models are no tenant's: the app role reads them
        model = session.get(BaseModel, args.id)
        if model is None or not model.enabled:
            print(f"error: no base model {args.id!r} is registered", file=sys.stderr)
            return 2
        session.expunge(model)
    try:
        where = base_models.local_dir(model)
    except (StorageUnavailable, ObjectMismatch) as exc:
        print(f"error: could not fetch {args.id}: {exc}", file=sys.stderr)
        return 1
    if not (where / "config.json").is_file():
        print(f"error: {where} holds no config.json", file=sys.stderr)
        return 1
    if args.link:
        link = Path(args.link)
        staged = link.with_name(f".{link.name}.new")
        staged.unlink(missing_ok=True)
        staged.symlink_to(where.resolve(), target_is_directory=True)
        os.replace(staged, link)  # atomic: a reader sees the old model or the new one
    print(where)
    return 0


COMMANDS = """
    migrate                apply database migrations and create the S3 bucket
    create-tenant NAME     create a tenant and print its first key
    create-key             a new key for a tenant (--tenant NAME) or an admin key (--admin)
    register-model ID PATH register a base model directory (safetensors only); --upload
                           puts it in the bucket; PATH may be s3://<bucket>/<prefix>
    fetch-model ID         put a registered base model on this machine (sha256-checked);
                           prints its directory; --link PATH points PATH at it
"""
Command = tuple[str, Callable[[argparse.Namespace], int], str]  # name, function, help


def build_parser(description: str = COMMANDS,
                 more: tuple[Command, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loramill-server", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in more:
        sub.add_parser(name, help=text).set_defaults(fn=fn)
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
    p.add_argument("path", help="directory with config.json and *.safetensors, or "
                   "s3://<bucket>/<prefix> holding one")
    p.add_argument("--upload", action="store_true",
                   help="copy the directory to the bucket (models/<id>/): machines fetch "
                        "it from there, sha256-checked, instead of needing the path")
    p.add_argument("--gpu-class", help="override the GPU class derived from the size")
    p.set_defaults(fn=cmd_register_model)
    p = sub.add_parser("fetch-model", help="fetch a registered base model into the model "
                       "cache (LORAMILL_MODEL_CACHE_DIR); prints its directory")
    p.add_argument("id", help="the registered model id")
    p.add_argument("--link", help="make this path a symlink to the model's directory "
                   "(a fixed path for a serving engine's --model)")
    p.set_defaults(fn=cmd_fetch_model)
    return parser


def main(argv: list[str] | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    os.environ.setdefault("LORAMILL_HOME", str(current_settings().home))
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
