"""Estimates: a job body answered without queueing it. Tokens as the trainer counts them,
steps, the GPU class, durations from finished jobs' throughput (or nominal), and cost
from the tenant's operator-set price table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.jobs.models import FineTuningJob
from core.kit import ids
from core.kit.db import admin_scope
from core.kit.orm import utcnow
from tests.conftest import AdminHandle, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload_ok
from tests.integration.api.test_dataset_formats import registered_copy
from worker.training import data, tinymodel
from worker.training.model import load_tokenizer

MODEL_DIR = Path(".loramill-test-models") / "tiny-llama"
LINES = [{"messages": [{"role": "user", "content": f"Question {i}: " + "why " * (i % 7)},
                       {"role": "assistant", "content": "Because " * (1 + i % 5)}]}
         for i in range(40)]


@pytest.fixture(scope="module")
def model(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A base model of its own, so the jobs on it (none, then the ones this test adds)
    are known."""
    with registered_copy(tmp_path_factory.mktemp("m"), "test/estimates", lambda _: None) as m:
        yield m


def estimate(tenant: TenantHandle, **fields: Any) -> Any:
    return tenant.client.post("/v1/fine_tuning/estimates", json=fields)


def trainer_tokens(path: Path, max_len: int) -> tuple[int, int]:
    """What the trainer itself loads from the file: tokens and trainable tokens."""
    tok = load_tokenizer(tinymodel.ensure(MODEL_DIR.resolve()))
    dataset = data.load(path, tok, max_len)
    return sum(len(e) for e in dataset.examples), dataset.trainable_tokens


def test_an_estimate_counts_what_the_trainer_trains_and_queues_nothing(
        tenant: TenantHandle, model: str, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(*LINES))
    file = upload_ok(tenant.client, path.read_bytes())["id"]
    response = estimate(tenant, model=model, training_file=file, max_seq_len=64,
                        hyperparameters={"n_epochs": 3, "batch_size": 4})
    assert response.status_code == 200, response.text
    found = response.json()
    tokens, trainable = trainer_tokens(path, 64)
    assert found["object"] == "fine_tuning.estimate" and found["examples"] == 40
    assert found["tokens"] == {"per_epoch": tokens, "trainable_per_epoch": trainable,
                               "total": 3 * tokens, "counted": "exact",
                               "counted_examples": 40}
    assert found["total_steps"] == 30 and found["gpu_class"] == "cpu"
    assert found["hyperparameters"]["batch_size"] == 4 and found["max_seq_len"] == 64
    # the chosen class first, then each larger one this deployment runs
    cpu, *larger = found["durations"]
    assert [d["gpu_class"] for d in larger] == ["gpu-24gb", "gpu-80gb", "gpu-multi"]
    assert cpu["gpu_class"] == "cpu" and cpu["basis"] == "nominal"
    assert all(d["seconds"] < cpu["seconds"] and d["basis"] == "nominal" for d in larger)
    assert larger[-1]["gpus"] == 8
    assert found["estimated_seconds"] == cpu["seconds"] > 0
    assert found["estimated_cost"] is None and found["currency"] is None  # no prices set
    assert tenant.client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_durations_come_from_finished_jobs_and_cost_from_the_price_table(
        tenant: TenantHandle, admin: AdminHandle, model: str) -> None:
    file = upload_ok(tenant.client, jsonl(*LINES))["id"]
    # three finished jobs on the model: 1,000, 2,000 and 9,000 tokens in 10 s each
    now = utcnow()
    with admin_scope() as session:
        for tokens in (1000, 2000, 9000):
            session.add(FineTuningJob(
                id=ids.new_id(ids.JOB), tenant_id=tenant.id, model=model,
                training_file=file, method={}, seed=1, status="succeeded",
                gpu_class="cpu", trained_tokens=tokens, started_at=now - timedelta(seconds=10),
                finished_at=now))
    found = estimate(tenant, model=model, training_file=file).json()
    cpu = found["durations"][0]
    assert (cpu["basis"], cpu["measured_jobs"], cpu["tokens_per_second"]) == ("measured", 3,
                                                                             200.0)
    assert cpu["seconds"] == pytest.approx(found["tokens"]["total"] / 200, abs=0.1)

    table = {"currency": "EUR", "gpu_classes": {"cpu": {"per_gpu_hour": 3.6,
                                                        "per_million_tokens": 1000}}}
    assert admin.client.put(f"/v1/admin/tenants/{tenant.id}/prices", json=table).json()[
        "prices"] == table
    priced = estimate(tenant, model=model, training_file=file).json()
    seconds, tokens = priced["durations"][0]["seconds"], priced["tokens"]["total"]
    assert priced["currency"] == "EUR"
    assert priced["estimated_cost"] == pytest.approx(3.6 * seconds / 3600 + tokens / 1000,
                                                     abs=1e-3)
    audit = admin.client.get("/v1/admin/audit_log", params={"target_id": tenant.id}).json()
    assert audit["data"][0]["action"] == "tenant.prices"
    admin.client.delete(f"/v1/admin/tenants/{tenant.id}/prices")
    assert estimate(tenant, model=model, training_file=file).json()["estimated_cost"] is None


def test_a_large_file_is_counted_from_a_sample(tenant: TenantHandle, model: str) -> None:
    rows = [CHAT] * 2100
    file = upload_ok(tenant.client, jsonl(*rows))["id"]
    found = estimate(tenant, model=model, training_file=file).json()
    assert found["tokens"]["counted"] == "sampled"
    assert found["tokens"]["counted_examples"] == 2000
    one = estimate(tenant, model=model, training_file=upload_ok(tenant.client, jsonl(CHAT))[
        "id"]).json()["tokens"]["per_epoch"]
    assert found["tokens"]["per_epoch"] == 2100 * one


def test_an_estimate_refuses_what_job_creation_refuses(
        tenant: TenantHandle, other_tenant: TenantHandle, model: str) -> None:
    file = upload_ok(tenant.client)["id"]
    assert_error(estimate(tenant, model="nope/unknown", training_file=file), 400,
                 param="model", code="model_not_found")
    assert_error(estimate(tenant, model=model, training_file=file,
                          hyperparameters={"early_stopping_patience": 1}), 400,
                 param="hyperparameters.early_stopping_patience",
                 code="validation_file_required")
    theirs = upload_ok(other_tenant.client)["id"]
    assert_error(estimate(tenant, model=model, training_file=theirs), 400,
                 param="training_file", code="file_not_found")
    assert_error(estimate(tenant, model=model), 400, param="training_file")
    assert_error(admin_put_prices_without_admin(tenant), 403)


def admin_put_prices_without_admin(tenant: TenantHandle) -> Any:
    return tenant.client.put(f"/v1/admin/tenants/{tenant.id}/prices",
                             json={"gpu_classes": {}})


def test_bad_price_tables_are_400(admin: AdminHandle, tenant: TenantHandle) -> None:
    for table, param in (({"gpu_classes": {"cpu": {"per_gpu_hour": -1}}},
                          "gpu_classes.cpu.per_gpu_hour"),
                         ({"currency": "dollars", "gpu_classes": {}}, "currency"),
                         ({"gpu_classes": {"cpu": {"per_hour": 1}}}, "gpu_classes.cpu.per_hour")):
        assert_error(admin.client.put(f"/v1/admin/tenants/{tenant.id}/prices", json=table),
                     400, param=param)

