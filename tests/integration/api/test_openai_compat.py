"""The official openai client drives loramill's files and fine-tuning endpoints."""

from __future__ import annotations

import io

import openai
import pytest

from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, jsonl

MODEL = "loramill/tiny-llama"


@pytest.fixture
def client(stack: StackInfo, tenant: TenantHandle) -> openai.OpenAI:
    return openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0)


def test_files_round_trip_and_pagination(client: openai.OpenAI) -> None:
    data = jsonl(CHAT, CHAT)
    created = [client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
               for _ in range(3)]
    assert all(f.status == "processed" and f.bytes == len(data) for f in created)
    assert client.files.retrieve(created[0].id).filename == "train.jsonl"
    assert client.files.content(created[0].id).content == data

    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == [f.id for f in created[::-1][:2]]
    assert first.has_next_page()
    every = [f.id for f in client.files.list(limit=2)]  # auto-paginates
    assert every == [f.id for f in created[::-1]]

    deleted = client.files.delete(created[0].id)
    assert deleted.deleted and deleted.id == created[0].id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created[0].id)


def test_jobs_create_list_retrieve_events_cancel(client: openai.OpenAI) -> None:
    file = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(CHAT))), purpose="fine-tune")
    jobs = [client.fine_tuning.jobs.create(
        model=MODEL, training_file=file.id, suffix=f"run{i}", seed=42,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        metadata={"run": str(i)}, extra_body={"lora": {"r": 4}},
    ) for i in range(3)]
    job = jobs[0]
    assert job.status == "queued" and job.model == MODEL and job.seed == 42
    assert job.hyperparameters.n_epochs == 2
    assert client.fine_tuning.jobs.retrieve(job.id).to_dict()["user_provided_suffix"] == "run0"

    listed = [j.id for j in client.fine_tuning.jobs.list(limit=2)]
    assert listed == [j.id for j in jobs[::-1]]
    by_meta = client.fine_tuning.jobs.list(metadata={"run": "1"})
    assert [j.id for j in by_meta.data] == [jobs[1].id]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1))
    assert any(e.message.startswith("Created fine-tuning job") for e in events)

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"


def test_dpo_and_tool_data_through_the_official_client(client: openai.OpenAI) -> None:
    """OpenAI's preference and tool-calling files, and a dpo job, as the official client
    sends them and reads them back."""
    preference = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
                  "preferred_output": [{"role": "assistant", "content": "Paris."}],
                  "non_preferred_output": [{"role": "assistant", "content": "Lyon."}]}
    prefs = client.files.create(file=("p.jsonl", io.BytesIO(jsonl(preference))),
                                purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=prefs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    client.fine_tuning.jobs.cancel(job.id)

    tools = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
             "messages": [{"role": "user", "content": "call f"},
                          {"role": "assistant", "tool_calls": [{
                              "id": "c", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}]},
                          {"role": "tool", "tool_call_id": "c", "content": "done"},
                          {"role": "assistant", "content": "Done."}]}
    file = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(tools))), purpose="fine-tune")
    assert file.status == "processed"


def test_errors_surface_as_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="no/such-model", training_file="file-x")
    assert bad.value.code == "model_not_found" and bad.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as invalid:
        client.files.create(file=("bad.jsonl", io.BytesIO(b"nope\n")), purpose="fine-tune")
    assert "line 1" in invalid.value.message


def test_models_list(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]


def test_wrong_key_is_an_authentication_error(stack: StackInfo) -> None:
    bad = openai.OpenAI(api_key="lm-sk-" + "x" * 43, base_url=f"{stack.api_url}/v1",
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()
