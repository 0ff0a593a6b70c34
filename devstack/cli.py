"""``loramill-server``: run a local stack, and administer any loramill deployment.

    up / down / status     the local stack (embedded services + api, worker, scheduler)
"""

from __future__ import annotations

import argparse
import sys

from core import cli
from core.kit.settings import Settings, load_settings, read_env_file

DEMO_TENANT = "demo"


def cmd_up(args: argparse.Namespace) -> int:
    from devstack.stack import LocalStack, StackError

    settings = cli.current_settings()
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
    stack.start_engines(_model_paths(settings))
    print(f"\nAPI      {settings.api_url}\n"
          f"ops      {settings.api_url}/ops  (sign in with LORAMILL_ADMIN_KEY from dev.env)\n"
          f"metrics  {settings.api_url}/metrics\n"
          f"env      {settings.home / 'dev.env'}  "
          f"(source it: set -a; . {settings.home / 'dev.env'}; set +a)")
    return 0


def _ensure_demo(settings: Settings) -> None:
    """The demo tenant with a tenant key and an admin key, in dev.env (kept across ups)."""
    from core.tenants import repository as tenant_repo
    from core.tenants import service as tenant_service

    dev_env = settings.home / "dev.env"
    existing = read_env_file(dev_env)
    with cli.admin_session() as session:
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
    from core.base_models import service as base_models

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
    with cli.admin_session() as session:
        base_models.register(session, tinymodel.MODEL_ID, str(path), gpu_class="cpu")
        session.commit()
    print(f"model    {tinymodel.MODEL_ID} ({path})")


def _model_paths(settings: Settings) -> dict[str, str]:
    """Where the served base models' weights are on this machine: their registered paths,
    or for models in the bucket the local cache (fetched, sha256-checked, once)."""
    from core.base_models import repository as model_repo
    from core.base_models.service import local_dir

    with cli.admin_session() as session:
        rows = [model_repo.get(session, m) for m in settings.serving_models]
    return {row.id: str(local_dir(row)) for row in rows if row is not None}


def cmd_down(args: argparse.Namespace) -> int:
    from devstack.stack import LocalStack

    LocalStack(cli.current_settings()).down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from devstack.stack import LocalStack

    pieces = LocalStack(cli.current_settings()).status()
    for piece in pieces:
        print(piece.line())
    return 1 if any(p.state == "crashed" for p in pieces) else 0


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser(f"{__doc__}{cli.COMMANDS}", more=(
        ("up", cmd_up, "start the local stack"), ("down", cmd_down, "stop the local stack"),
        ("status", cmd_status, "show each process of the local stack")))


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
