"""The local stack through its CLI, as a user runs it: up, status, a crashed piece is
reported and restarted, up twice is harmless, down stops everything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from core.kit.settings import read_env_file
from devstack.stack import cpu_lacks_vllm_instructions, find_ports
from tests.conftest import ROOT

HOME = ROOT / ".loramill-test" / "cli-stack"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", *args], env=env, capture_output=True, text=True,
        timeout=300, cwd=ROOT,
    )


@pytest.fixture
def env() -> dict[str, str]:
    shutil.rmtree(HOME, ignore_errors=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAMILL_")}
    return {**base, "LORAMILL_HOME": str(HOME), "LORAMILL_API_PORT": str(find_ports(1, 33000)[0])}


def test_up_status_crash_restart_down(env: dict[str, str]) -> None:
    lacking = cpu_lacks_vllm_instructions()
    try:
        first = cli("up", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "/ops" in first.stdout and "/metrics" in first.stdout
        dev = read_env_file(HOME / "dev.env")
        assert set(dev) == {"LORAMILL_API_URL", "LORAMILL_API_KEY", "LORAMILL_ADMIN_KEY"}
        headers = {"Authorization": f"Bearer {dev['LORAMILL_API_KEY']}"}
        models = httpx.get(f"{dev['LORAMILL_API_URL']}/v1/models", headers=headers).json()
        assert "loramill/tiny-llama" in [m["id"] for m in models["data"]]
        # the serving engine (vLLM, its own venv) is part of the stack: `up` waits for it;
        # on a CPU vLLM cannot run on, the rest works and inference says why with a 503
        answer = httpx.post(f"{dev['LORAMILL_API_URL']}/v1/completions", headers=headers,
                            json={"model": "loramill/tiny-llama", "prompt": "Paris",
                                  "max_tokens": 2}, timeout=60)
        if lacking:
            assert f"engine-tiny-llama failed    {lacking}" in first.stdout, first.stdout
            assert answer.status_code == 503 and lacking in answer.json()["error"]["message"]
        else:
            assert "engine-tiny-llama started" in first.stdout, first.stdout
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] == 2

        status = cli("status", env=env)
        assert status.returncode == 0
        for piece in ("postgres", "redis", "s3", "api", "worker", "scheduler",
                      "engine-tiny-llama"):
            assert f"{piece}" in status.stdout and "stopped" not in status.stdout
        assert ("engine-tiny-llama unavailable" in status.stdout) == bool(lacking)

        # administration through the same CLI
        created = cli("create-tenant", "acme", env=env)
        assert created.returncode == 0 and created.stdout.strip().startswith("lm-sk-")
        acme = {"Authorization": f"Bearer {created.stdout.strip()}"}
        assert httpx.get(f"{dev['LORAMILL_API_URL']}/v1/files", headers=acme).status_code == 200
        assert cli("create-tenant", "acme", env=env).returncode == 2  # names are unique
        acme_id = created.stderr.split()[1]
        operator = {"Authorization": f"Bearer {dev['LORAMILL_ADMIN_KEY']}"}
        trail = httpx.get(f"{dev['LORAMILL_API_URL']}/v1/admin/audit_log", headers=operator,
                          params={"target_id": acme_id}).json()["data"]
        assert [(e["action"], e["actor"].split(":")[0]) for e in trail] == [
            ("tenant.create", "cli")]
        pickled = HOME / "pickled-model"
        pickled.mkdir()
        (pickled / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
        refused = cli("register-model", "evil/pickle", str(pickled), env=env)
        assert refused.returncode == 2 and "pytorch_model.bin" in refused.stderr
        assert "only safetensors" in refused.stderr

        # up twice: nothing restarted, same keys
        again = cli("up", env=env)
        assert again.returncode == 0 and "api        running   (already)" in again.stdout
        assert ("engine-tiny-llama running   (already)" in again.stdout) != bool(lacking)
        assert read_env_file(HOME / "dev.env") == dev

        # a crashed worker is reported, then restarted by up
        worker_pid = int((HOME / "run" / "worker.pid").read_text())
        os.killpg(worker_pid, signal.SIGKILL)
        time.sleep(1)
        crashed = cli("status", env=env)
        assert crashed.returncode == 1 and "worker     crashed" in crashed.stdout
        restarted = cli("up", env=env)
        assert "worker     crashed   restarting" in restarted.stdout
        assert cli("status", env=env).returncode == 0

        # a worker stopped with SIGTERM (a deploy, an operator) is stopped, not crashed
        worker_pid = int((HOME / "run" / "worker.pid").read_text())
        deadline = time.monotonic() + 60  # the restarted worker has said it is ready
        while (HOME / "logs" / "worker.log").read_text().count(" ready.") < 2:
            assert time.monotonic() < deadline, "the restarted worker never got ready"
            time.sleep(0.5)
        os.kill(worker_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "worker     stopped" not in (stopped := cli("status", env=env)).stdout:
            assert time.monotonic() < deadline, stopped.stdout
            time.sleep(0.5)
        assert stopped.returncode == 0 and "exited cleanly" in stopped.stdout
        assert "worker     started" in cli("up", env=env).stdout

        # up again with the stack's own URLs exported (set -a; . stack.env): still ours
        stack_env = (HOME / "stack.env").read_text()
        exported = cli("up", env={**env, **read_env_file(HOME / "stack.env")})
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert "external" not in exported.stdout
        assert (HOME / "stack.env").read_text() == stack_env
    finally:
        down = cli("down", env=env)
    assert down.returncode == 0
    status = cli("status", env=env)
    assert status.stdout.count("stopped") == (6 if lacking else 7), status.stdout
    with pytest.raises(httpx.ConnectError):
        httpx.get(dev["LORAMILL_API_URL"] + "/healthz", timeout=2)
