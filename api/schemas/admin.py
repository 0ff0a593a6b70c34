"""Operator views: the queue, workers, jobs across tenants, tenants, the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import ts
from api.schemas.jobs import JobObject
from core.audit.models import AuditEntry
from core.jobs.models import FineTuningJob
from core.kit.types import MAX_BYTES, IntRange
from core.ops import service as ops
from core.tenants.models import Tenant


def age(since: datetime | None, now: datetime) -> float | None:
    return round((now - since).total_seconds(), 1) if since else None


class TenantQueueObject(BaseModel):
    tenant_id: str
    tenant_name: str
    gpu_class: str
    queued: int
    running: int
    paused: int
    oldest_queued_age_seconds: float | None


class RatesObject(BaseModel):
    window_seconds: int
    dispatched_per_minute: float
    completed_per_minute: float
    finished: dict[str, int]


class QueueObject(BaseModel):
    object: Literal["admin.queue"] = "admin.queue"
    generated_at: int
    totals: dict[str, int]
    oldest_queued_age_seconds: float | None
    by_tenant: list[TenantQueueObject]
    rates: RatesObject

    @classmethod
    def of(cls, q: ops.QueueSummary) -> QueueObject:
        minutes = ops.RATE_WINDOW.total_seconds() / 60
        return cls(
            generated_at=ts(q.generated_at) or 0, totals=q.totals,
            oldest_queued_age_seconds=age(q.oldest_queued_at, q.generated_at),
            by_tenant=[TenantQueueObject(
                tenant_id=r.tenant_id, tenant_name=r.tenant_name, gpu_class=r.gpu_class,
                queued=r.queued, running=r.running, paused=r.paused,
                oldest_queued_age_seconds=age(r.oldest_queued_at, q.generated_at),
            ) for r in q.rows],
            rates=RatesObject(
                window_seconds=int(ops.RATE_WINDOW.total_seconds()),
                dispatched_per_minute=round(q.started_last_window / minutes, 3),
                completed_per_minute=round(sum(q.finished_last_window.values()) / minutes, 3),
                finished=q.finished_last_window,
            ),
        )


class WorkerObject(BaseModel):
    id: str
    object: Literal["admin.worker"] = "admin.worker"
    hostname: str
    gpu_class: str
    capacity: int
    state: Literal["alive", "lost", "stopped"]
    running_jobs: list[str]
    started_at: int
    last_heartbeat_at: int
    stopped_at: int | None

    @classmethod
    def of(cls, w: ops.WorkerView) -> WorkerObject:
        r = w.row
        return cls(id=r.id, hostname=r.hostname, gpu_class=r.gpu_class, capacity=r.capacity,
                   state=w.state, running_jobs=w.running_jobs,
                   started_at=ts(r.started_at) or 0,
                   last_heartbeat_at=ts(r.last_heartbeat_at) or 0,
                   stopped_at=ts(r.stopped_at))


class AdminJobObject(JobObject):
    """The tenant's view of a job plus what operators steer by."""

    tenant_id: str
    priority: int
    gpu_class: str
    attempt: int
    worker_id: str | None
    started_at: int | None

    @classmethod
    def of(cls, job: FineTuningJob) -> AdminJobObject:
        return cls(**JobObject.of(job).model_dump(), tenant_id=job.tenant_id,
                   priority=job.priority, gpu_class=job.gpu_class, attempt=job.attempt,
                   worker_id=job.worker_id, started_at=ts(job.started_at))


class PriorityBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Annotated[int, IntRange(*ops.PRIORITY_RANGE)]


class Quotas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_running_jobs: Annotated[int, IntRange(0, 10_000)] | None = None
    max_queued_jobs: Annotated[int, IntRange(0, 1_000_000)] | None = None
    max_file_bytes: Annotated[int, IntRange(0, MAX_BYTES)] | None = None
    storage_bytes: Annotated[int, IntRange(0, MAX_BYTES)] | None = None

    def given(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class CreateTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    quotas: Quotas | None = None


class TenantObject(BaseModel):
    id: str
    object: Literal["admin.tenant"] = "admin.tenant"
    name: str
    created_at: int
    suspended_at: int | None
    max_running_jobs: int
    max_queued_jobs: int
    max_file_bytes: int
    storage_bytes: int
    prices: dict[str, Any] | None = None  # the tenant's own table; None: the default

    @classmethod
    def of(cls, t: Tenant) -> TenantObject:
        return cls(id=t.id, name=t.name, created_at=ts(t.created_at) or 0,
                   suspended_at=ts(t.suspended_at), max_running_jobs=t.max_running_jobs,
                   max_queued_jobs=t.max_queued_jobs, max_file_bytes=t.max_file_bytes,
                   storage_bytes=t.storage_bytes, prices=t.prices)


class AuditObject(BaseModel):
    id: str
    object: Literal["admin.audit_entry"] = "admin.audit_entry"
    created_at: int
    actor: str
    action: str
    target_type: str
    target_id: str
    tenant_id: str | None
    details: dict[str, Any] | None

    @classmethod
    def of(cls, e: AuditEntry) -> AuditObject:
        return cls(id=e.id, created_at=ts(e.created_at) or 0, actor=e.actor, action=e.action,
                   target_type=e.target_type, target_id=e.target_id, tenant_id=e.tenant_id,
                   details=e.details)
