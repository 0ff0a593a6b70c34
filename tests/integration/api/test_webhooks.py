"""Webhook endpoints and deliveries: registration refuses addresses inside the network,
the secret is shown once, a job's end becomes a delivery in the transaction that ended
it, signed the Standard Webhooks way, retried with backoff, and logged. Deliveries are
sent here by calling the scheduler's own pass (``deliver_due``) against a real loopback
receiver (allowed by the test stack's ``LORAMILL_WEBHOOK_ALLOWED_HOSTS``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from core.webhooks.delivery import deliver_due
from tests.conftest import TenantHandle
from tests.integration.api.helpers import assert_error, upload_ok
from tests.webhook_receiver import Receiver

MODEL = "loramill/tiny-llama"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def cancelled_job(tenant: TenantHandle) -> str:
    file_id = upload_ok(tenant.client)["id"]
    job = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file_id}).json()
    assert tenant.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    return str(job["id"])


def deliveries(tenant: TenantHandle, endpoint: str) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = tenant.client.get(
        f"/v1/webhooks/{endpoint}/deliveries").json()["data"]
    return page


def deliver_until(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the delivery did not get there in time"
        deliver_due()
        time.sleep(0.1)


def test_an_endpoint_gets_its_jobs_end_signed_and_retried_until_it_answers(
        tenant: TenantHandle, receiver: Receiver) -> None:
    made = tenant.client.post("/v1/webhooks", json={"url": receiver.url,
                                                    "description": "ci"}).json()
    assert made["object"] == "webhook_endpoint" and made["secret"].startswith("whsec_")
    assert made["events"] == ["fine_tuning.job.succeeded", "fine_tuning.job.failed",
                              "fine_tuning.job.cancelled"]
    assert tenant.client.get(f"/v1/webhooks/{made['id']}").json()["secret"] is None

    receiver.statuses = [500, 503]  # two failures, then 200
    job_id = cancelled_job(tenant)
    (pending,) = deliveries(tenant, made["id"])
    assert (pending["status"], pending["event_type"]) == ("pending",
                                                          "fine_tuning.job.cancelled")
    deliver_until(lambda: deliveries(tenant, made["id"])[0]["status"] != "pending")

    (done,) = deliveries(tenant, made["id"])
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("succeeded", 3,
                                                                            200)
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {done["id"]}
    for got in receiver.received:  # each attempt verifies with the secret shown once
        event = Webhook(made["secret"]).verify(got.body, got.headers)
        assert event == done["payload"]
    assert event["type"] == "fine_tuning.job.cancelled" and event["data"] == {"id": job_id}
    assert event["object"] == "event" and event["id"].startswith("evt")
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60


def test_an_endpoint_that_never_answers_is_given_up_on(tenant: TenantHandle,
                                                        receiver: Receiver) -> None:
    made = tenant.client.post("/v1/webhooks", json={"url": receiver.url}).json()
    receiver.statuses = [500] * 10
    cancelled_job(tenant)
    deliver_until(lambda: deliveries(tenant, made["id"])[0]["status"] == "failed")
    (failed,) = deliveries(tenant, made["id"])
    assert (failed["attempts"], failed["last_error"]) == (3, "HTTP 500")  # max attempts: 3


def test_only_subscribed_events_and_only_live_endpoints_get_deliveries(
        tenant: TenantHandle, other_tenant: TenantHandle, receiver: Receiver) -> None:
    only_success = tenant.client.post("/v1/webhooks", json={
        "url": receiver.url, "events": ["fine_tuning.job.succeeded"]}).json()
    gone = tenant.client.post("/v1/webhooks", json={"url": receiver.url}).json()
    assert tenant.client.delete(f"/v1/webhooks/{gone['id']}").status_code == 200
    cancelled_job(tenant)
    assert deliveries(tenant, only_success["id"]) == []
    assert deliveries(tenant, gone["id"]) == []
    assert [e["id"] for e in tenant.client.get("/v1/webhooks").json()["data"]] == [
        only_success["id"]]
    # another tenant's endpoint and log are not found
    assert_error(other_tenant.client.get(f"/v1/webhooks/{only_success['id']}"), 404)
    assert_error(other_tenant.client.get(f"/v1/webhooks/{only_success['id']}/deliveries"),
                 404)
    assert_error(other_tenant.client.delete(f"/v1/webhooks/{only_success['id']}"), 404)


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"url": "http://10.0.0.5/hook"}, "url", "invalid_webhook_url"),
    ({"url": "http://169.254.169.254/latest/meta-data"}, "url", "invalid_webhook_url"),
    ({"url": "http://[::1]:9/hook"}, "url", "invalid_webhook_url"),
    ({"url": "file:///etc/passwd"}, "url", "invalid_webhook_url"),
    ({"url": "https://8.8.8.8/h", "events": ["fine_tuning.job.started"]}, "events",
     "invalid_event"),
    ({"url": "https://8.8.8.8/h", "events": []}, "events", None),
    ({"url": "https://8.8.8.8/h", "secret": "mine"}, "secret", None),
    ({}, "url", None),
])
def test_bad_endpoints_are_400_and_store_nothing(tenant: TenantHandle, body: dict[str, Any],
                                                 param: str, code: str | None) -> None:
    assert_error(tenant.client.post("/v1/webhooks", json=body), 400, param=param, code=code)
    assert tenant.client.get("/v1/webhooks").json()["data"] == []
