"""Jobs API: creation with a frozen spec, validation of every field, listing, cancel."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from sqlalchemy import update

from core.jobs.models import FineTuningJob
from core.kit.db import admin_scope
from core.tenants.models import Tenant
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload_ok

MODEL = "loramill/tiny-llama"


def create(tenant: TenantHandle, **fields: Any) -> Any:
    if "training_file" not in fields:
        fields["training_file"] = upload_ok(tenant.client)["id"]
    return tenant.client.post("/v1/fine_tuning/jobs", json={"model": MODEL, **fields})


def test_create_stores_a_queued_job_with_its_frozen_spec(tenant: TenantHandle) -> None:
    response = create(tenant, suffix="demo", seed=7, metadata={"team": "search"},
                      method={"type": "supervised", "supervised": {"hyperparameters": {
                          "n_epochs": 2, "batch_size": "auto"}}},
                      lora={"r": 16, "target_modules": ["q_proj", "v_proj"]})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert (job["status"], job["model"], job["seed"]) == ("queued", MODEL, 7)
    assert job["organization_id"] == tenant.id and job["user_provided_suffix"] == "demo"
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 1,
                                      "learning_rate_multiplier": 1.0}
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["lora"] == {"r": 16, "alpha": 16.0, "dropout": 0.05, "quantization": "nf4",
                           "target_modules": ["q_proj", "v_proj"]}
    assert job["metadata"] == {"team": "search"} and job["fine_tuned_model"] is None
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job

    events = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    messages = [e["message"] for e in events["data"]]
    assert messages[-1] == f"Created fine-tuning job: {job['id']}"
    assert all(e["object"] == "fine_tuning.job.event" for e in events["data"])


def test_a_new_job_wakes_the_dispatcher_after_commit(stack: StackInfo,
                                                     tenant: TenantHandle) -> None:
    """No scheduler runs in this stack: the job stays queued and undispatched, and the
    wake-up message waits in the scheduler's queue."""
    broker = redis.Redis.from_url(stack.redis_url)
    broker.delete("loramill-scheduler")
    job = create(tenant).json()
    messages = [json.loads(m) for m in broker.lrange("loramill-scheduler", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["loramill.dispatch"]
    with admin_scope() as session:
        row = session.get(FineTuningJob, job["id"])
        assert row is not None and row.status == "queued" and row.dispatched_at is None


def test_queued_quota_answers_429_naming_the_quota(tenant: TenantHandle) -> None:
    with admin_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id)
                        .values(max_queued_jobs=2))
    file_id = upload_ok(tenant.client)["id"]
    for _ in range(2):
        assert create(tenant, training_file=file_id).status_code == 200
    error = assert_error(create(tenant, training_file=file_id), 429,
                         contains="max_queued_jobs")
    assert error["code"] == "max_queued_jobs_exceeded" and error["type"] == "rate_limit_error"
    assert len(tenant.client.get("/v1/fine_tuning/jobs").json()["data"]) == 2


def test_pause_and_resume_need_the_right_state(tenant: TenantHandle) -> None:
    job = create(tenant).json()
    assert_error(tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 400,
                 contains="only running jobs can be paused")
    assert_error(tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 400,
                 contains="only paused jobs can be resumed")


