"""Exports of a published version, built by the real worker: a merged model (loads with
transformers alone and computes what base + adapter computes) and a GGUF LoRA adapter
for llama.cpp (its tensors the adapter's, under llama.cpp's names), each downloadable with
sha256s in an export manifest."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import select

from tests.conftest import ROOT, TenantHandle, wait_until
from tests.e2e.conftest import first_metrics, wait_for
from tests.e2e.test_training import CAPITALS, chat, start
from tests.integration.api.helpers import assert_error, jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

MODEL_DIR = ROOT / ".loramill-test-models" / "tiny-llama"
DATA = jsonl(*(chat(c, a) for c, a in CAPITALS))
EXPORTS = "/v1/adapters/exp/versions/1/exports"


def fetch(download: dict[str, Any], into: Path) -> dict[str, Any]:
    """Every file, checked against the sha256 the API lists and the export manifest."""
    into.mkdir(parents=True)
    for f in download["files"]:
        body = httpx.get(f["url"]).content
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
        (into / f["name"]).write_bytes(body)
    manifest: dict[str, Any] = json.loads((into / "export_manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((into / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    return manifest


def finished(tenant: TenantHandle, format_: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(lambda: (lambda e: e if e["status"] in (
        "succeeded", "failed") else None)(tenant.client.get(f"{EXPORTS}/{format_}").json()),
        f"the {format_} export", 180)
    return found


def test_a_version_exports_as_a_merged_model_and_a_gguf_adapter(
        tenant: TenantHandle, other_tenant: TenantHandle, tmp_path: Path) -> None:
    job = wait_for(tenant.client, start(tenant, DATA, suffix="exp", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}})["id"])
    assert job["status"] == "succeeded", job["error"]
    c = tenant.client
    # while the only worker trains another job, the export waits: not downloadable yet
    busy = start(tenant, jsonl(*(chat(c_, a) for c_, a in CAPITALS * 8)), method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50}}})
    first_metrics(c, busy["id"])
    merged = c.post(EXPORTS, json={"format": "merged"}).json()
    assert (merged["object"], merged["status"], merged["format"]) == ("adapter.export",
                                                                     "queued", "merged")
    assert c.post(EXPORTS, json={"format": "merged"}).json()["id"] == merged["id"]
    assert_error(c.get(f"{EXPORTS}/merged/download"), 409, code="export_not_ready")
    c.post(f"/v1/fine_tuning/jobs/{busy['id']}/cancel")
    gguf_export = c.post(EXPORTS, json={"format": "gguf"}).json()
    assert finished(tenant, "merged")["status"] == "succeeded"
    assert finished(tenant, "gguf")["status"] == "succeeded", gguf_export
    assert [e["format"] for e in c.get(EXPORTS).json()["data"]] == ["gguf", "merged"]

    # another tenant sees none of it; bad input is a 400
    assert_error(other_tenant.client.get(f"{EXPORTS}/merged"), 404)
    assert_error(other_tenant.client.post(EXPORTS, json={"format": "gguf"}), 404)
    assert_error(c.post(EXPORTS, json={"format": "onnx"}), 400, param="format")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for f in c.get("/v1/adapters/exp/versions/1/download").json()["files"]:
        (adapter / f["name"]).write_bytes(httpx.get(f["url"]).content)

    # the merged model: transformers alone, the same logits as base + adapter (full
    # precision: the merge is made in the base's dtype, not the 4-bit training form)
    manifest = fetch(c.get(f"{EXPORTS}/merged/download").json(), tmp_path / "merged")
    assert (manifest["format"], manifest["version"]) == ("merged", 1)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        alone = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR))
        plain = base(ids).logits
        both = PeftModel.from_pretrained(base, str(adapter))(ids).logits
    assert float((alone - both).abs().max()) < 1e-4
    assert float((alone - plain).abs().max()) > 1e-3  # the adapter is in there

    # the GGUF adapter: llama.cpp's keys, and the adapter's A and B under its names
    fetch(c.get(f"{EXPORTS}/gguf/download").json(), tmp_path / "gguf")
    import gguf
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "adapter.gguf"))
    text = {k: bytes(reader.fields[k].parts[-1]).decode()
            for k in ("general.architecture", "general.type", "adapter.type")}
    assert text == {"general.architecture": "llama", "general.type": "adapter",
                    "adapter.type": "lora"}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == config["lora_alpha"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(weights)
    a = weights["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    for name, expected in (("blk.1.attn_q.weight.lora_a", a),
                           ("blk.1.ffn_down.weight.lora_b", b)):
        found = torch.from_numpy(tensors[name].data.copy()).reshape(expected.shape)
        assert torch.equal(found, expected.float()), name


def test_the_cli_exports_and_downloads(tenant: TenantHandle, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    job = wait_for(tenant.client, start(tenant, DATA, suffix="cli-exp", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})["id"])
    assert job["status"] == "succeeded", job["error"]
    env = {**os.environ, "LORAMILL_BASE_URL": str(tenant.client.base_url),
           "LORAMILL_API_KEY": tenant.key}
    done = subprocess.run([sys.executable, "-m", "loramill.cli", "adapters", "export",
                           "cli-exp", "1", "--format", "gguf", "--wait", "--timeout", "180",
                           "--dest", str(tmp_path / "out")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adapter.gguf", "export_manifest.json"]


def test_an_export_whose_worker_died_is_built_again_without_asking(
        tenant: TenantHandle) -> None:
    """What a worker killed while building an export leaves: the row ``running`` with a
    heartbeat that stopped and no message anywhere (Redis hands an unacknowledged message
    back only after its 12-hour visibility timeout). The scheduler's sweep queues it anew
    and the worker builds it; a worker lost on it ``max_attempts`` times fails it."""
    from sqlalchemy import update

    from core.adapters.models import AdapterExport
    from core.kit.db import admin_scope
    from core.kit.orm import utcnow

    job = wait_for(tenant.client, start(tenant, DATA, suffix="lost-exp", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})["id"])
    assert job["status"] == "succeeded", job["error"]
    exports = "/v1/adapters/lost-exp/versions/1/exports"

    def ended(format_: str) -> dict[str, Any] | None:
        found: dict[str, Any] = tenant.client.get(f"{exports}/{format_}").json()
        return found if found["status"] in ("succeeded", "failed") else None

    for format_ in ("gguf", "merged"):
        tenant.client.post(exports, json={"format": format_})
    for format_ in ("gguf", "merged"):
        assert wait_until(partial(ended, format_), f"the first {format_} export",
                          180)["status"] == "succeeded"
    hour_ago = utcnow() - timedelta(hours=1)
    with admin_scope() as session:  # as a worker killed mid-build leaves them
        for format_, attempt in (("gguf", 1), ("merged", 3)):
            session.execute(update(AdapterExport).where(
                AdapterExport.tenant_id == tenant.id, AdapterExport.format == format_)
                .values(status="running", files=[], finished_at=None, attempt=attempt,
                        started_at=hour_ago, heartbeat_at=hour_ago))

    rebuilt = wait_until(lambda: ended("gguf"), "the lost gguf export, built again", 120)
    assert rebuilt["status"] == "succeeded", rebuilt
    assert [f["name"] for f in rebuilt["files"]] == ["adapter.gguf", "export_manifest.json"]
    gave_up = wait_until(lambda: ended("merged"), "the merged export to be given up", 60)
    assert gave_up["status"] == "failed" and gave_up["error"]["code"] == "worker_lost"
    assert "lost its worker 3 times" in gave_up["error"]["message"]
    with admin_scope() as session:
        row = session.scalars(select(AdapterExport).where(
            AdapterExport.tenant_id == tenant.id, AdapterExport.format == "gguf")).one()
        assert (row.attempt, row.status) == (2, "succeeded")
        assert row.heartbeat_at is not None and row.heartbeat_at > hour_ago
    # asking again gives a failed export a fresh allowance of workers
    again = tenant.client.post(exports, json={"format": "merged"}).json()
    assert again["status"] == "queued"
    assert wait_until(lambda: ended("merged"), "the merged export, asked again",
                      180)["status"] == "succeeded"
