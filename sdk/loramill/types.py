"""Typed result objects. Each keeps the server's full JSON in ``raw``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class File:
    id: str
    filename: str
    bytes: int
    purpose: str
    status: str
    created_at: int
    sha256: str | None = None
    format: str | None = None
    example_count: int | None = None
    tool_examples: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> File:
        return cls(id=d["id"], filename=d["filename"], bytes=d["bytes"], purpose=d["purpose"],
                   status=d["status"], created_at=d["created_at"], sha256=d.get("sha256"),
                   format=d.get("format"), example_count=d.get("example_count"),
                   tool_examples=d.get("tool_examples"), raw=d)


@dataclass(frozen=True)
class DatasetLimits:
    """The server's dataset limits for this key's tenant (``GET /v1/files/limits``)."""

    max_file_bytes: int
    max_line_bytes: int
    max_json_depth: int

    @classmethod
    def of(cls, d: dict[str, Any]) -> DatasetLimits:
        return cls(max_file_bytes=d["max_file_bytes"], max_line_bytes=d["max_line_bytes"],
                   max_json_depth=d["max_json_depth"])


@dataclass(frozen=True)
class FineTuningJob:
    id: str
    status: str
    model: str
    training_file: str
    created_at: int
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    hyperparameters: dict[str, Any]
    estimated_finish: int | None = None
    suffix: str | None = None
    tenant_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, d: dict[str, Any]) -> FineTuningJob:
        return cls(id=d["id"], status=d["status"], model=d["model"],
                   training_file=d["training_file"], created_at=d["created_at"],
                   fine_tuned_model=d.get("fine_tuned_model"),
                   trained_tokens=d.get("trained_tokens"), error=d.get("error"),
                   hyperparameters=d.get("hyperparameters", {}),
                   estimated_finish=d.get("estimated_finish"),
                   suffix=d.get("user_provided_suffix"),
                   tenant_id=d.get("tenant_id") or d.get("organization_id"), raw=d)


@dataclass(frozen=True)
class Estimate:
    """``jobs.estimate(...)``: what a job would train, where, how long, at what cost."""

    model: str
    base_model: str
    examples: int
    tokens: dict[str, Any]  # per_epoch, trainable_per_epoch, total, counted, counted_examples
    total_steps: int
    gpu_class: str
    predicted_memory_gib: float | None
    estimated_seconds: float | None
    estimated_cost: float | None
    currency: str | None
    durations: list[dict[str, Any]]  # per GPU class: seconds, basis, cost, ...
    hyperparameters: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Estimate:
        return cls(model=d["model"], base_model=d["base_model"], examples=d["examples"],
                   tokens=d["tokens"], total_steps=d["total_steps"], gpu_class=d["gpu_class"],
                   predicted_memory_gib=d.get("predicted_memory_gib"),
                   estimated_seconds=d.get("estimated_seconds"),
                   estimated_cost=d.get("estimated_cost"), currency=d.get("currency"),
                   durations=d.get("durations", []), hyperparameters=d["hyperparameters"],
                   raw=d)


@dataclass(frozen=True)
class JobEvent:
    id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> JobEvent:
        return cls(id=d["id"], created_at=d["created_at"], level=d["level"],
                   message=d["message"], type=d.get("type", "message"), data=d.get("data"))


@dataclass(frozen=True)
class Checkpoint:
    id: str
    step_number: int
    metrics: dict[str, Any]
    created_at: int
    fine_tuned_model_checkpoint: str | None = None  # ft:…:ckpt-step-N, to continue from
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Checkpoint:
        return cls(id=d["id"], step_number=d["step_number"], metrics=d["metrics"],
                   created_at=d["created_at"],
                   fine_tuned_model_checkpoint=d.get("fine_tuned_model_checkpoint"), raw=d)


@dataclass(frozen=True)
class Adapter:
    id: str
    name: str
    latest_version: int | None
    created_at: int
    aliases: dict[str, int] = field(default_factory=dict)  # alias -> version

    @classmethod
    def of(cls, d: dict[str, Any]) -> Adapter:
        return cls(id=d["id"], name=d["name"], latest_version=d.get("latest_version"),
                   created_at=d["created_at"], aliases=d.get("aliases") or {})


@dataclass(frozen=True)
class Alias:
    """An adapter's alias: ``model`` (``adapter@alias``) is callable and downloadable."""

    adapter: str
    name: str
    version: int
    model: str
    history: list[int]  # the versions it pointed at before, newest last
    previous_version: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Alias:
        return cls(adapter=d["adapter"], name=d["name"], version=d["version"],
                   model=d["model"], history=d.get("history", []),
                   previous_version=d.get("previous_version"))