@pytest.mark.parametrize(("fields", "status", "param", "message"), [
    ({"model": "nope/unknown"}, 400, "model", "neither an available base model"),
    ({"training_file": "file-doesnotexist"}, 400, "training_file", "does not exist"),
    ({"validation_file": "file-doesnotexist"}, 400, "validation_file", "does not exist"),
    ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs", ""),
    ({"hyperparameters": {"n_epochs": 51}}, 400, "hyperparameters.n_epochs", ""),
    ({"hyperparameters": {"batch_size": "big"}}, 400, "hyperparameters.batch_size", ""),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, 400,
     "hyperparameters.learning_rate_multiplier", ""),
    ({"hyperparameters": {"warmup": 3}}, 400, "hyperparameters.warmup", "unrecognized"),
    ({"method": {"type": "reinforcement"}}, 400, "method.type", ""),
    ({"suffix": "x" * 65}, 400, "suffix", ""),
    ({"suffix": "bad suffix!"}, 400, "suffix", ""),
    ({"seed": -1}, 400, "seed", ""),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", "16"),
    ({"lora": {"r": 0}}, 400, "lora.r", ""),
    ({"lora": {"dropout": 1.5}}, 400, "lora.dropout", ""),
    ({"lora": {"target_modules": []}}, 400, "lora.target_modules", ""),
    ({"lora": {"quantization": "int3"}}, 400, "lora.quantization", ""),
    ({"integrations": [{"type": "comet"}]}, 400, "integrations", "not supported"),
    ({"integrations": [{"type": "wandb"}]}, 400, "integrations.0.wandb", ""),
    ({"surprise": 1}, 400, "surprise", "unrecognized request argument"),
    ({"max_seq_len": 63}, 400, "max_seq_len", "64"),
    ({"max_seq_len": "long"}, 400, "max_seq_len", ""),
    # evaluation settings work on a validation loss: without a validation file, refused
    ({"hyperparameters": {"early_stopping_patience": 2}}, 400,
     "hyperparameters.early_stopping_patience", "no validation_file"),
    ({"hyperparameters": {"publish_checkpoint": "best"}}, 400,
     "hyperparameters.publish_checkpoint", "no validation_file"),
    ({"hyperparameters": {"eval_every": 5}}, 400, "hyperparameters.eval_every", ""),
    ({"hyperparameters": {"eval_every": 0}}, 400, "hyperparameters.eval_every", ""),
    ({"hyperparameters": {"early_stopping_patience": 0}}, 400,
     "hyperparameters.early_stopping_patience", ""),
    ({"hyperparameters": {"early_stopping_threshold": -1}}, 400,
     "hyperparameters.early_stopping_threshold", ""),
    ({"hyperparameters": {"publish_checkpoint": "first"}}, 400,
     "hyperparameters.publish_checkpoint", ""),
    ({"model": "ft:loramill/tiny-llama:nobody:x:ftjob-1"}, 400, "model", "fine-tuned"),
])
def test_invalid_job_requests_are_4xx_and_create_nothing(
    tenant: TenantHandle, fields: dict[str, Any], status: int, param: str, message: str,
) -> None:
    assert_error(create(tenant, **fields), status, param=param, contains=message)
    assert tenant.client.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(("asked", "resolved"), [
    (None, 512), (256, 256), (100_000, 512)])  # default 4,096; the tiny model's context: 512
def test_max_seq_len_resolves_against_the_models_context(tenant: TenantHandle,
                                                         asked: int | None,
                                                         resolved: int) -> None:
    fields = {} if asked is None else {"max_seq_len": asked}
    response = create(tenant, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["max_seq_len"] == resolved


def test_missing_model_and_files_of_another_tenant(tenant: TenantHandle,
                                                  other_tenant: TenantHandle) -> None:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={"training_file": "f"})
    assert_error(response, 400, param="model", contains="missing required parameter")
    theirs = upload_ok(other_tenant.client)["id"]
    assert_error(create(tenant, training_file=theirs), 400, param="training_file",
                 contains="does not exist")


def test_validation_file_must_match_the_training_format(tenant: TenantHandle) -> None:
    other = upload_ok(tenant.client, jsonl({"text": "plain"}))["id"]
    assert_error(create(tenant, validation_file=other), 400, param="validation_file",
                 contains="one format")


def test_evaluation_settings_resolve_with_a_validation_file(tenant: TenantHandle) -> None:
    valid = upload_ok(tenant.client)["id"]
    shown = create(tenant, validation_file=valid, hyperparameters={
        "n_epochs": 10, "batch_size": 1, "early_stopping_patience": 3,
        "early_stopping_threshold": 0.01, "publish_checkpoint": "best"}).json()
    # the default upload has 3 examples: 30 steps, about ten evaluations
    assert shown["hyperparameters"] == {
        "n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 1.0, "eval_every": 3,
        "early_stopping_patience": 3, "early_stopping_threshold": 0.01,
        "publish_checkpoint": "best"}
    fixed = create(tenant, validation_file=valid, hyperparameters={"eval_every": 7}).json()
    assert fixed["hyperparameters"]["eval_every"] == 7
    assert fixed["hyperparameters"]["early_stopping_patience"] is None


