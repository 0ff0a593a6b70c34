"""Building an export a tenant asked for (core/adapters/exports.py), on a worker of the
base model's class: the version's adapter files fetched and sha256-checked, the export
built (worker/training/export.py), uploaded beside the version with an export manifest,
and the row marked ``succeeded``; any failure marks it ``failed`` with the reason."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, update

from core.adapters.exports import MANIFEST
from core.adapters.models import AdapterExport, AdapterVersion
from core.base_models import repository as model_repo
from core.kit.db import tenant_scope
from core.kit.orm import utcnow
from core.kit.settings import get_settings
from core.kit.storage import file_entries, get_storage
from core.lineage.service import ADAPTER_FILES
from worker.runner import public
from worker.ticker import Ticker

log = logging.getLogger("loramill.worker")


def run_export(export_id: str, tenant_id: str) -> str:
    with tenant_scope(tenant_id) as session:
        row = session.get(AdapterExport, export_id, with_for_update=True)
        if row is None or row.status != "queued":
            return "not-queued"  # done, or taken by another worker
        version = session.get(AdapterVersion, row.version_id)
        base = model_repo.get(session, version.base_model) if version else None
        if version is None or version.deleted_at is not None or base is None:
            row.status, row.finished_at = "failed", utcnow()
            row.error = {"code": "version_gone", "message": "the version was deleted"}
            return "failed"
        row.status, row.started_at = "running", utcnow()
        row.attempt += 1
        row.heartbeat_at = func.now()  # database time, as every beat and the sweep use
        attempt = row.attempt
        job = {"format": row.format, "prefix": row.object_prefix, "version": version.version,
               "version_prefix": version.object_prefix, "files": list(version.files),
               "base_uri": base.source_uri, "base_files": base.files, "base_model": base.id,
               "adapter": version.manifest.get("adapter")}
    heartbeat = Ticker("export heartbeat", get_settings().heartbeat_seconds,
                       lambda: _beat(export_id, tenant_id, attempt)).start()
    try:
        files = _build(job)
    except Exception as exc:
        log.exception("export %s failed", export_id)
        _finish(export_id, tenant_id, attempt, status="failed", error={
            "code": "export_failed", "message": public(f"{type(exc).__name__}: {exc}")})
        return "failed"
    finally:
        heartbeat.stop()
    _finish(export_id, tenant_id, attempt, status="succeeded", files=files)
    return "succeeded"


def _beat(export_id: str, tenant_id: str, attempt: int) -> None:
    """This worker still builds the export (the sweep re-queues one whose beat stops)."""
    with tenant_scope(tenant_id) as session:
        session.execute(update(AdapterExport).where(
            AdapterExport.id == export_id, AdapterExport.attempt == attempt,
            AdapterExport.status == "running").values(heartbeat_at=func.now()))


def _build(job: dict[str, Any]) -> list[dict[str, Any]]:
    from core.base_models.models import BaseModel
    from core.base_models.service import local_dir
    from worker.training.export import gguf_adapter, merge

    storage = get_storage()
    base_dir = local_dir(BaseModel(id=job["base_model"], source_uri=job["base_uri"],
                                   files=job["base_files"]), storage=storage)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        work = Path(tmp)
        adapter = work / "adapter"
        storage.download_verified(job["version_prefix"], [
            f for f in job["files"] if f["name"] in ADAPTER_FILES], adapter)
        out = work / "out"
        out.mkdir()
        if job["format"] == "merged":
            paths = merge(base_dir, adapter, out)
        else:
            paths = [gguf_adapter(base_dir, adapter, out / "adapter.gguf")]
        entries = file_entries(paths)
        manifest = json.dumps({
            "format": job["format"], "adapter": job["adapter"], "version": job["version"],
            "base_model": job["base_model"], "files": entries,
            "created_at": utcnow().isoformat()}, indent=2)
        (out / MANIFEST).write_text(manifest)
        uploaded = [*paths, out / MANIFEST]
        for path in uploaded:
            storage.upload_file(path, job["prefix"] + path.name)
        return file_entries(uploaded)


def _finish(export_id: str, tenant_id: str, attempt: int, *, status: str,
            files: list[dict[str, Any]] | None = None,
            error: dict[str, Any] | None = None) -> None:
    with tenant_scope(tenant_id) as session:
        row = session.get(AdapterExport, export_id, with_for_update=True)
        if row is None or row.status != "running" or row.attempt != attempt:
            return  # asked again or re-queued meanwhile: that attempt decides
        row.status, row.files, row.error, row.finished_at = status, files or [], error, utcnow()
