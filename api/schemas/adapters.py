from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from api.schemas.common import ts
from core.adapters.models import Adapter, AdapterVersion
from core.checkpoints.models import JobCheckpoint
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

    @classmethod
    def of(cls, row: Adapter, latest: int | None) -> AdapterObject:
        return cls(id=row.id, name=row.name, created_at=ts(row.created_at) or 0,
                   latest_version=latest)


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

    @classmethod
    def of(cls, row: AdapterVersion, adapter_name: str) -> AdapterVersionObject:
        return cls(
            id=row.id, adapter=adapter_name, version=row.version,
            created_at=ts(row.created_at) or 0, fine_tuning_job_id=row.job_id,
            base_model=row.base_model, fine_tuned_model=row.fine_tuned_model,
            files=[AdapterFile(**f) for f in row.files], manifest=row.manifest,
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
