"""The scheduler's two duties (design.md §1), run as Celery tasks on a beat schedule:

- **dispatch**: hand queued jobs to Celery only when a worker of their GPU class has a
  free slot, choosing across tenants — fewest running first, then priority, then the
  tenant served least recently, then age — within each tenant's ``max_running_jobs``.
  One tenant's 1,000 queued jobs cannot starve another tenant's one.
- **sweep**: a running job whose heartbeat is older than the lease timeout lost its worker;
  re-queue it (``attempt + 1``, it resumes from its last checkpoint) or, after
  ``max_attempts``, fail it with ``worker_lost``. A PostgreSQL restart silences every
  worker while it lasts, so no lease is judged before the server has been up for a whole
  lease timeout. Dispatched jobs nobody claimed in time (a lost message, a restarted
  Redis) are made dispatchable again.

Both run in one transaction under a PostgreSQL advisory lock, so scheduler replicas and
wake-up hints never double-dispatch.
"""


from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from core.adapters import exports
from core.adapters import service as adapter_service
from core.idempotency import repository as idempotency_repo
from core.jobs import repository as job_repo
from core.jobs import state as jobstate
from core.jobs.state import JobStatus
from core.kit.db import admin_scope
from core.kit.settings import Settings
from core.kit.storage import Storage, staging_root
from core.scheduling import repository
from core.scheduling.repository import DISPATCH_LOCK, SWEEP_LOCK, Head

log = logging.getLogger("loramill.scheduler")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Pick:
    job_id: str
    tenant_id: str
    gpu_class: str


@dataclass(frozen=True)
class InFlight:
    by_class: dict[str, int]  # running or dispatched jobs per GPU class
    by_tenant: dict[str, int]  # ... and per tenant, across classes

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str, int]]) -> InFlight:
        """From (tenant id, GPU class, count) rows."""
        by_class: dict[str, int] = {}
        by_tenant: dict[str, int] = {}
        for tenant_id, gpu_class, n in rows:
            by_class[gpu_class] = by_class.get(gpu_class, 0) + n
            by_tenant[tenant_id] = by_tenant.get(tenant_id, 0) + n
        return cls(by_class, by_tenant)


def free_slots(capacity: dict[str, int], inflight: InFlight) -> dict[str, int]:
    """Capacity of recently seen workers minus jobs running or already dispatched."""
    free = {gpu: cap - inflight.by_class.get(gpu, 0) for gpu, cap in capacity.items()}
    return {gpu: n for gpu, n in free.items() if n > 0}


def choose(heads: list[Head], gpu_class: str, slots: int, inflight: InFlight,
           now: datetime) -> list[Pick]:
    """The next ``slots`` jobs of one GPU class, fairly across tenants: fewest running
    first, then priority, then the tenant served least recently, then the oldest job, never
    past a tenant's quota. ``heads``: each tenant's next jobs, best first."""
    quotas: dict[str, tuple[int, datetime]] = {}
    queues: dict[str, list[tuple[int, datetime, str]]] = {}
    for head in heads:
        queues.setdefault(head.tenant_id, []).append(
            (-head.priority, head.created_at, head.job_id))
        quotas[head.tenant_id] = (head.tenant_quota, head.tenant_served_at or EPOCH)
    # (running, -priority, tenant last served, job created, job id, tenant)
    heap: list[tuple[int, int, datetime, datetime, str, str]] = []

    def offer(tenant_id: str, running: int, served: datetime) -> None:
        if queues[tenant_id] and running < quotas[tenant_id][0]:
            neg_priority, created, job_id = queues[tenant_id][0]
            heapq.heappush(heap, (running, neg_priority, served, created, job_id, tenant_id))

    for tenant_id in queues:
        offer(tenant_id, inflight.by_tenant.get(tenant_id, 0), quotas[tenant_id][1])
    picks: list[Pick] = []
    while heap and len(picks) < slots:
        running, _, _, _, job_id, tenant_id = heapq.heappop(heap)
        picks.append(Pick(job_id, tenant_id, gpu_class))
        queues[tenant_id].pop(0)
        offer(tenant_id, running + 1, now)  # just served: behind tenants that were not
    return picks


def dispatch_tick(session: Session, settings: Settings) -> list[Pick]:
    """Choose and mark jobs as dispatched; the caller sends them after commit."""
    if not repository.try_lock(session, DISPATCH_LOCK):
        return []
    now = repository.database_now(session)
    inflight = InFlight.of(repository.inflight(session))
    capacity = repository.capacity_by_class(
        session, now - timedelta(seconds=settings.worker_timeout_seconds))
    picks: list[Pick] = []
    for gpu_class, slots in sorted(free_slots(capacity, inflight).items()):
        heads = repository.queue_heads(session, gpu_class, slots)
        picks += choose(heads, gpu_class, slots, inflight, now)
    if picks:
        repository.mark_dispatched(session, [p.job_id for p in picks],
                                   {p.tenant_id for p in picks}, now)
    return picks


