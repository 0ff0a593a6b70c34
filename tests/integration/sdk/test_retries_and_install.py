"""The SDK's retries against a flaky front of the real API (its clean install and dataset
checks: test_dataset_parity.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import loramill
import pytest

from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import CHAT, jsonl


class Flaky:
    """Forwards every request to the API, but answers the first ``fail`` POSTs to the jobs
    endpoint with a 503 *after* the API handled them: the worst case, a lost response."""

    def __init__(self, upstream: str, fail: int, status: int = 503, answer: bytes = b""):
        self.upstream, self.fail = upstream, fail
        self.keys: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None: ...

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length")}
                upstream = httpx.request(self.command, outer.upstream + self.path,
                                         headers=headers, content=body, timeout=60)
                if self.command == "POST" and self.path == "/v1/fine_tuning/jobs":
                    outer.keys.append(self.headers.get("Idempotency-Key", ""))
                    if len(outer.keys) <= outer.fail:
                        self.send_response(status)
                        self.send_header("Retry-After", "0")
                        self.send_header("content-length", str(len(answer)))
                        self.end_headers()
                        self.wfile.write(answer)
                        return
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Flaky:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def dataset(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(CHAT, CHAT))
    yield path


def test_two_lost_responses_then_success_create_exactly_one_job(
        stack: StackInfo, tenant: TenantHandle, dataset: Path) -> None:
    with Flaky(stack.api_url, fail=2) as flaky:
        client = loramill.Client(api_key=tenant.key, base_url=flaky.url)
        client._t.backoff = 0.01
        file = client.files.create(dataset)
        job = client.fine_tuning.jobs.create(model="loramill/tiny-llama",
                                             training_file=file.id)
    assert len(flaky.keys) == 3 and len(set(flaky.keys)) == 1  # one key for all retries
    jobs = tenant.client.get("/v1/fine_tuning/jobs").json()["data"]
    assert [j["id"] for j in jobs] == [job.id]


def test_a_key_still_in_progress_is_retried(stack: StackInfo, tenant: TenantHandle,
                                            dataset: Path) -> None:
    busy = json.dumps({"error": {"message": "a request with this Idempotency-Key is still in "
                                            "progress", "type": "invalid_request_error",
                                 "param": "Idempotency-Key",
                                 "code": "idempotency_key_in_progress"}}).encode()
    with Flaky(stack.api_url, fail=1, status=409, answer=busy) as flaky:
        client = loramill.Client(api_key=tenant.key, base_url=flaky.url)
        client._t.backoff = 0.01
        file = client.files.create(dataset)
        job = client.fine_tuning.jobs.create(model="loramill/tiny-llama",
                                             training_file=file.id)
    assert len(flaky.keys) == 2 and len(set(flaky.keys)) == 1
    assert [j["id"] for j in tenant.client.get("/v1/fine_tuning/jobs").json()["data"]] == [
        job.id]


def test_retries_give_up_with_a_server_error(stack: StackInfo, tenant: TenantHandle,
                                             dataset: Path) -> None:
    with Flaky(stack.api_url, fail=10) as flaky:
        client = loramill.Client(api_key=tenant.key, base_url=flaky.url, max_retries=2)
        client._t.backoff = 0.01
        file = client.files.create(dataset)
        with pytest.raises(loramill.ServerError):
            client.fine_tuning.jobs.create(model="loramill/tiny-llama", training_file=file.id)
    assert len(flaky.keys) == 3


def test_typed_errors(stack: StackInfo, tenant: TenantHandle, dataset: Path) -> None:
    client = loramill.Client(api_key=tenant.key, base_url=stack.api_url)
    with pytest.raises(loramill.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(loramill.InvalidRequestError) as bad:
        client.fine_tuning.jobs.create(model="no/such", training_file="file-x")
    assert bad.value.param == "model" and bad.value.code == "model_not_found"
    with pytest.raises(loramill.AuthenticationError):
        loramill.Client(api_key="lm-sk-" + "x" * 43, base_url=stack.api_url).models.list()
    with pytest.raises(loramill.APIConnectionError):
        loramill.Client(api_key=tenant.key, base_url="http://127.0.0.1:1",
                        max_retries=1).models.list()
