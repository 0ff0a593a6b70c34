"""Adapter lifecycle: aliases per adapter (production, staging, any name) promoted and
rolled back through the API and the CLI, audited; ``adapter@alias`` for downloads,
models and serving; deleting a version refused while an alias points at it; retention
pruning old unaliased versions. Real worker, real S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.kit.settings import get_settings
from core.kit.storage import get_storage
from core.scheduling import service as scheduler
from tests.conftest import ROOT, AdminHandle, StackInfo, TenantHandle
from tests.e2e.conftest import wait_for
from tests.e2e.test_training import CAPITALS, chat, start
from tests.integration.api.helpers import assert_error, jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

DATA = jsonl(*(chat(c, a) for c, a in CAPITALS))
FAST = {"method": {"type": "supervised", "supervised": {"hyperparameters": {
    "n_epochs": 1, "batch_size": 2}}}}


def publish(tenant: TenantHandle, suffix: str) -> dict[str, Any]:
    job = wait_for(tenant.client, start(tenant, DATA, suffix=suffix, **FAST)["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def test_aliases_promote_roll_back_and_guard_their_versions(
        stack: StackInfo, tenant: TenantHandle, other_tenant: TenantHandle,
        admin: AdminHandle, tmp_path: Path) -> None:
    v1, _ = publish(tenant, "bot"), publish(tenant, "bot")
    c = tenant.client
    promoted = c.put("/v1/adapters/bot/aliases/production", json={"version": 1}).json()
    assert (promoted["model"], promoted["version"], promoted["history"]) == (
        "bot@production", 1, [])
    assert c.put("/v1/adapters/bot/aliases/staging", json={"version": 2}).status_code == 200
    moved = c.put("/v1/adapters/bot/aliases/production", json={"version": 2}).json()
    assert (moved["version"], moved["previous_version"], moved["history"]) == (2, 1, [1])
    back = c.post("/v1/adapters/bot/aliases/production/rollback").json()
    assert (back["version"], back["previous_version"], back["history"]) == (1, 2, [])
    assert_error(c.post("/v1/adapters/bot/aliases/production/rollback"), 400,
                 code="nothing_to_roll_back")
    assert c.get("/v1/adapters").json()["data"][0]["aliases"] == {"production": 1,
                                                                  "staging": 2}
    versions = {v["version"]: v["aliases"] for v in
                c.get("/v1/adapters/bot/versions").json()["data"]}
    assert versions == {1: ["production"], 2: ["staging"]}

    # adapter@alias is a model: listed, retrieved, downloadable, callable
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert {"bot@production", "bot@staging"} <= set(ids)
    model = c.get("/v1/models/bot@production").json()
    assert (model["adapter"], model["adapter_version"]) == ("bot", 1)
    download = c.get("/v1/models/bot@production/download").json()
    assert download["version"] == 1
    manifest = next(f for f in download["files"] if f["name"] == "manifest.json")
    assert json.loads(httpx.get(manifest["url"]).content)["job_id"] == v1["id"]
    answered = c.post("/v1/chat/completions", json={
        "model": "bot@production", "messages": [{"role": "user", "content": "hi"}]})
    assert answered.status_code in (200, 503), answered.text  # 503: no engine here
    if answered.status_code == 503:
        assert answered.json()["error"]["code"] == "engine_unavailable"

    # another tenant sees none of it
    assert_error(other_tenant.client.get("/v1/models/bot@production"), 404)
    assert_error(other_tenant.client.put("/v1/adapters/bot/aliases/production",
                                         json={"version": 1}), 404)
    # bad input
    assert_error(c.put("/v1/adapters/bot/aliases/prod%20uction", json={"version": 1}), 400,
                 code="invalid_alias")
    assert_error(c.put("/v1/adapters/bot/aliases/production", json={"version": 9}), 404,
                 param="version")
    assert_error(c.put("/v1/adapters/bot/aliases/production", json={"version": "x"}), 400)

    # a version an alias points at cannot be deleted; once it is free it can, files and all
    assert_error(c.delete("/v1/adapters/bot/versions/1"), 409, code="version_aliased",
                 contains="production")
    assert c.delete("/v1/adapters/bot/aliases/production").status_code == 200
    deleted = c.delete("/v1/adapters/bot/versions/1").json()
    assert deleted["deleted"] is True
    assert get_storage().list_keys(f"tenants/{tenant.id}/adapters/bot/v1/") == []
    assert [v["version"] for v in c.get("/v1/adapters/bot/versions").json()["data"]] == [2]
    assert_error(c.get("/v1/adapters/bot/versions/1"), 404)
    assert_error(c.get(f"/v1/models/{v1['fine_tuned_model']}"), 404)
    continued = c.post("/v1/fine_tuning/jobs", json={
        "model": v1["fine_tuned_model"], "training_file": v1["training_file"]})
    assert_error(continued, 400, code="model_not_found")
    assert publish(tenant, "bot")["fine_tuned_model"]  # numbering goes on: v3
    assert [v["version"] for v in c.get("/v1/adapters/bot/versions").json()["data"]] == [3, 2]

    # every change is in the audit log
    adapter_id = c.get("/v1/adapters").json()["data"][0]["id"]
    actions = [e["action"] for e in admin.client.get(
        "/v1/admin/audit_log", params={"target_id": adapter_id}).json()["data"]]
    assert actions[::-1] == ["adapter.alias.set", "adapter.alias.set", "adapter.alias.set",
                             "adapter.alias.rollback", "adapter.alias.delete",
                             "adapter.version.delete"]


def test_the_cli_promotes_rolls_back_and_downloads_by_alias(
        stack: StackInfo, tenant: TenantHandle, tmp_path: Path) -> None:
    publish(tenant, "cli-bot")
    publish(tenant, "cli-bot")
    env = {**os.environ, "LORAMILL_BASE_URL": stack.api_url, "LORAMILL_API_KEY": tenant.key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert cli("adapters", "promote", "cli-bot", "production", "1").stdout.strip() == \
        "cli-bot@production -> v1"
    assert cli("adapters", "promote", "cli-bot", "production", "2").stdout.strip() == \
        "cli-bot@production -> v2  (was v1)"
    assert cli("adapters", "rollback", "cli-bot", "production").stdout.strip() == \
        "cli-bot@production -> v1  (was v2)"
    assert cli("adapters", "aliases", "cli-bot").stdout.strip() == "cli-bot@production -> v1"
    got = cli("adapters", "download", "cli-bot@production", "--dest", str(tmp_path / "a"))
    assert got.returncode == 0, got.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["version"] == 1
    refused = cli("adapters", "delete", "cli-bot", "1")
    assert refused.returncode == 2 and "production" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli("adapters", "unalias", "cli-bot", "production").returncode == 0
    assert cli("adapters", "delete", "cli-bot", "1").returncode == 0


def test_retention_prunes_old_versions_no_alias_points_at(tenant: TenantHandle) -> None:
    for _ in range(3):
        publish(tenant, "kept")
    c = tenant.client
    assert c.put("/v1/adapters/kept/aliases/production", json={"version": 1}).status_code == 200
    pruned = scheduler.prune_versions(get_storage(), get_settings().model_copy(
        update={"adapter_keep_versions": 1}))
    assert pruned >= 1  # version 2 here (other tenants' old versions go too)
    assert [v["version"] for v in c.get("/v1/adapters/kept/versions").json()["data"]] == [3, 1]
    assert get_storage().list_keys(f"tenants/{tenant.id}/adapters/kept/v2/") == []
    assert get_storage().list_keys(f"tenants/{tenant.id}/adapters/kept/v1/")
