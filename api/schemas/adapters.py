from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict

from api.schemas.common import ts
from core.adapters.models import Adapter, AdapterAlias, AdapterExport, AdapterVersion
from core.checkpoints.models import JobCheckpoint
from core.kit.types import MAX_INT32, IntRange
from core.lineage.service import checkpoint_name


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, row: JobCheckpoint, base_model: str) -> CheckpointObject:
        keep = ("step", "train_loss", "valid_loss", "learning_rate", "trained_tokens")
        return cls(
            id=row.id, created_at=ts(row.created_at) or 0,
            fine_tuned_model_checkpoint=checkpoint_name(base_model, row),
            fine_tuning_job_id=row.job_id, step_number=row.step,
            metrics={k: row.metrics[k] for k in keep if k in row.metrics},
        )


class AdapterObject(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    created_at: int
    latest_version: int | None
    aliases: dict[str, int] = {}  # alias -> the version it points at

    @classmethod
    def of(cls, row: Adapter, latest: int | None,
           aliases: dict[str, int] | None = None) -> AdapterObject:
        return cls(id=row.id, name=row.name, created_at=ts(row.created_at) or 0,
                   latest_version=latest, aliases=aliases or {})


class AliasObject(BaseModel):
    id: str
    object: Literal["adapter.alias"] = "adapter.alias"
    adapter: str
    name: str
    version: int
    fine_tuned_model: str  # what it points at; callable as "<adapter>@<alias>"
    model: str  # "<adapter>@<alias>"
    history: list[int]  # the versions it pointed at before, newest last
    previous_version: int | None = None  # in a promotion's or rollback's answer
    updated_at: int

    @classmethod
    def of(cls, adapter: str, alias: AdapterAlias, version: AdapterVersion,
           previous: int | None = None) -> AliasObject:
        return cls(id=alias.id, adapter=adapter, name=alias.name, version=version.version,
                   fine_tuned_model=version.fine_tuned_model, model=f"{adapter}@{alias.name}",
                   history=[int(v) for v in alias.history], previous_version=previous,
                   updated_at=ts(alias.updated_at) or 0)


class SetAlias(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, IntRange(1, MAX_INT32)]


class AdapterFile(BaseModel):
    name: str
    bytes: int
    sha256: str


class AdapterVersionObject(BaseModel):
    id: str
    object: Literal["adapter.version"] = "adapter.version"
    adapter: str
    version: int
    created_at: int
    fine_tuning_job_id: str
    base_model: str
    fine_tuned_model: str
    files: list[AdapterFile]
    manifest: dict[str, Any]
    aliases: list[str] = []  # the aliases pointing at it
    deleted: bool = False  # in the answer to DELETE

    @classmethod
    def of(cls, row: AdapterVersion, adapter_name: str,
           aliases: list[str] | None = None) -> AdapterVersionObject:
        return cls(
            id=row.id, adapter=adapter_name, version=row.version,
            created_at=ts(row.created_at) or 0, fine_tuning_job_id=row.job_id,
            base_model=row.base_model, fine_tuned_model=row.fine_tuned_model,
            files=[AdapterFile(**f) for f in row.files], manifest=row.manifest,
            aliases=aliases or [], deleted=row.deleted_at is not None,
        )


class DownloadFile(AdapterFile):
    url: str


class DownloadObject(BaseModel):
    object: Literal["adapter.download"] = "adapter.download"
    adapter: str | None  # a published version's adapter and number; None for a checkpoint
    version: int | None
    expires_at: int
    files: list[DownloadFile]
    model: str | None = None  # through /v1/models/{id}/download: the model asked for
    checkpoint_step: int | None = None


class CreateExport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["merged", "gguf"]


class ExportObject(BaseModel):
    id: str
    object: Literal["adapter.export"] = "adapter.export"
    adapter: str
    version: int
    format: str  # merged | gguf
    status: Literal["queued", "running", "succeeded", "failed"]
    files: list[AdapterFile]  # with export_manifest.json, once succeeded
    error: dict[str, Any] | None
    created_at: int
    finished_at: int | None

    @classmethod
    def of(cls, row: AdapterExport, adapter: str, version: int) -> ExportObject:
        return cls(id=row.id, adapter=adapter, version=version, format=row.format,
                   status=row.status,
                   files=[AdapterFile(**f) for f in row.files], error=row.error,
                   created_at=ts(row.created_at) or 0, finished_at=ts(row.finished_at))
