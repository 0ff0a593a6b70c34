"""The inference endpoints' answers that need no engine: what is refused before any
engine is asked, and the 503 (with its reason) when the engine is not there. The engine's
answers are in tests/e2e/test_serving.py."""

from __future__ import annotations

import openai
import pytest

from core.kit.settings import get_settings
from core.serving.engines import record_status
from tests.conftest import StackInfo, TenantHandle

MODEL = "loramill/tiny-llama"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(stack: StackInfo, tenant: TenantHandle) -> openai.OpenAI:
    return openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0)


def test_unknown_and_foreign_models_are_not_found(client: openai.OpenAI) -> None:
    for model in ("no-such-model", "ft:loramill/tiny-llama:tenant-x:capitals:ftjob-x"):
        with pytest.raises(openai.NotFoundError) as found:
            client.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
        assert found.value.code == "model_not_found"
        assert model in found.value.message
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=model, prompt="Paris is")


def test_bad_bodies_are_400_before_any_engine(tenant: TenantHandle) -> None:
    cases = [({"messages": ASK}, "model"),
             ({"model": MODEL}, "messages"),
             ({"model": MODEL, "messages": []}, "messages"),
             ({"model": MODEL, "messages": ASK, "stream": "perhaps"}, "stream")]
    for body, param in cases:
        response = tenant.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text
    response = tenant.client.post("/v1/completions", json={"model": MODEL})
    assert response.status_code == 400 and "prompt" in response.text


def test_an_engine_that_could_not_start_is_a_503_that_says_why(
        stack: StackInfo, client: openai.OpenAI) -> None:
    """The local stack records why an engine is down; the gateway says it (the rest of
    the API works on)."""
    record_status(stack.redis_url, MODEL, "failed", "this CPU lacks AVX-512 (test)")
    try:
        with pytest.raises(openai.InternalServerError) as down:
            client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
        assert down.value.status_code == 503
        assert down.value.code == "engine_unavailable"
        assert "could not start: this CPU lacks AVX-512 (test)" in down.value.message
        assert down.value.response.headers["retry-after"]
        record_status(stack.redis_url, MODEL, "starting")
        with pytest.raises(openai.InternalServerError) as starting:
            client.chat.completions.create(model=MODEL, messages=ASK, stream=True)  # type: ignore[arg-type]
        assert "starting" in starting.value.message
        assert client.models.list().data  # the rest of the API answers
    finally:
        record_status(stack.redis_url, MODEL, "stopped")
    assert str(get_settings().serving_engines[MODEL]).startswith("http://127.0.0.1:")


def test_usage_starts_empty_and_base_models_cannot_be_deleted(tenant: TenantHandle) -> None:
    assert tenant.client.get("/v1/usage").json() == {"object": "list", "data": []}
    response = tenant.client.get("/v1/usage", params={"start_date": "yesterday"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "start_date"
    response = tenant.client.delete(f"/v1/models/{MODEL}")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "model_not_deletable"
    response = tenant.client.delete("/v1/models/ft:nothing:here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_engine_only_fields_are_refused(tenant: TenantHandle) -> None:
    """vLLM's server takes fields that are the operator's business; a tenant's request
    may not carry them (nor any field OpenAI's API does not have)."""
    for field, value in (("chat_template", "{{ 'pwned' }}"), ("priority", -100),
                         ("kv_transfer_params", {"do_remote_prefill": True}),
                         ("request_id", "someone-elses"), ("vllm_xargs", {"a": 1}),
                         ("no_such_thing", 1)):
        response = tenant.client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, field: value})
        assert response.status_code == 400, (field, response.text)
        error = response.json()["error"]
        assert error["param"] == field and "unrecognized request argument" in error["message"]
    response = tenant.client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "n": 17})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    response = tenant.client.post("/v1/completions", json={
        "model": MODEL, "prompt": "x", "max_tokens": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
