"""Estimates and evaluation settings from the SDK and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import loramill

from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, jsonl

MODEL = "loramill/tiny-llama"


def test_sdk_estimates_and_creates_with_evaluation(stack: StackInfo, tenant: TenantHandle,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(*[CHAT] * 8))
    client = loramill.Client(api_key=tenant.key, base_url=stack.api_url)
    f = client.files.create(path)
    found = client.fine_tuning.jobs.estimate(model=MODEL, training_file=f.id, n_epochs=2,
                                             batch_size=4)
    assert (found.examples, found.total_steps, found.gpu_class) == (8, 4, "cpu")
    assert found.tokens["counted"] == "exact" and found.tokens["total"] > 0
    assert found.estimated_seconds and found.durations[0]["gpu_class"] == "cpu"
    assert list(client.fine_tuning.jobs.list()) == []  # nothing queued
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id,
                                         validation_file=f.id, eval_every=2,
                                         early_stopping_patience=3, publish_checkpoint="best")
    assert job.hyperparameters["eval_every"] == 2
    assert job.hyperparameters["publish_checkpoint"] == "best"
    client.fine_tuning.jobs.cancel(job.id)


def test_cli_estimate(stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(*[CHAT] * 8))
    env = {**os.environ, "LORAMILL_BASE_URL": stack.api_url, "LORAMILL_API_KEY": tenant.key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    shown = cli("jobs", "estimate", "--model", MODEL, "--training-file", str(path),
                "--epochs", "2", "--batch-size", "4")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("8 examples, ") and "4 steps" in shown.stdout
    assert "GPU class cpu" in shown.stdout
    assert "(nominal)" in shown.stdout or "(measured" in shown.stdout
    as_json = cli("--json", "jobs", "estimate", "--model", MODEL, "--training-file",
                  str(path))
    assert json.loads(as_json.stdout)["object"] == "fine_tuning.estimate"
    refused = cli("jobs", "estimate", "--model", MODEL, "--training-file", str(path),
                  "--publish-best")
    assert refused.returncode == 2 and "validation_file" in refused.stderr
    assert "Traceback" not in refused.stderr
