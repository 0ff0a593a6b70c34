"""A job with OpenAI's ``integrations: [{"type": "wandb", ...}]`` logs its metrics to a
Weights & Biases run (W&B's offline mode: the test stack sets LORAMILL_WANDB_MODE=offline
and LORAMILL_WANDB_DIR), read back from W&B's own transaction log."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.conftest import TEST_HOME, StackInfo, TenantHandle
from tests.e2e.conftest import wait_for
from tests.e2e.test_training import CAPITALS, chat, metrics
from tests.integration.api.helpers import assert_error, jsonl, upload_ok
from tests.wandb_records import history, run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

MODEL = "loramill/tiny-llama"


def test_a_job_logs_its_metrics_to_a_wandb_run(stack: StackInfo, tenant: TenantHandle) -> None:
    client = openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0)
    file_id = upload_ok(tenant.client, jsonl(*(chat(c, a) for c, a in CAPITALS)))["id"]
    wanted = {"type": "wandb", "wandb": {"project": "capitals", "tags": ["ci", "tiny"]}}
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=file_id, integrations=[wanted],  # type: ignore[list-item]
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 2}}})
    assert [i.model_dump(exclude_none=True) for i in job.integrations or []] == [
        {"type": "wandb", "wandb": {"project": "capitals", "tags": ["ci", "tiny"]}}]
    done = wait_for(tenant.client, job.id)
    assert done["status"] == "succeeded", done["error"]

    (log,) = Path(TEST_HOME / "wandb").glob(
        f"wandb/offline-run-*-{job.id.removeprefix('ftjob-')}/run-*.wandb")
    record = run(log)
    assert (record.project, record.display_name, list(record.tags)) == (
        "capitals", job.id, ["ci", "tiny"])
    rows = [r for r in history(log) if "train_loss" in r]
    reported = metrics(tenant.client, job.id)
    assert [(r["_step"], r["train_loss"]) for r in rows] == [
        (m["step"], m["train_loss"]) for m in reported]
    assert {"learning_rate", "tokens_per_second", "trained_tokens"} <= set(rows[-1])


def test_integrations_that_cannot_be_used_are_400(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    for integration, param in (({"type": "mlflow", "mlflow": {}}, "integrations"),
                               ({"type": "wandb", "wandb": {}}, "integrations.0.wandb.project"),
                               ({"type": "wandb", "wandb": {"project": "p", "x": 1}},
                                "integrations.0.wandb.x")):
        response = tenant.client.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_file": file_id, "integrations": [integration]})
        assert_error(response, 400, param=param)
    # the tenant's W&B key: set, shown by its last four characters, removed
    shown = tenant.client.put("/v1/integrations/wandb", json={"api_key": "x" * 36 + "abcd"})
    assert shown.json()["data"] == [{"object": "integration", "type": "wandb",
                                     "key_hint": "…abcd", "base_url": None}]
    assert tenant.client.delete("/v1/integrations/wandb").json()["data"] == []
    assert_error(tenant.client.delete("/v1/integrations/wandb"), 404)
    # and from the CLI
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "LORAMILL_BASE_URL": str(tenant.client.base_url),
           "LORAMILL_API_KEY": tenant.key, "WANDB_API_KEY": "y" * 36 + "wxyz"}
    for args, expected in ((["integrations", "wandb"], "W&B key set for your jobs"),
                           (["integrations", "list"], "wandb  key …wxyz")):
        done = subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == expected, done.stderr
