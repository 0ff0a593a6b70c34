"""Webhook endpoints (OpenAI's webhook-endpoints API, driven with the official client)
and deliveries: registration refuses addresses inside the network, the secret is shown
once, a job's end becomes a delivery in the transaction that ended
it, signed the Standard Webhooks way, retried with backoff, and logged. Deliveries are
sent here by calling the scheduler's own pass (``deliver_due``) against a real loopback
receiver (allowed by the test stack's ``LORAMILL_WEBHOOK_ALLOWED_HOSTS``)."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from standardwebhooks import Webhook

from core.webhooks.delivery import deliver_due
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import assert_error, upload_ok
from tests.webhook_receiver import Receiver

MODEL = "loramill/tiny-llama"


def cancelled_job(tenant: TenantHandle) -> str:
    file_id = upload_ok(tenant.client)["id"]
    job = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file_id}).json()
    assert tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    return str(job["id"])


def deliveries(tenant: TenantHandle, endpoint: str) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = tenant.client.get(
        f"/v1/webhook_endpoints/{endpoint}/deliveries").json()["data"]
    return page


def openai_client(stack: StackInfo, tenant: TenantHandle) -> openai.OpenAI:
    return openai.OpenAI(api_key=tenant.key, base_url=f"{stack.api_url}/v1", max_retries=0)


def deliver_until(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the delivery did not get there in time"
        deliver_due()
        time.sleep(0.1)


def test_an_endpoint_gets_its_jobs_end_signed_and_retried_until_it_answers(
        stack: StackInfo, tenant: TenantHandle, receiver: Receiver) -> None:
    client = openai_client(stack, tenant)
    made = client.webhooks.create(url=receiver.url, name="ci", event_types=[
        "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"])
    assert made.object == "webhook_endpoint" and made.signing_secret.startswith("whsec_")
    shown = client.webhooks.retrieve(made.id)
    assert shown.name == "ci" and shown.signing_secret_hint == made.signing_secret_hint
    assert tenant.client.get(f"/v1/webhook_endpoints/{made.id}").json()[
        "signing_secret"] is None  # shown once

    receiver.statuses = [500, 503]  # two failures, then 200
    job_id = cancelled_job(tenant)
    (pending,) = deliveries(tenant, made.id)
    assert (pending["status"], pending["event_type"]) == ("pending",
                                                          "fine_tuning.job.cancelled")
    deliver_until(lambda: deliveries(tenant, made.id)[0]["status"] != "pending")

    (done,) = deliveries(tenant, made.id)
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("succeeded", 3,
                                                                            200)
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {done["id"]}
    for got in receiver.received:  # each attempt verifies with the secret shown once
        assert Webhook(made.signing_secret).verify(got.body, got.headers) == done["payload"]
    # and with OpenAI's own verifier, as an OpenAI fine-tuning webhook event
    event = client.webhooks.unwrap(got.body, got.headers, secret=made.signing_secret)
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job_id
    assert event.object == "event" and event.id.startswith("evt")
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60


def test_rotation_update_test_and_delete_through_the_official_client(
        stack: StackInfo, tenant: TenantHandle, receiver: Receiver) -> None:
    client = openai_client(stack, tenant)
    made = client.webhooks.create(url=receiver.url, name="a",
                                  event_types=["fine_tuning.job.succeeded"])
    updated = client.webhooks.update(made.id, name="b",
                                     event_types=["fine_tuning.job.cancelled"])
    assert (updated.name, updated.event_types) == ("b", ["fine_tuning.job.cancelled"])
    rotated = client.webhooks.rotate_secret(made.id, keep_old_secret_active_for_24_hours=True)
    assert rotated.signing_secret != made.signing_secret
    tested = client.webhooks.test(made.id, event_type="fine_tuning.job.succeeded")
    assert (tested.status_code, tested.webhook_endpoint_id) == (200, made.id)
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2  # both secrets sign
    for secret in (made.signing_secret, rotated.signing_secret):
        assert client.webhooks.unwrap(got.body, got.headers, secret=secret).type == \
            "fine_tuning.job.succeeded"
    client.webhooks.rotate_secret(made.id)  # the old one stops at once
    client.webhooks.test(made.id, event_type="fine_tuning.job.failed")
    assert len(receiver.received[-1].headers["webhook-signature"].split(" ")) == 1
    assert [e.id for e in client.webhooks.list()] == [made.id]
    deleted = client.webhooks.delete(made.id)
    assert (deleted.id, deleted.deleted) == (made.id, True)
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(made.id)
    # the shorter path is the same API
    short = tenant.client.post("/v1/webhooks", json={"url": receiver.url}).json()
    assert tenant.client.get(f"/v1/webhook_endpoints/{short['id']}").json()["id"] == \
        short["id"]


def test_an_endpoint_that_never_answers_is_given_up_on(tenant: TenantHandle,
                                                        receiver: Receiver) -> None:
    made = tenant.client.post("/v1/webhook_endpoints", json={"url": receiver.url}).json()
    receiver.statuses = [500] * 10
    cancelled_job(tenant)
    deliver_until(lambda: deliveries(tenant, made["id"])[0]["status"] == "failed")
    (failed,) = deliveries(tenant, made["id"])
    assert (failed["attempts"], failed["last_error"]) == (3, "HTTP 500")  # max attempts: 3


def test_only_subscribed_events_and_only_live_endpoints_get_deliveries(
        tenant: TenantHandle, other_tenant: TenantHandle, receiver: Receiver) -> None:
    only_success = tenant.client.post("/v1/webhook_endpoints", json={
        "url": receiver.url, "event_types": ["fine_tuning.job.succeeded"]}).json()
    gone = tenant.client.post("/v1/webhook_endpoints", json={"url": receiver.url}).json()
    assert tenant.client.delete(f"/v1/webhook_endpoints/{gone['id']}").status_code == 200
    cancelled_job(tenant)
    assert deliveries(tenant, only_success["id"]) == []
    assert deliveries(tenant, gone["id"]) == []
    assert [e["id"] for e in tenant.client.get("/v1/webhook_endpoints").json()["data"]] == [
        only_success["id"]]
    # another tenant's endpoint and log are not found
    theirs = f"/v1/webhook_endpoints/{only_success['id']}"
    for method, path in (("GET", theirs), ("GET", f"{theirs}/deliveries"),
                         ("DELETE", theirs), ("POST", f"{theirs}/rotate_secret")):
        assert_error(other_tenant.client.request(method, path), 404)


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"url": "http://10.0.0.5/hook"}, "url", "invalid_webhook_url"),
    ({"url": "http://169.254.169.254/latest/meta-data"}, "url", "invalid_webhook_url"),
    ({"url": "http://[::1]:9/hook"}, "url", "invalid_webhook_url"),
    ({"url": "file:///etc/passwd"}, "url", "invalid_webhook_url"),
    ({"url": "https://8.8.8.8/h", "event_types": ["batch.completed"]}, "event_types",
     "invalid_event_type"),
    ({"url": "https://8.8.8.8/h", "event_types": []}, "event_types", None),
    ({"url": "https://8.8.8.8/h", "signing_secret": "mine"}, "signing_secret", None),
    ({}, "url", None),
])
def test_bad_endpoints_are_400_and_store_nothing(tenant: TenantHandle, body: dict[str, Any],
                                                 param: str, code: str | None) -> None:
    assert_error(tenant.client.post("/v1/webhook_endpoints", json=body), 400, param=param,
                 code=code)
    assert tenant.client.get("/v1/webhook_endpoints").json()["data"] == []


def test_the_sdk_and_cli_manage_endpoints(stack: StackInfo, tenant: TenantHandle,
                                          receiver: Receiver) -> None:
    import json
    import os
    import subprocess
    import sys

    import loramill

    from tests.conftest import ROOT

    sdk = loramill.Client(api_key=tenant.key, base_url=stack.api_url)
    made = sdk.webhooks.create(receiver.url, event_types=["fine_tuning.job.cancelled"])
    assert made["signing_secret"].startswith("whsec_")
    env = {**os.environ, "LORAMILL_BASE_URL": stack.api_url, "LORAMILL_API_KEY": tenant.key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    listed = cli("webhooks", "list")
    assert listed.stdout.strip() == f"{made['id']}  {receiver.url}  fine_tuning.job.cancelled"
    tested = cli("webhooks", "test", made["id"], "--event-type", "fine_tuning.job.failed")
    assert tested.returncode == 0 and "answered 200" in tested.stdout
    cancelled_job(tenant)
    deliver_until(lambda: deliveries(tenant, made["id"])[0]["status"] == "succeeded")
    log = json.loads(cli("--json", "webhooks", "deliveries", made["id"]).stdout)
    assert [(d["event_type"], d["status"]) for d in log] == [("fine_tuning.job.cancelled",
                                                              "succeeded")]
    created = cli("webhooks", "create", "http://10.0.0.9/x")
    assert created.returncode == 2 and "private" in created.stderr
    assert "Traceback" not in created.stderr
    assert cli("webhooks", "delete", made["id"]).returncode == 0
    assert list(sdk.webhooks.list()) == []
