"""Adapters: publishing a job's adapter as the next immutable version, reading versions,
and handing out presigned downloads.

Publishing is two steps, so that no lock is held while files travel: :func:`stage` uploads
the files under the job's staging prefix; :func:`publish_version`, inside the caller's
transaction (which holds the job row, fenced), numbers the version under the adapter's
row lock, copies the staged files into place with server-side copies, writes the manifest,
the version row and the metrics CSV's file row. Whatever fails, nothing is left half-done:
the caller removes the placed copies if its transaction does not commit, and
:func:`discard` removes the staging files either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.adapters import card
from core.adapters import repository as adapter_repo
from core.adapters.models import Adapter, AdapterAlias, AdapterVersion
from core.audit import service as audit
from core.files import service as file_service
from core.files.models import File
from core.jobs.models import FineTuningJob
from core.kit import ids
from core.kit.errors import Conflict, InvalidRequest, NotFound
from core.kit.orm import utcnow
from core.kit.storage import (
    NAME_MAX,
    NAME_PATTERN,
    Storage,
    adapter_prefix,
    file_entries,
    result_file_key,
    sha256_of,
    staging_prefix,
)
from core.tenants.scope import TenantId

DOWNLOAD_SECONDS = 15 * 60
log = logging.getLogger("loramill.adapters")


def get(session: Session, tenant_id: TenantId, name: str) -> Adapter:
    adapter = adapter_repo.get(session, tenant_id, name)
    if adapter is None:
        raise NotFound(f"no adapter named {name!r}", param="adapter")
    return adapter


def get_version(session: Session, tenant_id: TenantId, name: str, version: int, *,
                for_update: bool = False) -> tuple[Adapter, AdapterVersion]:
    """A version not deleted (locked until the transaction ends, with ``for_update``)."""
    adapter = get(session, tenant_id, name)
    row = adapter_repo.get_version(session, tenant_id, adapter, version,
                                   for_update=for_update)
    if row is None:
        raise NotFound(f"adapter {name!r} has no version {version}", param="version")
    return adapter, row


def download_urls(storage: Storage, prefix: str, entries: list[dict[str, Any]],
                  seconds: int = DOWNLOAD_SECONDS) -> tuple[int, list[dict[str, object]]]:
    """One presigned GET per file; each URL covers that object only and expires."""
    expires = int((utcnow() + timedelta(seconds=seconds)).timestamp())
    files = [{**f, "url": storage.presigned_get(prefix + str(f["name"]), seconds,
                                                filename=str(f["name"]))}
             for f in entries]
    return expires, files


# ----- naming ---------------------------------------------------------------------------


def adapter_name(model: str, suffix: str | None, parent: str | None = None) -> str:
    """The adapter a job publishes to: its suffix, else the adapter of the version it
    continues (its next version), else the base model's last path part."""
    return suffix or parent or model.rsplit("/", 1)[-1]


def fine_tuned_name(job: FineTuningJob, name: str) -> str:
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or name}:{job.id}"