def undispatch(session: Session, job_ids: list[str]) -> None:
    """The broker refused the messages: let the next tick try again."""
    repository.undispatch(session, job_ids)


def sweep(session: Session, settings: Settings) -> dict[str, list[str]]:
    """Re-queue or fail jobs whose worker stopped heartbeating; re-arm lost dispatches."""
    out: dict[str, list[str]] = {"requeued": [], "failed": [], "redispatched": []}
    if not repository.try_lock(session, SWEEP_LOCK):
        return out
    now = repository.database_now(session)
    for job in repository.stale_running(
            session, now - timedelta(seconds=settings.lease_timeout_seconds)):
        silent = int((now - job.heartbeat_at).total_seconds()) if job.heartbeat_at else 0
        lost = f"worker {job.worker_id} stopped heartbeating {silent}s ago"
        if job.attempt >= settings.max_attempts:
            error = {"code": "worker_lost", "param": None,
                     "message": f"the job lost its worker {job.attempt} times (last: {lost}); "
                                f"giving up after {settings.max_attempts} attempts"}
            done = jobstate.transition(session, job.id, JobStatus.FAILED,
                                       lease_token=job.lease_token,
                                       values={"error": error, "lease_token": None})
            if done is not None:
                job_repo.add_event(session, done, f"Fine-tuning job failed: {error['message']}",
                                   level="error")
                out["failed"].append(job.id)
            continue
        done = jobstate.transition(session, job.id, JobStatus.QUEUED,
                                   lease_token=job.lease_token,
                                   values={"lease_token": None, "worker_id": None,
                                           "dispatched_at": None})
        if done is not None:
            job_repo.add_event(
                session, done, f"Worker lost ({lost}); job re-queued, attempt "
                f"{done.attempt + 1} of {settings.max_attempts} will resume from its last "
                "checkpoint", level="warn")
            out["requeued"].append(job.id)
    out["redispatched"] = repository.rearm_unclaimed(
        session, now - timedelta(seconds=settings.dispatch_timeout_seconds))
    idempotency_repo.delete_expired(session, now)
    return out


def sweep_exports(session: Session,
                  settings: Settings) -> tuple[list[exports.Lost], list[str]]:
    """Exports whose worker stopped heartbeating: queued anew (the caller sends them after
    commit) or, after ``max_attempts`` lost workers, failed."""
    now = repository.database_now(session)
    return exports.requeue_lost(
        session, now - timedelta(seconds=settings.lease_timeout_seconds),
        settings.max_attempts, now)


class StorageJanitor:
    """Removes what failures left in object storage where their own clean-up could not run
    (S3 was down then, or the process died): multipart uploads never finished or aborted,
    and the staging copies of adapters whose job ended since the last run. The sweep runs
    it every ``storage_janitor_seconds``."""

    def __init__(self) -> None:
        self.ran_at = float("-inf")  # monotonic
        self.covered_until: datetime | None = None  # database time of the last run

    def due(self, settings: Settings) -> bool:
        return time.monotonic() - self.ran_at >= settings.storage_janitor_seconds

    def run(self, session: Session, storage: Storage, settings: Settings) -> dict[str, int]:
        self.ran_at = time.monotonic()
        now = repository.database_now(session)
        aborted = storage.abort_stale_uploads("tenants/",
                                              timedelta(hours=settings.stale_upload_hours))
        since = (self.covered_until or now - timedelta(days=1)) - timedelta(minutes=5)
        ended = repository.ended_since(session, since)
        staged = [key for tenant_id, job_id in ended
                  for key in storage.list_keys(staging_root(tenant_id, job_id))]
        storage.delete_quietly(*staged)
        self.covered_until = now
        return {"aborted_uploads": len(aborted), "staged_objects": len(staged),
                "pruned_versions": prune_versions(storage, settings)}


def prune_versions(storage: Storage, settings: Settings) -> int:
    """Retention (``adapter_keep_versions``): old versions no alias points at are
    deleted in a transaction of their own, then their files once it committed."""
    with admin_scope() as session:
        rows = adapter_service.prune(session, settings.adapter_keep_versions)
    for row in rows:
        adapter_service.remove_files(storage, row)
    return len(rows)


janitor = StorageJanitor()  # the scheduler process's
