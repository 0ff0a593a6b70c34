"""From upload to a downloadable adapter, with a real Celery worker training the real
tiny model in 4-bit NF4 through bitsandbytes on CPU."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from core.base_models import service as base_models
from core.kit.db import admin_scope
from tests.conftest import ROOT, TenantHandle
from tests.e2e.conftest import all_events, first_metrics, wait_for
from tests.integration.api.helpers import jsonl, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

MODEL = "loramill/tiny-llama"
MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
CAPITALS = [("France", "Paris."), ("Germany", "Berlin."), ("Italy", "Rome."),
            ("Spain", "Madrid.")]
SYSTEM = "Answer with the name of the city."


def chat(country: str, answer: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"What is the capital of {country}?"}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def start(tenant: TenantHandle, data: bytes, **fields: Any) -> dict[str, Any]:
    file_id = upload_ok(tenant.client, data)["id"]
    body = {"model": MODEL, "training_file": file_id, "seed": 7,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 50, "batch_size": 2, "learning_rate_multiplier": 10}}},
            "lora": {"r": 32, "alpha": 64}, **fields}
    response = tenant.client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def metrics(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in all_events(client, job_id) if e["type"] == "metrics"]


def greedy(model: Any, tok: Any, country: str) -> str:
    inputs = tok.apply_chat_template(chat(country)["messages"], add_generation_prompt=True,
                                     tokenize=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    text: str = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return text.strip()


def test_fine_tune_publishes_a_working_adapter(tenant: TenantHandle, tmp_path: Path) -> None:
    started = time.monotonic()
    valid = upload_ok(tenant.client, jsonl(chat("France", "Paris.")))["id"]
    job = start(tenant, jsonl(*(chat(c, a) for c, a in CAPITALS)), suffix="capitals",
                validation_file=valid)
    job = wait_for(tenant.client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert time.monotonic() - started < 180
    assert job["fine_tuned_model"] == (f"ft:{MODEL}:{tenant.id}:capitals:{job['id']}")
    assert job["trained_tokens"] > 0 and job["estimated_finish"] is None

    # metrics events: every field, loss falls, validation loss reported
    points = metrics(tenant.client, job["id"])
    assert {"step", "total_steps", "train_loss", "learning_rate", "tokens_per_second",
            "trained_tokens"} <= set(points[0])
    assert points[-1]["step"] == points[-1]["total_steps"] == 100
    first, last = points[0]["train_loss"], points[-1]["train_loss"]
    assert last < first - 1.0, (first, last)
    assert any(p.get("valid_loss") is not None for p in points)
    messages = [e["message"] for e in all_events(tenant.client, job["id"])]
    assert any(m.startswith("Training started") for m in messages)
    assert messages[-1] == "The job has successfully completed"

    # checkpoints in OpenAI's shape
    checkpoints = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert checkpoints["data"], "expected periodic checkpoints"
    ckpt = checkpoints["data"][0]
    assert ckpt["object"] == "fine_tuning.job.checkpoint" and "train_loss" in ckpt["metrics"]

    # the metrics CSV is a result file
    (result_id,) = job["result_files"]
    csv = tenant.client.get(f"/v1/files/{result_id}/content").text.splitlines()
    assert csv[0].startswith("step,epoch,train_loss") and len(csv) == len(points) + 1

    # the adapter version and its presigned download, verified against the manifest
    adapters = tenant.client.get("/v1/adapters").json()["data"]
    assert [(a["name"], a["latest_version"]) for a in adapters] == [("capitals", 1)]
    version = tenant.client.get("/v1/adapters/capitals/versions").json()["data"][0]
    assert version["fine_tuning_job_id"] == job["id"] and version["version"] == 1
    download = tenant.client.get("/v1/adapters/capitals/versions/1/download").json()
    local = tmp_path / "adapter"
    local.mkdir()
    for f in download["files"]:
        body = httpx.get(f["url"]).content
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
        (local / f["name"]).write_bytes(body)
    manifest = json.loads((local / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((local / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert manifest["base_model"] == MODEL and manifest["dataset_sha256"]
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(manifest["libraries"])

    models = [m["id"] for m in tenant.client.get("/v1/models").json()["data"]]
    assert job["fine_tuned_model"] in models

    # the downloaded adapter, loaded with peft onto the 4-bit base, answers as trained
    from peft import PeftModel

    from worker.training.model import load_base, load_tokenizer

    tok = load_tokenizer(MODEL_DIR)
    base = load_base(MODEL_DIR, "nf4", torch.device("cpu")).eval()
    before = {c: greedy(base, tok, c) for c, _ in CAPITALS}
    tuned = PeftModel.from_pretrained(base, str(local)).eval()
    after = {c: greedy(tuned, tok, c) for c, _ in CAPITALS}
    assert after == dict(CAPITALS), after
    assert all(before[c] != a for c, a in CAPITALS), before


def test_same_seed_gives_the_same_loss_curve(tenant: TenantHandle) -> None:
    data = jsonl(*(chat(c, a) for c, a in CAPITALS))
    fields = {"method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 4, "batch_size": 2}}}}
    jobs = [start(tenant, data, **fields) for _ in range(2)]
    curves = []
    for job in jobs:
        assert wait_for(tenant.client, job["id"])["status"] == "succeeded"
        curves.append([p["train_loss"] for p in metrics(tenant.client, job["id"])])
    assert len(curves[0]) == 8 and curves[0] == curves[1]


def test_tool_calling_and_dpo_jobs_train_through_the_worker(tenant: TenantHandle) -> None:
    """OpenAI's tool-calling format on the tiny model's template, and a dpo job on a
    preference file: both reach succeeded, each with a published adapter; the DPO loss
    starts at log 2 and falls."""
    tool_line = {
        "tools": [{"type": "function", "function": {"name": "capital", "parameters": {
            "type": "object", "properties": {"country": {"type": "string"}}}}}],
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "capital", "arguments": "{\"country\": \"France\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "Paris"},
            {"role": "assistant", "content": "Paris."}]}
    tools_job = start(tenant, jsonl(tool_line, *(chat(c, a) for c, a in CAPITALS)),
                      method={"type": "supervised", "supervised": {"hyperparameters": {
                          "n_epochs": 2, "batch_size": 2}}})
    pairs = [{"input": {"messages": chat(c)["messages"]},
              "preferred_output": [{"role": "assistant", "content": a}],
              "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]}
             for c, a in CAPITALS]
    # the DPO job through the official client, as OpenAI's DPO jobs are made
    import openai

    client = openai.OpenAI(api_key=tenant.key, base_url=f"{tenant.client.base_url}/v1",
                           max_retries=0)
    dpo_job: dict[str, Any] = client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload_ok(tenant.client, jsonl(*pairs))["id"], seed=7,
        method={"type": "dpo", "dpo": {"hyperparameters": {
            "n_epochs": 8, "batch_size": 2, "learning_rate_multiplier": 10, "beta": 0.5}}},
        extra_body={"lora": {"r": 32, "alpha": 64}}).to_dict()
    for job in (tools_job, dpo_job):
        done = wait_for(tenant.client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        assert done["fine_tuned_model"]
    points = metrics(tenant.client, dpo_job["id"])
    losses = [p["train_loss"] for p in points]
    assert abs(losses[0] - 0.6931) < 0.05 and losses[-1] < losses[0] - 0.1, losses
    accuracy = [p["train_preference_accuracy"] for p in points]
    assert accuracy[0] == 0.0 and accuracy[-1] == 1.0, accuracy  # the preference learnt


def test_cancel_stops_a_running_job_within_ten_seconds(tenant: TenantHandle) -> None:
    data = jsonl(*(chat(c, a) for c, a in CAPITALS * 8))
    job = start(tenant, data, suffix="cancelme", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50,
                                                                 "batch_size": 1}}})
    wait_for(tenant.client, job["id"], {"running"}, timeout=120)
    first_metrics(tenant.client, job["id"])
    asked = time.monotonic()
    cancelled = tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    while not any(e["message"].startswith("Job cancelled at step")  # the worker stopped
                  for e in all_events(tenant.client, job["id"])):
        assert time.monotonic() - asked < 10, "the worker did not stop within 10 s"
        time.sleep(0.2)
    done = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "cancelled" and done["fine_tuned_model"] is None
    assert tenant.client.get("/v1/adapters/cancelme/versions").status_code == 404


def test_failures_are_explained_and_the_worker_goes_on(tenant: TenantHandle,
                                                       tmp_path: Path) -> None:
    # valid, but its answer lies beyond the model's context: nothing left to train on
    silent = {"messages": [{"role": "user", "content": "word " * 2000},
                           {"role": "assistant", "content": "hello"}]}
    job = wait_for(tenant.client, start(tenant, jsonl(silent))["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_trainable_tokens"
    assert job["error"]["param"] == "training_file" and "no example" in job["error"]["message"]

    broken = tmp_path / "broken-model"
    shutil.copytree(MODEL_DIR, broken)
    with admin_scope() as session:
        base_models.register(session, "test/broken", str(broken), gpu_class="cpu")
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    job = wait_for(tenant.client, start(tenant, jsonl(chat("Peru", "Lima.")),
                                        model="test/broken")["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "base_model_unreadable"
    assert job["error"]["param"] == "model"

    fine = start(tenant, jsonl(chat("Peru", "Lima.")), method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    assert wait_for(tenant.client, fine["id"])["status"] == "succeeded"
