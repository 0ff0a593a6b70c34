"""A job's GPU class comes from its predicted peak memory (core/base_models/memory.py):
the same base model takes a larger class for a longer max_seq_len, a job no class can
hold is refused at creation, and so is one this deployment runs no worker for. The big
models here are their config.json and a safetensors header (registration reads no
weights; these jobs never run)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.base_models import service as base_models
from core.base_models.models import BaseModel
from core.jobs import service as job_service
from core.jobs.models import FineTuningJob
from core.kit.db import admin_scope
from core.kit.errors import InvalidRequest
from core.kit.settings import get_settings
from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import assert_error, upload_ok
from worker.training import tinymodel

LLAMA3_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672,
              "vocab_size": 128256, "num_attention_heads": 64, "num_key_value_heads": 8,
              "max_position_embeddings": 131072, "tie_word_embeddings": False}
LLAMA3_8B = {**LLAMA3_70B, "hidden_size": 4096, "num_hidden_layers": 32,
             "intermediate_size": 14336, "num_attention_heads": 32}


def header_only(config: dict[str, Any], path: Path) -> None:
    """A safetensors file whose header declares the model's tensors (no data follows)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    shapes = {"model.embed_tokens.weight": [vocab, h], "lm_head.weight": [vocab, h]}
    for layer in range(layers):
        for name, shape in {"q": [h, h], "k": [1024, h], "v": [1024, h], "o": [h, h]}.items():
            shapes[f"model.layers.{layer}.self_attn.{name}_proj.weight"] = shape
        for name in ("gate", "up", "down"):
            shapes[f"model.layers.{layer}.mlp.{name}_proj.weight"] = [
                config["intermediate_size"], h]
    header, at = {}, 0
    for name, shape in shapes.items():
        size = shape[0] * shape[1] * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [at, at + size]}
        at += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.fixture(scope="module")
def shaped_models(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[dict[str, str]]:
    source = tinymodel.ensure(ROOT / ".loramill-test-models" / "tiny-llama")
    ids = {}
    for name, config in (("8b", LLAMA3_8B), ("70b", LLAMA3_70B)):
        directory = tmp_path_factory.mktemp(f"llama3-{name}") / "model"
        shutil.copytree(source, directory)
        (directory / "config.json").write_text(json.dumps(config))
        for weights in directory.glob("*.safetensors"):
            weights.unlink()
        header_only(config, directory / "model.safetensors")
        ids[name] = f"test/llama3-{name}-shape"
        with admin_scope() as session:
            base_models.register(session, ids[name], str(directory))
    yield ids
    with admin_scope() as session:
        for model_id in ids.values():
            model = session.get(BaseModel, model_id)
            if model is not None:
                model.enabled = False


def create(tenant: TenantHandle, model: str, **fields: Any) -> Any:
    file_id = upload_ok(tenant.client)["id"]
    return tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": model, "training_file": file_id, **fields})


def queued_for(tenant: TenantHandle, job_id: str) -> str:
    events = tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    message: str = next(e["message"] for e in events if e["message"].startswith("Job queued"))
    return message


def test_a_jobs_class_follows_its_predicted_memory(shaped_models: dict[str, str],
                                                   tenant: TenantHandle) -> None:
    listed = {m["id"]: m for m in tenant.client.get("/v1/models").json()["data"]}
    assert listed[shaped_models["8b"]]["gpu_class"] == "gpu-24gb"  # at the defaults
    short = create(tenant, shaped_models["8b"])
    long = create(tenant, shaped_models["8b"], max_seq_len=65536)
    assert short.status_code == long.status_code == 200, (short.text, long.text)
    try:
        assert "gpu-24gb worker (predicted peak memory" in queued_for(tenant, short.json()["id"])
        assert "gpu-80gb worker" in queued_for(tenant, long.json()["id"])
    finally:
        for job in (short, long):
            tenant.client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")


def test_a_job_no_class_can_hold_is_refused(shaped_models: dict[str, str],
                                            tenant: TenantHandle) -> None:
    response = create(tenant, shaped_models["70b"], max_seq_len=131072)
    error = assert_error(response, 400, param="max_seq_len", contains="GiB on each GPU")
    assert error["code"] == "model_too_large"
    with admin_scope() as session:
        assert session.scalars(select(FineTuningJob).where(
            FineTuningJob.tenant_id == tenant.id)).first() is None  # nothing half-made


def test_a_class_this_deployment_does_not_run_is_refused(
        shaped_models: dict[str, str], tenant: TenantHandle,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked in this process (the API process has every class): a deployment of CPU
    workers only refuses a job that needs a GPU, instead of queueing it forever."""
    from core.jobs.service import JobRequest
    from core.jobs.spec import LoraSpec, RequestedHyperparameters
    from core.tenants.scope import TenantId

    monkeypatch.setattr(get_settings(), "gpu_classes", ["cpu"])
    file_id = upload_ok(tenant.client)["id"]
    with admin_scope() as session, pytest.raises(InvalidRequest) as refused:
        job_service.create(session, TenantId(tenant.id), JobRequest(
            model=shaped_models["8b"], training_file=file_id, validation_file=None,
            hyperparameters=RequestedHyperparameters(), lora=LoraSpec(), suffix=None,
            seed=None, metadata=None))
    assert refused.value.code == "no_worker_class" and "gpu-24gb" in str(refused.value)


def test_a_larger_class_the_deployment_runs_takes_the_job(
        shaped_models: dict[str, str], tenant: TenantHandle,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster of gpu-80gb workers only (no gpu-24gb, no cpu) runs the 8B job that fits
    a 24 GB GPU on its 80 GB GPUs instead of refusing it."""
    from core.jobs.service import JobRequest
    from core.jobs.spec import LoraSpec, RequestedHyperparameters
    from core.tenants.scope import TenantId

    monkeypatch.setattr(get_settings(), "gpu_classes", ["gpu-80gb", "gpu-multi"])
    file_id = upload_ok(tenant.client)["id"]
    with admin_scope() as session:
        job = job_service.create(session, TenantId(tenant.id), JobRequest(
            model=shaped_models["8b"], training_file=file_id, validation_file=None,
            hyperparameters=RequestedHyperparameters(), lora=LoraSpec(), suffix=None,
            seed=None, metadata=None))
        assert job.gpu_class == "gpu-80gb"
        session.rollback()