def test_list_paginates_and_filters_by_metadata(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client)["id"]
    ids = [create(tenant, training_file=file_id, metadata={"n": str(i)}).json()["id"]
           for i in range(4)]
    page = tenant.client.get("/v1/fine_tuning/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:3] and page["has_more"]
    rest = tenant.client.get("/v1/fine_tuning/jobs",
                             params={"limit": 3, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    only = tenant.client.get("/v1/fine_tuning/jobs", params={"metadata[n]": "2"}).json()
    assert [j["id"] for j in only["data"]] == [ids[2]]


def test_cancel_a_queued_job(tenant: TenantHandle) -> None:
    job = create(tenant).json()
    cancelled = tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert events[0]["message"] == "Job cancelled"


def test_a_file_in_use_by_an_active_job_cannot_be_deleted(tenant: TenantHandle) -> None:
    job = create(tenant).json()
    error = assert_error(tenant.client.delete(f"/v1/files/{job['training_file']}"), 409)
    assert job["id"] in error["message"]
    tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert tenant.client.delete(f"/v1/files/{job['training_file']}").status_code == 200
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 200


def test_another_tenants_job_is_404(tenant: TenantHandle, other_tenant: TenantHandle) -> None:
    job_id = create(tenant).json()["id"]
    for path, method in ((f"/v1/fine_tuning/jobs/{job_id}", "GET"),
                         (f"/v1/fine_tuning/jobs/{job_id}/events", "GET"),
                         (f"/v1/fine_tuning/jobs/{job_id}/cancel", "POST")):
        assert_error(other_tenant.client.request(method, path), 404)
    assert other_tenant.client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"


def test_models_lists_enabled_base_models(tenant: TenantHandle) -> None:
    models = tenant.client.get("/v1/models").json()
    entry = next(m for m in models["data"] if m["id"] == MODEL)
    assert entry["object"] == "model" and entry["architecture"] == "LlamaForCausalLM"
    assert tenant.client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_error(tenant.client.get("/v1/models/none/such"), 404)


def test_auto_hyperparameters_resolve_from_dataset_size(tenant: TenantHandle) -> None:
    file_id = upload_ok(tenant.client, jsonl(*[CHAT] * 40))["id"]
    job = create(tenant, training_file=file_id).json()
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 2,
                                      "learning_rate_multiplier": 1.0}


@pytest.mark.parametrize("suffix", [".", "..", ".hidden", "-dash", "a/b", "a..b", "x" * 65])
def test_suffixes_object_keys_cannot_hold_are_refused(tenant: TenantHandle,
                                                      suffix: str) -> None:
    assert_error(create(tenant, suffix=suffix), 400, param="suffix")


@pytest.mark.parametrize("suffix", ["v2", "my-model_1.0", "A"])
def test_ordinary_suffixes_are_accepted(tenant: TenantHandle, suffix: str) -> None:
    assert create(tenant, suffix=suffix).json()["user_provided_suffix"] == suffix


def test_creating_a_job_and_deleting_its_file_never_both_win(stack: StackInfo,
                                                             tenant: TenantHandle) -> None:
    def attempt(_: int) -> tuple[int, int]:
        file_id = upload_ok(tenant.client)["id"]
        start = threading.Barrier(2)

        def make() -> int:
            start.wait()
            status: int = create(tenant, training_file=file_id).status_code
            return status

        def remove() -> int:
            start.wait()
            return tenant.client.delete(f"/v1/files/{file_id}").status_code

        with ThreadPoolExecutor(max_workers=2) as pool:
            made, removed = pool.submit(make), pool.submit(remove)
            return made.result(), removed.result()

    outcomes = [attempt(i) for i in range(12)]
    assert all(o in ((200, 409), (400, 200)) for o in outcomes), outcomes
