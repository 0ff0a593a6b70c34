"""DPO jobs from the SDK and the CLI: a preference file checked locally with the server's
limits, uploaded, and a dpo job created with its beta."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import loramill

from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import jsonl

MODEL = "loramill/tiny-llama"
PAIR = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "Lyon."}]}


def test_sdk_creates_a_dpo_job(stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(jsonl(PAIR, PAIR))
    client = loramill.Client(api_key=tenant.key, base_url=stack.api_url)
    report = loramill.datasets.validate(path, client.files.limits())
    assert report.ok and report.format == "preference"
    f = client.files.create(path)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method="dpo",
                                         beta=0.3, n_epochs=1)
    assert job.raw["method"]["type"] == "dpo"
    assert job.hyperparameters["beta"] == 0.3
    client.fine_tuning.jobs.cancel(job.id)


def test_cli_creates_a_dpo_job_and_refuses_a_supervised_one(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(jsonl(PAIR))
    env = {**os.environ, "LORAMILL_BASE_URL": stack.api_url, "LORAMILL_API_KEY": tenant.key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    created = cli("--json", "jobs", "create", "--model", MODEL, "--training-file", str(path),
                  "--method", "dpo", "--beta", "0.25")
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        **job["hyperparameters"], "beta": 0.25}}}
    assert cli("jobs", "cancel", job["id"]).returncode == 0

    refused = cli("jobs", "create", "--model", MODEL, "--training-file", str(path))
    assert refused.returncode == 2
    assert "is preference data, which trains a dpo job" in refused.stderr
