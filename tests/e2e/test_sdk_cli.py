"""The SDK through a whole job, and every exit code of the CLI, on the live stack."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import loramill
import pytest

from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
MODEL = "loramill/tiny-llama"


def cli(tenant: TenantHandle, stack: StackInfo, *args: str,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAMILL_API_KEY": tenant.key, "LORAMILL_BASE_URL": stack.api_url}
    return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_sdk_runs_a_whole_job(stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    client = loramill.Client(api_key=tenant.key, base_url=stack.api_url)
    file = client.files.create(write(tmp_path, "t.jsonl", jsonl(CHAT, CHAT)))
    assert file.status == "processed" and file.example_count == 2
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=file.id, n_epochs=2,
                                         suffix="sdk", seed=3)
    seen: list[Any] = []
    done = client.fine_tuning.jobs.wait(job.id, timeout=180, poll=0.5, on_event=seen.append)
    assert done.status == "succeeded" and done.fine_tuned_model
    assert any(e.type == "metrics" for e in seen)
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
    assert list(client.fine_tuning.jobs.checkpoints(job.id))
    assert done.fine_tuned_model in [m.id for m in client.models.list()]

    (adapter,) = list(client.adapters.list())
    (version,) = list(client.adapters.versions(adapter.name))
    out = client.adapters.download(adapter.name, version.version, tmp_path / "adapter")
    for f in version.files:
        assert hashlib.sha256((out / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert client.files.content(file.id) == jsonl(CHAT, CHAT)
    # the adapter travels: its config names the registered base model, not a worker's
    # path, and its card says what it is, what it was trained on and how to use it
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MODEL
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    for needed in (f"base_model: {MODEL}", done.fine_tuned_model,
                   manifest["dataset_sha256"], "PeftModel.from_pretrained",
                   "chat.completions.create", "| n_epochs | 2 |", "| seed | 3 |",
                   f"{manifest['metrics']['train_loss']:.6g}"):
        assert needed in card, needed
    assert "[More Information Needed]" not in card  # not PEFT's empty template


def test_cli_exit_codes(stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    good = write(tmp_path, "good.jsonl", jsonl(CHAT))
    # 0: a job that succeeds; --json gives the job object
    ok = cli(tenant, stack, "jobs", "create", "--model", MODEL, "--training-file", good,
             "--epochs", "1", "--wait", "--json")
    assert ok.returncode == 0, ok.stderr
    done = json.loads(ok.stdout)  # stdout: the job object alone, progress on stderr
    assert done["status"] == "succeeded"
    assert f"{done['id']}: succeeded (was " in ok.stderr  # a status line, timestamped
    published = done["published"]
    assert published["model"] == done["fine_tuned_model"] and published["version"] >= 1
    # the version that job published, by the job: not whatever is latest
    fetched = cli(tenant, stack, "adapters", "download", published["adapter"], "--job",
                  done["id"], "--dest", str(tmp_path / "by-job"))
    assert fetched.returncode == 0, fetched.stderr
    assert f"v{published['version']}" in fetched.stdout
    assert (tmp_path / "by-job" / "adapter_model.safetensors").is_file()
    models = json.loads(cli(tenant, stack, "models", "list", "--json").stdout)
    tuned = next(m for m in models if m["id"] == done["fine_tuned_model"])
    assert (tuned["adapter"], tuned["adapter_version"]) == (published["adapter"],
                                                            published["version"])

    # 2: an invalid local dataset (first problems by line), bad usage, an API 4xx
    bad = write(tmp_path, "bad.jsonl", jsonl(CHAT) + b"not json\n")
    refused = cli(tenant, stack, "files", "upload", bad)
    assert refused.returncode == 2 and "line 2: not valid JSON" in refused.stderr
    assert cli(tenant, stack, "jobs", "create").returncode == 2
    unknown = cli(tenant, stack, "jobs", "create", "--model", "no/such", "--training-file",
                  good)
    assert unknown.returncode == 2 and "model_not_found" in unknown.stderr

    # 1: a job that fails prints its error (the answer lies beyond the model's context)
    silent = write(tmp_path, "silent.jsonl", jsonl({"messages": [
        {"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "x"}]}))
    failed = cli(tenant, stack, "jobs", "create", "--model", MODEL, "--training-file", silent,
                 "--wait")
    assert failed.returncode == 1 and "no_trainable_tokens" in failed.stderr

    # 4: timed out waiting; 3: cancelled
    long_data = write(tmp_path, "long.jsonl", jsonl(*[CHAT] * 30))
    created = cli(tenant, stack, "--json", "jobs", "create", "--model", MODEL,
                  "--training-file", long_data, "--epochs", "50", "--batch-size", "1")
    job_id = json.loads(created.stdout)["id"]
    waited = cli(tenant, stack, "jobs", "wait", job_id, "--timeout", "1")
    assert waited.returncode == 4 and "timed out" in waited.stderr
    assert cli(tenant, stack, "jobs", "cancel", job_id).returncode == 0
    deadline = time.monotonic() + 30
    while (cancelled := cli(tenant, stack, "jobs", "wait", job_id, "--timeout", "5")
           ).returncode == 4:
        assert time.monotonic() < deadline
    assert cancelled.returncode == 3 and "cancelled" in cancelled.stderr

    # 5: the server cannot be reached
    env_less = subprocess.run(
        [sys.executable, "-m", "loramill.cli", "--base-url", "http://127.0.0.1:1",
         "--api-key", tenant.key, "files", "list"], capture_output=True, text=True,
        timeout=120)
    assert env_less.returncode == 5 and "cannot reach" in env_less.stderr

    # listing and events work for the jobs above
    assert job_id in cli(tenant, stack, "jobs", "list").stdout
    events = cli(tenant, stack, "jobs", "events", job_id, "--follow")
    assert events.returncode == 3 and "Job cancelled" in events.stdout  # as `jobs wait`

    # 7: a download the store refuses (here: an object gone), said in one line, no .part
    from core.adapters.models import AdapterVersion
    from core.kit.db import admin_scope
    from core.kit.storage import get_storage

    with admin_scope() as session:
        row = session.query(AdapterVersion).filter_by(job_id=done["id"]).one()
        prefix = row.object_prefix
    get_storage().delete(prefix + "adapter_model.safetensors")
    broken = cli(tenant, stack, "adapters", "download", published["adapter"], "--version",
                 str(published["version"]), "--dest", str(tmp_path / "broken"))
    assert broken.returncode == 7, broken.stderr
    assert broken.stderr.startswith("download failed: adapter_model.safetensors")
    assert "Traceback" not in broken.stderr
    assert not list((tmp_path / "broken").glob("*.part"))