# ----- publishing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """A job's adapter files uploaded under its staging prefix, and its metrics CSV
    uploaded as a result file (its row is written with the version)."""

    prefix: str
    files: list[dict[str, Any]]  # name, bytes, sha256
    result: File


def stage(storage: Storage, *, tenant_id: str, job_id: str, lease_token: str,
          adapter_dir: Path, metrics_csv: Path, metric_rows: int) -> Staged:
    """Upload a job's adapter and metrics without holding any lock (however long it takes).
    If this fails, what it uploaded is removed by :func:`discard` (or, when storage is
    down, by the scheduler's storage clean-up once the job has ended)."""
    prefix = staging_prefix(tenant_id, job_id, lease_token)
    paths = sorted(p for p in adapter_dir.iterdir() if p.is_file())
    files = file_entries(paths)
    result_id = ids.new_id(ids.FILE)
    result = file_service.result_file(
        tenant_id=tenant_id, file_id=result_id, key=result_file_key(tenant_id, result_id),
        filename="step_metrics.csv", size=metrics_csv.stat().st_size,
        sha256=sha256_of(metrics_csv), lines=metric_rows + 1)
    staged = Staged(prefix=prefix, files=files, result=result)
    try:
        for path in paths:
            storage.upload_file(path, prefix + path.name)
        storage.upload_file(metrics_csv, result.object_key)
    except BaseException:
        discard(storage, staged, published=False)
        raise
    return staged


def discard(storage: Storage, staged: Staged, *, published: bool) -> None:
    """Remove the staging copies; and the result file's object unless it was published."""
    keys = [staged.prefix + f["name"] for f in staged.files]
    storage.delete_quietly(*keys, *([] if published else [staged.result.object_key]))


def publish_version(session: Session, storage: Storage, job: FineTuningJob, staged: Staged,
                    *, name: str, manifest: dict[str, Any],
                    placed: list[str]) -> AdapterVersion:
    """The next version of adapter ``name`` from ``staged``, in the caller's transaction.
    ``job`` must be locked by the caller (fenced). Keys written into place are appended to
    ``placed``: the caller removes them if its transaction does not commit."""
    tenant_id = TenantId(job.tenant_id)
    adapter = adapter_repo.lock_or_create(session, tenant_id, name)
    version = adapter_repo.next_version(session, adapter)
    prefix = adapter_prefix(job.tenant_id, name, version)
    ft_name = fine_tuned_name(job, name)
    document = json.dumps({
        "adapter": name, "version": version, "fine_tuned_model": ft_name, "job_id": job.id,
        "base_model": job.model,
        # the spec, less where a parent's files are (object keys stay internal)
        "method": {k: v for k, v in job.method.items() if k != "parent"},
        "seed": job.seed, **manifest,
        "files": staged.files, "created_at": utcnow().isoformat(),
    }, indent=2).encode()
    for entry in staged.files:
        placed.append(prefix + entry["name"])
        storage.copy(staged.prefix + entry["name"], placed[-1])
    placed.append(prefix + "manifest.json")
    storage.put_bytes(placed[-1], document)
    written = json.loads(document)  # the version's manifest as stored
    readme = card.model_card(written).encode()
    placed.append(prefix + card.CARD)
    storage.put_bytes(placed[-1], readme)
    file_service.add_result(session, staged.result)
    return adapter_repo.add_version(session, AdapterVersion(
        id=ids.new_id("adpv"), tenant_id=job.tenant_id, adapter_id=adapter.id,
        version=version, job_id=job.id, base_model=job.model, fine_tuned_model=ft_name,
        object_prefix=prefix, manifest=written,
        files=[*staged.files,
               *({"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                 for n, b in (("manifest.json", document), (card.CARD, readme)))],
    ))


# ----- aliases and the versions' lifecycle ------------------------------------------------


def _alias_name(alias: str) -> str:
    if len(alias) > NAME_MAX or not re.match(NAME_PATTERN, alias):
        raise InvalidRequest(
            f"alias {alias[:80]!r} is not a name: 1 to {NAME_MAX} letters, digits, '-', '_' "
            "and single dots, starting with a letter or digit", param="alias",
            code="invalid_alias")
    return alias


def set_alias(session: Session, tenant_id: TenantId, actor: str, name: str, alias: str,
              version: int) -> tuple[AdapterAlias, int | None]:
    """Point ``alias`` at ``version`` (promote): created, or moved with the version it
    pointed at kept for a rollback. Audited. Returns the alias and the version before."""
    adapter, row = get_version(session, tenant_id, name, version, for_update=True)
    current = adapter_repo.alias(session, adapter, _alias_name(alias), for_update=True)
    before = None
    if current is None:
        current = AdapterAlias(id=ids.new_id("alias"), tenant_id=tenant_id,
                               adapter_id=adapter.id, name=alias, version_id=row.id,
                               history=[])
        session.add(current)
    elif current.version_id != row.id:
        before = _number(session, current.version_id)
        current.history = [*current.history, before][-100:]
        current.version_id, current.updated_at = row.id, utcnow()
    else:
        before = version
    session.flush()
    audit.record(session, actor, "adapter.alias.set", "adapter", adapter.id,
                 tenant_id=tenant_id, details={"adapter": name, "alias": alias,
                                               "from": before, "to": version})
    return current, before


def rollback_alias(session: Session, tenant_id: TenantId, actor: str, name: str,
                   alias: str) -> tuple[AdapterAlias, int, int]:
    """Point ``alias`` back at the version it pointed at before the last promotion (one
    that still exists). Audited. Returns the alias, the version left and the one now."""
    adapter = get(session, tenant_id, name)
    current = adapter_repo.alias(session, adapter, alias, for_update=True)
    if current is None:
        raise NotFound(f"adapter {name!r} has no alias {alias!r}", param="alias")
    left = _number(session, current.version_id)
    history = list(current.history)
    while history:
        target = adapter_repo.get_version(session, tenant_id, adapter, int(history.pop()),
                                          for_update=True)
        if target is not None:
            current.version_id, current.history = target.id, history
            current.updated_at = utcnow()
            session.flush()
            audit.record(session, actor, "adapter.alias.rollback", "adapter", adapter.id,
                         tenant_id=tenant_id, details={"adapter": name, "alias": alias,
                                                       "from": left, "to": target.version})
            return current, left, target.version
    raise InvalidRequest(f"alias {alias!r} of {name!r} has no earlier version to roll back "
                         "to", param="alias", code="nothing_to_roll_back")


def delete_alias(session: Session, tenant_id: TenantId, actor: str, name: str,
                 alias: str) -> None:
    adapter = get(session, tenant_id, name)
    current = adapter_repo.alias(session, adapter, alias, for_update=True)
    if current is None:
        raise NotFound(f"adapter {name!r} has no alias {alias!r}", param="alias")
    version = _number(session, current.version_id)
    session.delete(current)
    session.flush()
    audit.record(session, actor, "adapter.alias.delete", "adapter", adapter.id,
                 tenant_id=tenant_id, details={"adapter": name, "alias": alias,
                                               "version": version})


def by_alias(session: Session, tenant_id: TenantId, model: str) -> AdapterVersion | None:
    """The version ``adapter@alias`` names, if it is one of this tenant's."""
    name, _, alias = model.rpartition("@")
    adapter = adapter_repo.get(session, tenant_id, name) if name and alias else None
    current = adapter_repo.alias(session, adapter, alias) if adapter else None
    if current is None:
        return None
    row = session.get(AdapterVersion, current.version_id)
    return row if row is not None and row.deleted_at is None else None


def _number(session: Session, version_id: str) -> int:
    row = session.get(AdapterVersion, version_id)
    assert row is not None
    return row.version


def delete_version(session: Session, tenant_id: TenantId, actor: str, name: str,
                   version: int) -> AdapterVersion:
    """Delete a version: refused while an alias points at it (move or delete the alias
    first). Its fine-tuned model goes with it; the caller removes its files
    (:func:`remove_files`) once this commits. Audited."""
    adapter, row = get_version(session, tenant_id, name, version, for_update=True)
    pointing = adapter_repo.aliases_of_versions(session, [row.id]).get(row.id)
    if pointing:
        raise Conflict(f"version {version} of {name!r} is what alias "
                       f"{', '.join(pointing)} points at; promote another version to it or "
                       "delete the alias first", param="version", code="version_aliased")
    _retire(row)
    audit.record(session, actor, "adapter.version.delete", "adapter", adapter.id,
                 tenant_id=tenant_id, details={"adapter": name, "version": version})
    return row


def _retire(row: AdapterVersion) -> None:
    now = utcnow()
    row.deleted_at = now
    row.model_deleted_at = row.model_deleted_at or now


def remove_files(storage: Storage, row: AdapterVersion) -> None:
    """A deleted version's objects (after its deletion committed; a failure is logged and
    the objects stay, unreachable through the API)."""
    storage.delete_quietly(*(row.object_prefix + str(f["name"]) for f in row.files))


def prune(session: Session, keep: int) -> list[AdapterVersion]:
    """Retention: delete each adapter's versions older than its newest ``keep`` that no
    alias points at (the scheduler's janitor, under the admin role; the caller removes
    their files once this commits); 0 keeps all."""
    if keep <= 0:
        return []
    rows = adapter_repo.prunable(session, keep)
    for row in rows:
        _retire(row)
        audit.record(session, "retention", "adapter.version.prune", "adapter",
                     row.adapter_id, tenant_id=row.tenant_id,
                     details={"version": row.version, "keep": keep})
    session.flush()
    return rows
