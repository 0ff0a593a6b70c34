"""OpenAI's dataset formats end to end through the API: tool calling and preference data
are accepted, and a job refuses a file its method or base model cannot train; the limits a
local check needs come from the server."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.base_models import service as base_models
from core.base_models.models import BaseModel
from core.kit.db import admin_scope
from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, assert_error, jsonl, upload_ok
from worker.training import tinymodel

MODEL = "loramill/tiny-llama"
TOOL_CHAT = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
        {"role": "assistant", "content": "It is 21C in Paris.", "weight": 1}],
    "parallel_tool_calls": False,
}
PREFERENCE = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
              "preferred_output": [{"role": "assistant", "content": "Paris."}],
              "non_preferred_output": [{"role": "assistant", "content": "Lyon."}]}


def create(tenant: TenantHandle, **fields: Any) -> Any:
    return tenant.client.post("/v1/fine_tuning/jobs", json={"model": MODEL, **fields})


@contextmanager
def registered_copy(tmp: Path, model_id: str, edit: Callable[[Path], None]) -> Iterator[str]:
    """The tiny model copied, changed by ``edit``, registered as ``model_id``; disabled
    afterwards (jobs refer to it: not deleted)."""
    source = tinymodel.ensure(ROOT / ".loramill-test-models" / "tiny-llama")
    copy = tmp / "model"
    shutil.copytree(source, copy)
    edit(copy)
    with admin_scope() as session:
        base_models.register(session, model_id, str(copy), gpu_class="cpu")
    yield model_id
    with admin_scope() as session:
        model = session.get(BaseModel, model_id)
        if model is not None:
            model.enabled = False


@pytest.fixture(scope="module")
def no_tools_model(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model with a chat template that knows no tools (as many base models)."""
    plain = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
             "{% endfor %}")

    def edit(copy: Path) -> None:
        for template in copy.glob("chat_template.jinja"):
            template.write_text(plain)
        config = copy / "tokenizer_config.json"
        settings = json.loads(config.read_text())
        if "chat_template" in settings:
            settings["chat_template"] = plain
            config.write_text(json.dumps(settings))

    with registered_copy(tmp_path_factory.mktemp("no-tools"), "test/no-tools", edit) as model:
        yield model


@pytest.fixture(scope="module")
def no_template_model(stack: StackInfo,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model without any chat template (as a pretrained, not instruct, base)."""

    def edit(copy: Path) -> None:
        (copy / "chat_template.jinja").unlink(missing_ok=True)
        config = copy / "tokenizer_config.json"
        settings = json.loads(config.read_text())
        settings.pop("chat_template", None)
        config.write_text(json.dumps(settings))

    with registered_copy(tmp_path_factory.mktemp("no-template"), "test/no-template",
                         edit) as model:
        yield model


def test_chat_data_on_a_model_without_a_chat_template_is_refused_at_creation(
        tenant: TenantHandle, no_template_model: str) -> None:
    """It used to fail deep in training with a generic error."""
    listed = {m["id"]: m for m in tenant.client.get("/v1/models").json()["data"]}
    assert listed[no_template_model]["chat_template"] is False
    assert listed[MODEL]["chat_template"] is True
    for data, fmt in ((jsonl(CHAT), "chat"), (jsonl(PREFERENCE), "preference")):
        f = upload_ok(tenant.client, data)
        method = {"type": "dpo"} if fmt == "preference" else {"type": "supervised"}
        response = create(tenant, training_file=f["id"], model=no_template_model,
                          method=method)
        error = assert_error(response, 400, param="training_file")
        assert error["code"] == "unsupported_by_model"
        assert error["message"] == (
            f"training_file {f['id']!r} is {fmt} data, which is rendered with the base "
            f"model's chat template, but {no_template_model!r} has none; use prompt/"
            "completion or text data with it, or a base model with a chat template")
    completion = upload_ok(tenant.client, jsonl({"prompt": "Capital of France?",
                                                 "completion": " Paris."}))
    response = create(tenant, training_file=completion["id"], model=no_template_model)
    assert response.status_code == 200, response.text


def test_the_tiny_models_template_renders_tools(tenant: TenantHandle,
                                                no_tools_model: str) -> None:
    with admin_scope() as session:
        model = session.get(BaseModel, MODEL)
        assert model is not None and model.renders_tools
    listed = {m["id"]: m for m in tenant.client.get("/v1/models").json()["data"]}
    assert listed[MODEL]["renders_tools"] is True
    assert listed[no_tools_model]["renders_tools"] is False


def test_tool_calling_data_uploads_and_trains_on_a_model_that_renders_tools(
        tenant: TenantHandle) -> None:
    f = upload_ok(tenant.client, jsonl(TOOL_CHAT, CHAT))
    assert (f["format"], f["example_count"], f["tool_examples"]) == ("chat", 2, 1)
    response = create(tenant, training_file=f["id"])
    assert response.status_code == 200, response.text


def test_tool_calling_data_on_a_model_without_tools_is_refused_at_creation(
        tenant: TenantHandle, no_tools_model: str) -> None:
    f = upload_ok(tenant.client, jsonl(TOOL_CHAT, CHAT))
    response = create(tenant, training_file=f["id"], model=no_tools_model)
    error = assert_error(response, 400, param="training_file")
    assert error["code"] == "unsupported_by_model"
    assert error["message"] == (
        f"training_file {f['id']!r} has 1 examples with tools or tool calls, but the chat "
        f"template of {no_tools_model!r} cannot render tools; choose a base model whose "
        "template does, or remove the tools from the data")
    plain = upload_ok(tenant.client, jsonl(CHAT))  # the same model, data without tools
    assert create(tenant, training_file=plain["id"], model=no_tools_model).status_code == 200


def test_preference_data_trains_a_dpo_job_only(tenant: TenantHandle) -> None:
    prefs = upload_ok(tenant.client, jsonl(PREFERENCE, PREFERENCE))
    assert prefs["format"] == "preference"
    error = assert_error(create(tenant, training_file=prefs["id"]), 400,
                         param="training_file")
    assert "is preference data, which trains a dpo job" in error["message"]
    chat = upload_ok(tenant.client, jsonl(CHAT))
    error = assert_error(create(tenant, training_file=chat["id"], method={"type": "dpo"}),
                         400, param="training_file")
    assert "a dpo job trains on preference data" in error["message"]

    response = create(tenant, training_file=prefs["id"], method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0, "beta": 0.25}}}
    assert job["hyperparameters"]["beta"] == 0.25


@pytest.mark.parametrize(("method", "param"), [
    ({"type": "dpo", "supervised": {}}, "method.supervised"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, None),
    ({"type": "ppo"}, None),
])
def test_bad_methods_are_4xx(tenant: TenantHandle, method: dict[str, Any],
                             param: str | None) -> None:
    prefs = upload_ok(tenant.client, jsonl(PREFERENCE))
    response = create(tenant, training_file=prefs["id"], method=method)
    assert response.status_code in (400, 422), response.text
    if param:
        assert response.json()["error"]["param"] == param


def test_limits_are_the_servers(tenant: TenantHandle) -> None:
    limits = tenant.client.get("/v1/files/limits").json()
    assert limits["max_line_bytes"] == int(os.environ["LORAMILL_MAX_LINE_BYTES"]) == 64 * 1024
    assert limits["max_json_depth"] == 32  # the default
    assert 0 < limits["max_file_bytes"] <= limits["storage_bytes_left"]
    assert limits["formats"] == ["chat", "prompt_completion", "text", "preference"]
