"""Base models in object storage: `register-model --upload` copies a model directory to
the bucket (or a prefix already there is registered), with every file's sha256; the
worker fetches it into its own verified cache to train, the API its tokenizer to
estimate: no machine needs the model at a host path. A tampered file fails the job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.base_models.models import BaseModel
from core.kit.db import admin_scope
from core.kit.storage import get_storage
from tests.conftest import ROOT, TenantHandle
from tests.e2e.conftest import all_events, wait_for
from tests.e2e.test_training import CAPITALS, chat
from tests.integration.api.helpers import jsonl, upload_ok

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
IDS = ("test/s3-tiny", "test/s3-again", "test/s3-tampered", "test/s3-fetch")


def server_cli(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def register(*args: str) -> subprocess.CompletedProcess[str]:
    return server_cli("register-model", *args)


def row(model_id: str) -> BaseModel:
    with admin_scope() as session:
        found = session.get(BaseModel, model_id)
        assert found is not None
        return found


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny model somewhere only this test process knows (deleted before training)."""
    copy = tmp_path_factory.mktemp("upload") / "tiny"
    shutil.copytree(ROOT / ".loramill-test-models" / "tiny-llama", copy)
    yield copy
    with admin_scope() as session:
        for model_id in IDS:
            model = session.get(BaseModel, model_id)
            if model is not None:
                model.enabled = False


def job(tenant: TenantHandle, model: str) -> dict[str, object]:
    response = tenant.client.post("/v1/fine_tuning/jobs", json={
        "model": model, "training_file": upload_ok(tenant.client, jsonl(
            *(chat(c, a) for c, a in CAPITALS)))["id"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}})
    assert response.status_code == 200, response.text
    return wait_for(tenant.client, response.json()["id"])


def test_a_model_uploaded_to_the_bucket_trains_and_estimates_without_its_path(
        model_dir: Path, tenant: TenantHandle) -> None:
    done = register(IDS[0], str(model_dir), "--upload")
    assert done.returncode == 0, done.stderr
    stored = row(IDS[0])
    assert stored.source_uri == f"s3://{get_storage().bucket}/models/{IDS[0]}/"
    assert stored.files and {f["name"] for f in stored.files} >= {"config.json",
                                                                   "model.safetensors"}
    assert all(len(f["sha256"]) == 64 for f in stored.files)
    # the prefix itself registers too, to the same files
    again = register(IDS[1], stored.source_uri)
    assert again.returncode == 0, again.stderr
    assert row(IDS[1]).files == stored.files
    shutil.rmtree(model_dir)  # nothing reads the directory from here on

    estimate = tenant.client.post("/v1/fine_tuning/estimates", json={
        "model": IDS[0], "training_file": upload_ok(tenant.client)["id"]}).json()
    assert estimate["tokens"]["counted"] == "exact", estimate
    trained = job(tenant, IDS[0])
    assert trained["status"] == "succeeded", trained["error"]
    messages = [e["message"] for e in all_events(tenant.client, str(trained["id"]))]
    assert any(m.startswith(f"Fetching base model {IDS[0]} from object storage")
               for m in messages)


def test_a_tampered_model_file_fails_the_job(tenant: TenantHandle, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(ROOT / ".loramill-test-models" / "tiny-llama", copy)
    assert register(IDS[2], str(copy), "--upload").returncode == 0
    storage = get_storage()
    key = f"models/{IDS[2]}/model.safetensors"
    data = b"".join(storage.iter_object(key))
    storage.put_bytes(key, data[:-1] + bytes([data[-1] ^ 1]))
    failed = job(tenant, IDS[2])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "base_model_unreadable"  # type: ignore[index]
    assert "sha256" in failed["error"]["message"]  # type: ignore[index]


def test_pickles_and_foreign_buckets_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    refused = register("test/pickled", str(pickled), "--upload")
    assert refused.returncode == 2 and "safetensors" in refused.stderr
    foreign = register("test/foreign", "s3://someone-elses-bucket/models/x")
    assert foreign.returncode == 2 and "this deployment's bucket" in foreign.stderr


def test_fetch_model_puts_a_verified_copy_behind_a_fixed_path(tmp_path: Path) -> None:
    """What a serving engine's init container runs (infra/helm/loramill): the model from
    the bucket into the cache, sha256-checked, a fixed path linked to it; a tampered file
    links nothing."""
    copy = tmp_path / "tiny"
    shutil.copytree(ROOT / ".loramill-test-models" / "tiny-llama", copy)
    assert register(IDS[3], str(copy), "--upload").returncode == 0
    env = {"LORAMILL_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    link = tmp_path / "base"
    done = server_cli("fetch-model", IDS[3], "--link", str(link), env=env)
    assert done.returncode == 0, done.stderr
    fetched = Path(done.stdout.strip())
    assert fetched.is_relative_to(tmp_path / "cache") and link.resolve() == fetched
    assert (link / "model.safetensors").read_bytes() == \
        (ROOT / ".loramill-test-models" / "tiny-llama" / "model.safetensors").read_bytes()

    storage = get_storage()
    key = f"models/{IDS[3]}/model.safetensors"
    data = b"".join(storage.iter_object(key))
    storage.put_bytes(key, data[:-1] + bytes([data[-1] ^ 1]))
    other = tmp_path / "other"
    refused = server_cli("fetch-model", IDS[3], "--link", str(other),
                         env={"LORAMILL_MODEL_CACHE_DIR": str(tmp_path / "cache2")})
    assert refused.returncode == 1 and "sha256" in refused.stderr, refused.stderr
    assert not other.exists() and not any((tmp_path / "cache2").rglob("model.safetensors"))

    missing = server_cli("fetch-model", "test/never-registered", env=env)
    assert missing.returncode == 2 and "no base model" in missing.stderr
