"""A job that succeeds reaches its tenant's endpoint as ``fine_tuning.job.succeeded``,
signed, sent by the scheduler process on its own (no test code delivers it)."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.conftest import TenantHandle, wait_until
from tests.e2e.conftest import wait_for
from tests.e2e.test_training import CAPITALS, chat, start
from tests.integration.api.helpers import jsonl
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]


def test_the_scheduler_delivers_a_succeeded_job(tenant: TenantHandle) -> None:
    receiver = Receiver(statuses=[502])  # the first attempt fails: retried
    try:
        endpoint = tenant.client.post("/v1/webhook_endpoints",
                                      json={"url": receiver.url}).json()
        job = start(tenant, jsonl(*(chat(c, a) for c, a in CAPITALS)), method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
        assert wait_for(tenant.client, job["id"])["status"] == "succeeded"
        wait_until(lambda: len(receiver.received) >= 2, "the webhook's retried delivery", 60)
        event = Webhook(endpoint["signing_secret"]).verify(receiver.received[-1].body,
                                                   receiver.received[-1].headers)
        assert event["type"] == "fine_tuning.job.succeeded"
        assert event["data"] == {"id": job["id"]}
        log = tenant.client.get(
            f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
        assert [(d["status"], d["attempts"]) for d in log] == [("succeeded", 2)]
    finally:
        receiver.close()
