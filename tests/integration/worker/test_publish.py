"""Publishing an adapter leaves nothing half-done (hardening issue, findings 7 and 14): it
uploads under a staging prefix and moves into place only with the version's row; a cancel
that came first wins; an S3 outage in the middle leaves no version files, and what its own
clean-up could not remove, the scheduler's storage clean-up does. Real PostgreSQL and S3;
the job is claimed in this process as a worker would."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from core.adapters.models import AdapterVersion
from core.kit.db import admin_scope
from core.kit.settings import get_settings
from core.kit.storage import StorageUnavailable, get_storage
from core.scheduling import service as scheduler
from devstack.stack import LocalStack
from tests.conftest import StackInfo, TenantHandle
from tests.integration.api.helpers import upload_ok
from worker import runner
from worker.training.recipe import TrainResult

# what a run hands to publish: no metrics rows, 10 trained tokens
RESULT = TrainResult(steps=1, trained_tokens=10, final_loss=0.0, valid_loss=None, history=[],
                     seconds=1.0)


def claimed_job(tenant: TenantHandle, suffix: str) -> runner.Claim:
    file_id = upload_ok(tenant.client)["id"]
    job = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": "loramill/tiny-llama", "training_file": file_id, "suffix": suffix}).json()
    claim = runner.claim(job["id"], tenant.id, "test-publisher")
    assert claim is not None
    return claim


def adapter_files(directory: Path, big_bytes: int = 0) -> Path:
    directory.mkdir()
    (directory / "README.md").write_text("# adapter\n")
    (directory / "adapter_config.json").write_text('{"r": 8}')
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(big_bytes or 1024))
    return directory


def objects(tenant: TenantHandle) -> list[str]:
    return [k for k in get_storage().list_keys(f"tenants/{tenant.id}/") if "/files/" not in k]


def version_rows(job_id: str) -> list[AdapterVersion]:
    with admin_scope() as session:
        return list(session.scalars(select(AdapterVersion).where(
            AdapterVersion.job_id == job_id)))


def test_a_publish_puts_every_file_in_place_and_removes_its_staging(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    claim = claimed_job(tenant, "placed")
    row = runner.publish(claim, adapter_files(tmp_path / "adapter"), RESULT, tmp_path)
    assert row.version == 1
    names = sorted(k.rsplit("/", 1)[-1] for k in objects(tenant))
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                     "manifest.json"]
    assert all("/adapters/placed/v1/" in k for k in objects(tenant))


def test_a_cancel_that_came_first_wins_and_nothing_is_published(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    claim = claimed_job(tenant, "cancelled-first")
    cancelled = tenant.client.post(f"/v1/fine_tuning/jobs/{claim.job_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    with pytest.raises(runner.LeaseLost):
        runner.publish(claim, adapter_files(tmp_path / "adapter"), RESULT, tmp_path)
    assert version_rows(claim.job_id) == [] and objects(tenant) == []
    assert tenant.client.get(f"/v1/fine_tuning/jobs/{claim.job_id}").json()["result_files"] == []


@pytest.fixture
def local_stack(stack: StackInfo) -> Iterator[LocalStack]:
    stack_ = LocalStack(get_settings())
    yield stack_
    stack_.up(pieces=("s3",), log=lambda _: None)


def test_an_s3_outage_mid_publish_leaves_no_version_files(
        stack: StackInfo, tenant: TenantHandle, local_stack: LocalStack,
        tmp_path: Path) -> None:
    claim = claimed_job(tenant, "outage")
    adapter = adapter_files(tmp_path / "adapter", big_bytes=48 * 1024 * 1024)

    def stop_s3_once_publishing() -> None:
        deadline = time.monotonic() + 60
        while not objects(tenant) and time.monotonic() < deadline:
            time.sleep(0.05)
        local_stack._stop_pid("s3")

    watcher = threading.Thread(target=stop_s3_once_publishing)
    watcher.start()
    try:
        with pytest.raises(StorageUnavailable) as failed:
            runner.publish(claim, adapter, RESULT, tmp_path)
    finally:
        watcher.join(90)
    assert "nothing was stored" in failed.value.message
    assert "http" not in failed.value.message and "tenants/" not in failed.value.message
    runner.finish(claim, "failed", "publish failed", values={"error": runner.explain(
        failed.value)})
    local_stack.up(pieces=("s3",), log=lambda _: None)
    assert version_rows(claim.job_id) == []
    assert not [k for k in objects(tenant) if "/adapters/" in k]
    with admin_scope() as session:  # what the failed clean-up left, the scheduler removes
        scheduler.StorageJanitor().run(session, get_storage(), get_settings())
    assert objects(tenant) == []


def test_abandoned_multipart_uploads_are_aborted(stack: StackInfo,
                                                 tenant: TenantHandle) -> None:
    storage = get_storage()
    key = f"tenants/{tenant.id}/files/abandoned.jsonl"
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=key)
    settings = get_settings().model_copy(update={"stale_upload_hours": 0})
    with admin_scope() as session:
        cleaned = scheduler.StorageJanitor().run(session, storage, settings)
    assert cleaned["aborted_uploads"] >= 1
    left = storage.client.list_multipart_uploads(Bucket=storage.bucket,
                                                 Prefix=f"tenants/{tenant.id}/")
    assert not left.get("Uploads")
