"""`loramill jobs wait` as a CI step runs it (no terminal): progress lines on a clock and on
every status change, through an API that goes away and comes back, and what it says and
does when the wait ends before the job — a timeout, SIGTERM, Ctrl-C. Against the real API
through a front that can be switched off; the job stays queued (no worker runs here)
until the test cancels it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok


class Front:
    """Forwards to the API; ``mode`` "up", "502" (a load balancer with no backend) or
    "closed" (nothing listening: connection refused)."""

    def __init__(self, upstream: str):
        self.upstream, self.mode = upstream, "up"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None: ...

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if outer.mode == "502":
                    self.send_response(502)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, outer.upstream + self.path,
                                       headers=headers, content=body, timeout=60)
                self.send_response(answer.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _forward

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.mode = "closed"
        self.server.shutdown()
        self.server.server_close()

    def reopen(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.mode = "up"
        self._serve()


@pytest.fixture
def front(stack: StackInfo) -> Iterator[Front]:
    found = Front(stack.api_url)
    yield found
    if found.mode != "closed":
        found.close()


@pytest.fixture
def queued_job(tenant: TenantHandle) -> Iterator[str]:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": upload_ok(tenant.client)["id"]})
    assert response.status_code == 200, response.text
    job_id = str(response.json()["id"])
    yield job_id
    tenant.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")


def start(tenant: TenantHandle, url: str, tmp_path: Path, *args: str) -> tuple[
        subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "LORAMILL_API_KEY": tenant.key, "LORAMILL_BASE_URL": url}
    proc = subprocess.Popen([sys.executable, "-m", "loramill.cli", *args], env=env,
                            cwd=ROOT, stdout=out.open("wb"), stderr=err.open("wb"))
    return proc, out, err


def until(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"waited {seconds}s for {what}"
        time.sleep(0.2)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_wait_rides_out_an_outage_and_ends_with_the_job(
        front: Front, queued_job: str, tenant: TenantHandle, tmp_path: Path) -> None:
    proc, _, err = start(tenant, front.url, tmp_path, "jobs", "wait", queued_job,
                           "--progress-interval", "1", "--max-outage", "120")
    try:
        until(lambda: sum("queued for" in line for line in lines(err)) >= 2, 60,
              "two progress lines while queued")
        front.mode = "502"  # the API behind the load balancer is gone ...
        until(lambda: "not answering" in err.read_text(), 90, "the outage noticed")
        time.sleep(3)
        front.close()  # ... and then nothing listens at all
        time.sleep(4)
        assert proc.poll() is None, err.read_text()  # still waiting, not exit 5
        front.reopen()
        until(lambda: "answers again" in err.read_text(), 60, "the API back")
        assert tenant.client.post(
            f"/v1/fine_tuning/jobs/{queued_job}/cancel").status_code == 200
        assert proc.wait(timeout=60) == 3  # cancelled, as the job ended
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert f"{queued_job}: queued" in text and "cancelled (was queued)" in text, text
    assert "Traceback" not in text
    # every line carries its time, so a CI log shows when the job moved
    assert all(line.startswith("[") for line in lines(err)[:3]), text


def test_an_outage_longer_than_the_limit_exits_5_and_says_the_job_may_go_on(
        front: Front, queued_job: str, tenant: TenantHandle, tmp_path: Path) -> None:
    front.mode = "502"
    proc, _, err = start(tenant, front.url, tmp_path, "jobs", "wait", queued_job,
                         "--max-outage", "3")
    assert proc.wait(timeout=120) == 5
    text = err.read_text()
    assert "may still be running" in text and f"loramill jobs get {queued_job}" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_wait_leaves_the_job_running_and_says_how_to_cancel_it(
        stack: StackInfo, queued_job: str, tenant: TenantHandle, tmp_path: Path,
        how: signal.Signals) -> None:
    proc, _, err = start(tenant, stack.api_url, tmp_path, "jobs", "wait", queued_job,
                         "--progress-interval", "1")
    until(lambda: "queued for" in err.read_text(), 60, "the first progress line")
    proc.send_signal(how)
    assert proc.wait(timeout=30) == 128 + how
    text = err.read_text()
    assert f"loramill jobs cancel {queued_job}" in text and "Traceback" not in text, text
    job = tenant.client.get(f"/v1/fine_tuning/jobs/{queued_job}").json()
    assert job["status"] == "queued"


def test_cancel_on_exit_cancels_the_job_when_the_wait_is_stopped_or_times_out(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    ids = []
    for _ in range(2):
        response = tenant.client.post("/v1/fine_tuning/jobs", json={
            "model": "loramill/tiny-llama", "training_file": upload_ok(tenant.client)["id"]})
        ids.append(response.json()["id"])
    proc, _, err = start(tenant, stack.api_url, tmp_path, "jobs", "wait", ids[0],
                         "--cancel-on-exit", "--progress-interval", "1")
    until(lambda: "queued for" in err.read_text(), 60, "the first progress line")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert f"cancelled {ids[0]}" in err.read_text()

    timed = subprocess.run(
        [sys.executable, "-m", "loramill.cli", "jobs", "wait", ids[1], "--timeout", "2",
         "--cancel-on-exit"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "LORAMILL_API_KEY": tenant.key,
             "LORAMILL_BASE_URL": stack.api_url})
    assert timed.returncode == 4 and "timed out" in timed.stderr
    for job_id in ids:
        assert tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == \
            "cancelled"


def test_a_timeout_says_the_job_goes_on(stack: StackInfo, queued_job: str,
                                        tenant: TenantHandle) -> None:
    timed = subprocess.run(
        [sys.executable, "-m", "loramill.cli", "--json", "jobs", "wait", queued_job,
         "--timeout", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "LORAMILL_API_KEY": tenant.key,
             "LORAMILL_BASE_URL": stack.api_url})
    assert timed.returncode == 4
    assert "goes on" in timed.stderr and f"loramill jobs cancel {queued_job}" in timed.stderr
    # --json: progress went to stderr, nothing but JSON (here: nothing) to stdout
    assert f"{queued_job}: queued" in timed.stderr and timed.stdout == ""


def test_a_repeated_create_with_an_idempotency_key_makes_one_job(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    """A CI step retried with the same key (a local path: uploaded once too) answers the
    first job; another key makes another."""
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"messages": [{"role": "user", "content": "Hi"}, '
                     b'{"role": "assistant", "content": "Hello."}]}\n')
    env = {**os.environ, "LORAMILL_API_KEY": tenant.key, "LORAMILL_BASE_URL": stack.api_url}

    def create(key: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "loramill.cli", "--json", "jobs", "create", "--model",
             "loramill/tiny-llama", "--training-file", str(data), "--idempotency-key", key],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["id"])

    first, again, other = create("ci-run-1"), create("ci-run-1"), create("ci-run-2")
    try:
        assert first == again != other
        jobs = tenant.client.get("/v1/fine_tuning/jobs").json()["data"]
        assert sorted(j["id"] for j in jobs) == sorted([first, other])
        assert len(tenant.client.get("/v1/files").json()["data"]) == 2
    finally:
        for job_id in (first, other):
            tenant.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
