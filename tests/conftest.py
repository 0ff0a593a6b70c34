"""Test fixtures: one real local stack per test session (PostgreSQL, Redis, S3 and the
API as a uvicorn process), under ``.loramill-test/``. Services whose URLs are set in the
environment (LORAMILL_DATABASE_URL, ...) are used instead of embedded ones.

Tests isolate by tenant: each test makes its own tenants, so nothing is shared and no
rollback tricks are needed; that is also how the service is used.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
TEST_HOME = ROOT / ".loramill-test"


@dataclass
class StackInfo:
    api_url: str
    database_url: str  # the app role's: row-level security applies
    admin_database_url: str  # the superuser's: migrations, cross-tenant setup in tests
    redis_url: str
    s3_endpoint_url: str


@contextmanager
def api_process(app: str = "api.app:app", *, args: tuple[str, ...] = (),
                env: dict[str, str] | None = None, log: Path | None = None,
                ready: str = "/healthz") -> Iterator[str]:
    """An extra API server (uvicorn) of the tests' own, on a free port; its URL once it
    answers ``ready``, stopped (its whole process group) afterwards."""
    from devstack.stack import find_ports

    port = find_ports(1, 34000 + os.getpid() % 1000)[0]
    with (log.open("wb") if log else open(os.devnull, "wb")) as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + ready, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (
                f"{app} did not start" + (f": {log.read_text()}" if log else ""))
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def with_database(url: str, name: str) -> str:
    """The same server URL (and role), for database ``name``."""
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


def _prepare_env() -> None:
    from devstack.stack import find_ports

    os.environ["LORAMILL_HOME"] = str(TEST_HOME)
    # a per-process start port, so two test runs on one machine do not race for one
    os.environ.setdefault("LORAMILL_API_PORT", str(find_ports(1, 31000 + os.getpid() % 2000)[0]))
    os.environ.setdefault("LORAMILL_MAX_LINE_BYTES", str(64 * 1024))
    # Fast failure detection, so the chaos tests finish in seconds.
    for name, value in (("HEARTBEAT_SECONDS", "1"), ("LEASE_TIMEOUT_SECONDS", "6"),
                        ("SWEEP_INTERVAL_SECONDS", "1"), ("DISPATCH_INTERVAL_SECONDS", "0.5"),
                        ("WORKER_TIMEOUT_SECONDS", "5"), ("DISPATCH_TIMEOUT_SECONDS", "20"),
                        # a crashed request's Idempotency-Key is free after this
                        ("IDEMPOTENCY_LEASE_SECONDS", "3"),
                        ("STORAGE_JANITOR_SECONDS", "2"),
                        # webhook receivers in tests listen on loopback; retries come fast
                        ("WEBHOOK_ALLOWED_HOSTS", '["127.0.0.1"]'),
                        ("WEBHOOK_RETRY_SECONDS", "0.3"), ("WEBHOOK_MAX_ATTEMPTS", "3"),
                        # W&B runs are written to disk only, where the tests read them
                        ("WANDB_MODE", "offline"), ("WANDB_DIR", str(TEST_HOME / "wandb"))):
        os.environ.setdefault(f"LORAMILL_{name}", value)


KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder, so ``-m "not e2e"`` (make test-fast) selects."""
    for item in items:
        parts = Path(str(item.path)).relative_to(ROOT).parts
        if len(parts) > 1 and parts[1] in KINDS:
            item.add_marker(getattr(pytest.mark, parts[1]))


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    _prepare_env()
    from core.kit import settings as settings_module
    from devstack.stack import LocalStack

    settings_module.get_settings.cache_clear()
    old = LocalStack(settings_module.load_settings())
    old.down(log=lambda _: None)
    shutil.rmtree(TEST_HOME, ignore_errors=True)
    stack = LocalStack(settings_module.load_settings())
    try:
        stack.up(pieces=("postgres", "redis", "s3", "api"), log=lambda _: None)
    except BaseException:
        stack.down(log=lambda _: None)  # leave no half-started servers behind
        raise
    settings_module.get_settings.cache_clear()
    settings = settings_module.get_settings()
    _register_tiny_model(settings)
    try:
        yield StackInfo(
            api_url=settings.api_url, database_url=settings.require_database_url(),
            admin_database_url=settings.require_admin_database_url(),
            redis_url=settings.require_redis_url(),
            s3_endpoint_url=settings.require_s3_endpoint(),
        )
    finally:
        stack.down(log=lambda _: None)


def _register_tiny_model(settings: object) -> None:
    from core.base_models import service as base_models
    from core.kit.db import admin_scope
    from worker.training import tinymodel

    path = tinymodel.ensure(ROOT / ".loramill-test-models" / "tiny-llama")
    with admin_scope() as session:
        base_models.register(session, tinymodel.MODEL_ID, str(path), gpu_class="cpu")


@dataclass
class TenantHandle:
    id: str
    name: str
    key: str
    client: httpx.Client


def make_tenant(stack: StackInfo, name: str | None = None) -> TenantHandle:
    from core.kit.db import admin_scope
    from core.kit.settings import get_settings
    from core.tenants import service as tenant_service

    name = name or f"t-{uuid.uuid4().hex[:10]}"
    with admin_scope() as session:
        tenant = tenant_service.create_tenant(session, name, get_settings())
        issued = tenant_service.issue_key(session, tenant)
        tenant_id, secret = tenant.id, issued.secret
    client = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )
    return TenantHandle(id=tenant_id, name=name, key=secret, client=client)


@pytest.fixture
def tenant(stack: StackInfo) -> Iterator[TenantHandle]:
    handle = make_tenant(stack)
    yield handle
    handle.client.close()


@pytest.fixture
def other_tenant(stack: StackInfo) -> Iterator[TenantHandle]:
    handle = make_tenant(stack)
    yield handle
    handle.client.close()


@dataclass
class AdminHandle:
    key_id: str
    key: str
    client: httpx.Client


@pytest.fixture
def admin(stack: StackInfo) -> Iterator[AdminHandle]:
    """An operator: an admin key (no tenant) and a client that sends it."""
    from core.kit.db import admin_scope
    from core.tenants import service as tenant_service

    with admin_scope() as session:
        issued = tenant_service.issue_key(session, None, admin=True, name="test operator")
        key_id, secret = issued.row.id, issued.secret
    client = httpx.Client(base_url=stack.api_url, timeout=60,
                          headers={"Authorization": f"Bearer {secret}"})
    yield AdminHandle(key_id=key_id, key=secret, client=client)
    client.close()



@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (tests/webhook_receiver.py), closed after the test."""
    found = Receiver()
    yield found
    found.close()


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll ``check`` until it returns something true, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)
