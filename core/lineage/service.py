"""Which adapter a model id names: one of the tenant's fine-tuned models (a published
adapter version) or checkpoint models (a checkpoint of one of its jobs). A continued job
starts from one, ``GET /v1/models/{id}/download`` hands out its files, serving calls it.
Another tenant's is not found: row-level security and the filters both say so."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.adapters import repository as adapter_repo
from core.adapters import service as adapter_service
from core.adapters.models import AdapterVersion
from core.checkpoints import repository as checkpoint_repo
from core.checkpoints.models import JobCheckpoint
from core.jobs import repository as job_repo
from core.jobs.spec import JobSpec, Parent
from core.kit.errors import InvalidRequest
from core.tenants.scope import TenantId

# the checkpoints API's fine_tuned_model_checkpoint: ft:<base>:<tenant>:<job>:ckpt-step-<n>
CHECKPOINT_MODEL = re.compile(r"^ft:(?P<base>.+):(?P<tenant>[^:]+):(?P<job>[^:]+)"
                              r":ckpt-step-(?P<step>\d{1,9})$")
# what of a checkpoint is an adapter (the rest is optimizer and data position)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def checkpoint_name(base_model: str, row: JobCheckpoint) -> str:
    return f"ft:{base_model}:{row.tenant_id}:{row.job_id}:ckpt-step-{row.step}"


@dataclass(frozen=True)
class CheckpointModel:
    row: JobCheckpoint
    base_model: str


def checkpoint_model(session: Session, tenant_id: TenantId,
                     model: str) -> CheckpointModel | None:
    """The checkpoint a checkpoint model id names, if it is one of this tenant's."""
    found = CHECKPOINT_MODEL.match(model)
    if found is None or found["tenant"] != tenant_id:
        return None
    job = job_repo.get(session, tenant_id, found["job"])
    if job is None or job.model != found["base"]:
        return None
    row = checkpoint_repo.at_step(session, tenant_id, job.id, int(found["step"]))
    return CheckpointModel(row, job.model) if row is not None else None


@dataclass(frozen=True)
class Source:
    """The adapter behind a fine-tuned or checkpoint model id."""

    model: str
    base_model: str
    job_id: str
    object_prefix: str
    files: list[dict[str, Any]]  # name, bytes, sha256: the adapter's files only
    version: AdapterVersion | None = None
    checkpoint: JobCheckpoint | None = None


def source(session: Session, tenant_id: TenantId, model: str) -> Source | None:
    """The adapter ``model`` names, if it is one of this tenant's (not a base model): a
    checkpoint model, a fine-tuned model, or ``adapter@alias``."""
    checkpoint = checkpoint_model(session, tenant_id, model)
    if checkpoint is not None:
        row = checkpoint.row
        return Source(model=model, base_model=checkpoint.base_model, job_id=row.job_id,
                      object_prefix=row.object_prefix, checkpoint=row,
                      files=[f for f in row.files if f["name"] in ADAPTER_FILES])
    version = adapter_repo.by_fine_tuned_model(session, tenant_id, model)
    if version is None and "@" in model:
        version = adapter_service.by_alias(session, tenant_id, model)
    if version is None:
        return None
    return Source(model=model, base_model=version.base_model, job_id=version.job_id,
                  object_prefix=version.object_prefix, version=version,
                  files=list(version.files))


def parent(session: Session, tenant_id: TenantId, found: Source) -> Parent:
    """What a job continued from ``found`` records of it: lineage, the files to start
    from, and the LoRA settings it was trained with (the new job keeps them)."""
    job = job_repo.get(session, tenant_id, found.job_id)
    assert job is not None, "an adapter's job is never deleted"
    adapter = found.version.manifest.get("adapter") if found.version else None
    return Parent(
        model=found.model, job_id=found.job_id, lora=JobSpec.of(job.method).lora,
        adapter=adapter, adapter_version=found.version.version if found.version else None,
        checkpoint_step=found.checkpoint.step if found.checkpoint else None,
        object_prefix=found.object_prefix,
        files=[f for f in found.files if f["name"] in ADAPTER_FILES])


def continue_from(session: Session, tenant_id: TenantId,
                  model: str) -> tuple[str, Parent | None]:
    """A job's ``model``: a base model id as it is, or the tenant's fine-tuned or
    checkpoint model it continues from, as (its base model, the parent)."""
    found = source(session, tenant_id, model)
    if found is None:  # a base model (or nothing: job creation says which)
        return model, None
    if {f["name"] for f in found.files} < set(ADAPTER_FILES):
        raise InvalidRequest(
            f"{model} was saved before checkpoints recorded their files' sha256s, so it "
            "cannot be checked and is not continued from; use the job's fine-tuned model "
            "or a later checkpoint", param="model", code="checkpoint_not_usable")
    return found.base_model, parent(session, tenant_id, found)
