from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.common import ts
from core.jobs.models import FineTuningJob, JobEvent
from core.jobs.spec import (
    MAX_SEQ_LEN,
    MIN_SEQ_LEN,
    Integration,
    JobSpec,
    LoraSpec,
    RequestedDpoHyperparameters,
    RequestedHyperparameters,
)
from core.kit.storage import NAME_MAX, NAME_PATTERN
from core.kit.types import MAX_INT32, IntRange


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: RequestedHyperparameters | None = None


class Dpo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: RequestedDpoHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: RequestedHyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=NAME_MAX, pattern=NAME_PATTERN,
                               description="letters, digits, '-', '_' and single dots; "
                                           "starts with a letter or digit")
    seed: Annotated[int, IntRange(0, MAX_INT32)] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(None, max_length=5)
    lora: LoraSpec | None = None
    max_seq_len: Annotated[int, IntRange(MIN_SEQ_LEN, MAX_SEQ_LEN)] | None = Field(
        None, description="the longest sequence trained on, in tokens (default 4,096, "
        "never above the base model's context); longer examples are truncated")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("at most 16 key-value pairs")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"value of {key!r} is longer than 512 characters")
        return value

    @field_validator("integrations", mode="before")
    @classmethod
    def _integrations(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else []:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in INTEGRATION_TYPES:
                raise ValueError(f"integration type {kind!r} is not supported; one of: "
                                 f"{', '.join(INTEGRATION_TYPES)}")
        return value


INTEGRATION_TYPES = ("wandb",)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    user_provided_suffix: str | None
    seed: int
    estimated_finish: int | None
    integrations: list[Any] = []
    metadata: dict[str, str] | None
    method: dict[str, Any]
    # loramill extensions
    lora: dict[str, Any]
    max_seq_len: int | None = None
    base_model: str | None = None  # the base model; ``model`` is the parent for a continued job
    parent: dict[str, Any] | None = None  # model, job_id, adapter, adapter_version,
    # checkpoint_step: what a continued job started from

    @classmethod
    def of(cls, job: FineTuningJob) -> JobObject:
        spec = JobSpec.of(job.method)
        return cls(
            id=job.id, created_at=ts(job.created_at) or 0, finished_at=ts(job.finished_at),
            model=spec.parent.model if spec.parent else job.model, base_model=job.model,
            parent=spec.parent.lineage() if spec.parent else None,
            fine_tuned_model=job.fine_tuned_model,
            organization_id=job.tenant_id, result_files=list(job.result_files or []),
            status=job.status, training_file=job.training_file,
            validation_file=job.validation_file,
            hyperparameters=spec.hyperparameters.shown(),
            trained_tokens=job.trained_tokens,
            error=JobError(**job.error) if job.error else None,
            user_provided_suffix=job.suffix, seed=job.seed,
            estimated_finish=ts(job.estimated_finish), metadata=job.metadata_,
            method=spec.method(), integrations=[i.model_dump() for i in spec.integrations],
            lora=spec.lora.model_dump(), max_seq_len=spec.max_seq_len,
        )


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None

    @classmethod
    def of(cls, event: JobEvent) -> EventObject:
        return cls(
            id=event.id, created_at=ts(event.created_at) or 0, level=event.level,
            message=event.message, type=event.type, data=event.data,
        )


class EstimateTokens(BaseModel):
    per_epoch: int
    trainable_per_epoch: int | None  # what the loss is taken on; None when approximate
    total: int  # per_epoch x n_epochs
    counted: Literal["exact", "sampled", "approximate"]
    counted_examples: int


class EstimateDuration(BaseModel):
    gpu_class: str
    gpus: int
    seconds: float
    tokens_per_second: float
    basis: Literal["measured", "nominal"]  # finished jobs on this base model, or nominal
    measured_jobs: int
    cost: float | None


class EstimateObject(BaseModel):
    """``POST /v1/fine_tuning/estimates``: a job body answered without queueing it."""

    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"
    model: str
    base_model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    lora: dict[str, Any]
    max_seq_len: int | None
    examples: int
    tokens: EstimateTokens
    total_steps: int
    gpu_class: str
    predicted_memory_gib: float | None  # a GPU of gpu_class, headroom included
    estimated_seconds: float | None  # on gpu_class
    estimated_cost: float | None  # on gpu_class, from the tenant's price table
    currency: str | None
    durations: list[EstimateDuration]  # each class this deployment runs that can hold it