@dataclass(frozen=True)
class AdapterVersion:
    id: str
    adapter: str
    version: int
    fine_tuning_job_id: str
    base_model: str
    fine_tuned_model: str
    files: list[dict[str, Any]]
    manifest: dict[str, Any]
    created_at: int
    aliases: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, d: dict[str, Any]) -> AdapterVersion:
        return cls(id=d["id"], adapter=d["adapter"], version=d["version"],
                   fine_tuning_job_id=d["fine_tuning_job_id"], base_model=d["base_model"],
                   fine_tuned_model=d["fine_tuned_model"], files=d["files"],
                   manifest=d["manifest"], created_at=d["created_at"],
                   aliases=d.get("aliases") or [])


@dataclass(frozen=True)
class Model:
    id: str
    owned_by: str
    created: int
    parent: str | None = None  # a fine-tuned or checkpoint model's base model
    checkpoint_step: int | None = None
    fine_tuning_job_id: str | None = None
    adapter: str | None = None  # a fine-tuned model's adapter and version
    adapter_version: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Model:
        return cls(id=d["id"], owned_by=d["owned_by"], created=d["created"],
                   parent=d.get("parent"), checkpoint_step=d.get("checkpoint_step"),
                   fine_tuning_job_id=d.get("fine_tuning_job_id"), adapter=d.get("adapter"),
                   adapter_version=d.get("adapter_version"), raw=d)


# ----- operators (loramill.Client(...).admin) ---------------------------------------------


@dataclass(frozen=True)
class QueueSummary:
    """Queued, running and paused jobs by tenant and GPU class, with recent rates."""

    totals: dict[str, int]
    oldest_queued_age_seconds: float | None
    by_tenant: list[dict[str, Any]]
    rates: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> QueueSummary:
        return cls(totals=d["totals"], oldest_queued_age_seconds=d["oldest_queued_age_seconds"],
                   by_tenant=d["by_tenant"], rates=d["rates"], raw=d)


@dataclass(frozen=True)
class Worker:
    id: str
    hostname: str
    gpu_class: str
    capacity: int
    state: str  # alive | lost | stopped
    running_jobs: list[str]
    last_heartbeat_at: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Worker:
        return cls(id=d["id"], hostname=d["hostname"], gpu_class=d["gpu_class"],
                   capacity=d["capacity"], state=d["state"], running_jobs=d["running_jobs"],
                   last_heartbeat_at=d["last_heartbeat_at"], raw=d)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    suspended_at: int | None
    max_running_jobs: int
    max_queued_jobs: int
    max_file_bytes: int
    storage_bytes: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Tenant:
        return cls(id=d["id"], name=d["name"], suspended_at=d["suspended_at"],
                   max_running_jobs=d["max_running_jobs"], max_queued_jobs=d["max_queued_jobs"],
                   max_file_bytes=d["max_file_bytes"], storage_bytes=d["storage_bytes"], raw=d)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: int
    revoked_at: int | None
    secret: str | None = field(default=None, repr=False)  # only when just created
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> ApiKey:
        return cls(id=d["id"], name=d["name"], prefix=d["prefix"], scopes=d["scopes"],
                   created_at=d["created_at"], revoked_at=d["revoked_at"],
                   secret=d.get("secret"), raw=d)


@dataclass(frozen=True)
class AuditEntry:
    id: str
    created_at: int
    actor: str
    action: str
    target_type: str
    target_id: str
    tenant_id: str | None
    details: dict[str, Any] | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(id=d["id"], created_at=d["created_at"], actor=d["actor"], action=d["action"],
                   target_type=d["target_type"], target_id=d["target_id"],
                   tenant_id=d["tenant_id"], details=d["details"], raw=d)
