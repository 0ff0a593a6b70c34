"""Continuing fine-tuning (OpenAI's semantics: ``model`` is one of the tenant's fine-tuned
or checkpoint models) and checkpoint models as first-class models: retrieved, downloaded
as adapters, continued from. A real worker trains the tiny model in 4-bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.checkpoints import repository as checkpoint_repo
from core.kit.db import admin_scope
from core.kit.storage import get_storage
from tests.conftest import StackInfo, TenantHandle
from tests.e2e.conftest import all_events, wait_for
from tests.e2e.test_training import CAPITALS, chat, metrics, start
from tests.integration.api.helpers import assert_error, jsonl, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

DATA = jsonl(*(chat(c, a) for c, a in CAPITALS))


def hyper(epochs: int) -> dict[str, object]:
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": epochs, "batch_size": 2, "learning_rate_multiplier": 10}}}}


def first_loss(client: httpx.Client, job_id: str) -> float:
    loss: float = metrics(client, job_id)[0]["train_loss"]
    return loss


def test_a_job_continues_from_a_fine_tuned_or_checkpoint_model(
        stack: StackInfo, tenant: TenantHandle, other_tenant: TenantHandle,
        tmp_path: Path) -> None:
    parent = wait_for(tenant.client, start(tenant, DATA, suffix="capitals", **hyper(12))["id"])
    assert parent["status"] == "succeeded", parent["error"]
    parent_curve = [p["train_loss"] for p in metrics(tenant.client, parent["id"])]
    ft = parent["fine_tuned_model"]
    checkpoints = tenant.client.get(f"/v1/fine_tuning/jobs/{parent['id']}/checkpoints").json()
    ckpt = checkpoints["data"][0]  # the latest: most of the way
    ckpt_model = ckpt["fine_tuned_model_checkpoint"]

    # a checkpoint model is a model: retrieved, downloaded as an adapter (sha256 checked)
    found = tenant.client.get(f"/v1/models/{ckpt_model}").json()
    assert found["checkpoint_step"] == ckpt["step_number"]
    assert found["fine_tuning_job_id"] == parent["id"]
    from loramill import Client

    with Client(api_key=tenant.key, base_url=stack.api_url) as sdk:
        local = sdk.models.download(ckpt_model, tmp_path / "ckpt")
        assert sorted(p.name for p in local.iterdir()) == ["adapter_config.json",
                                                           "adapter_model.safetensors"]
        assert sdk.models.retrieve(ckpt_model).checkpoint_step == ckpt["step_number"]
        assert {p.name for p in sdk.models.download(ft, tmp_path / "ft").iterdir()} >= {
            "adapter_config.json", "adapter_model.safetensors", "manifest.json"}
    assert_error(other_tenant.client.get(f"/v1/models/{ckpt_model}/download"), 404)
    assert_error(tenant.client.get("/v1/models/loramill/tiny-llama/download"), 400,
                 code="not_an_adapter")

    # what a continued job cannot be: another tenant's parent, another LoRA shape
    train = upload_ok(tenant.client, DATA)["id"]
    foreign = other_tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": ft, "training_file": upload_ok(other_tenant.client, DATA)["id"]})
    assert_error(foreign, 400, param="model", code="model_not_found")
    mismatch = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": ft, "training_file": train, "lora": {"r": 8}})
    assert_error(mismatch, 400, param="lora.r", code="lora_mismatch")

    # from the fine-tuned model: it starts where the parent ended, and publishes the
    # adapter's next version with its lineage
    # (through the official client: OpenAI's way of continuing a fine-tuned model)
    import openai

    client = openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0)
    child: dict[str, Any] = client.fine_tuning.jobs.create(
        model=ft, training_file=upload_ok(tenant.client, DATA)["id"], seed=7,
        method=hyper(1)["method"],  # type: ignore[arg-type]
        extra_body={"lora": {"dropout": 0.0}}).to_dict()
    assert child["model"] == ft and child["base_model"] == "loramill/tiny-llama"
    assert child["parent"] == {"model": ft, "job_id": parent["id"], "adapter": "capitals",
                               "adapter_version": 1, "checkpoint_step": None}
    assert child["lora"]["r"] == 32 and child["lora"]["dropout"] == 0.0
    # from the checkpoint model
    from_ckpt = start(tenant, DATA, model=ckpt_model, suffix="from-ckpt", **hyper(1))
    assert from_ckpt["parent"]["checkpoint_step"] == ckpt["step_number"]
    # from scratch, the same data and settings: the baseline both are compared with
    scratch = start(tenant, DATA, suffix="scratch", **hyper(1))

    child = wait_for(tenant.client, child["id"])
    assert child["status"] == "succeeded", child["error"]
    done = wait_for(tenant.client, from_ckpt["id"])
    assert done["status"] == "succeeded", done["error"]
    assert wait_for(tenant.client, scratch["id"])["status"] == "succeeded"
    fresh = first_loss(tenant.client, scratch["id"])
    # each starts near where its parent was, well below a fresh start
    assert parent_curve[-1] < fresh - 1.0, (parent_curve, fresh)
    assert abs(first_loss(tenant.client, child["id"]) - parent_curve[-1]) < 0.3
    at_ckpt = ckpt["metrics"]["train_loss"]
    assert at_ckpt < fresh - 1.0, (at_ckpt, fresh)
    assert abs(first_loss(tenant.client, from_ckpt["id"]) - at_ckpt) < 0.5
    events = [e["message"] for e in all_events(tenant.client, child["id"])]
    assert any(m.startswith(f"Continuing from {ft}") for m in events)

    version = tenant.client.get("/v1/adapters/capitals/versions/2").json()
    assert version["fine_tuning_job_id"] == child["id"]
    assert version["manifest"]["parent"] == child["parent"]
    assert "parent" not in version["manifest"]["method"]  # no object keys


def test_a_tampered_parent_fails_the_job_and_is_never_trained_on(
        tenant: TenantHandle) -> None:
    parent = wait_for(tenant.client, start(tenant, DATA, suffix="tampered", **hyper(2))["id"])
    assert parent["status"] == "succeeded", parent["error"]
    ckpt = tenant.client.get(f"/v1/fine_tuning/jobs/{parent['id']}/checkpoints").json()[
        "data"][-1]
    with admin_scope() as session:
        row = checkpoint_repo.at_step(session, tenant.id, parent["id"],  # type: ignore[arg-type]
                                      ckpt["step_number"])
        assert row is not None
        key = row.object_prefix + "adapter_model.safetensors"
    storage = get_storage()
    original = b"".join(storage.iter_object(key))
    storage.put_bytes(key, original[:-1] + bytes([original[-1] ^ 1]))
    child = wait_for(tenant.client, start(tenant, DATA, model=ckpt[
        "fine_tuned_model_checkpoint"], **hyper(1))["id"])
    assert child["status"] == "failed"
    assert child["error"]["code"] == "parent_unusable", child["error"]
    assert "sha256" in child["error"]["message"]
    assert not metrics(tenant.client, child["id"])  # no step was trained
