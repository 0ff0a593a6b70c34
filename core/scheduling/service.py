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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from core.idempotency import repository as idempotency_repo
from core.jobs import repository as job_repo
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob
from core.kit.settings import Settings
from core.kit.storage import Storage, staging_root
from core.scheduling.models import Worker
from core.tenants.models import Tenant

log = logging.getLogger("loramill.scheduler")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DISPATCH_LOCK = 0x10A4A111  # advisory lock ids
SWEEP_LOCK = 0x10A4A112

HEADS_SQL = text("""
    SELECT j.id, j.tenant_id, j.priority, j.created_at, t.max_running_jobs,
           t.last_dispatched_at
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT id, tenant_id, priority, created_at
        FROM fine_tuning_jobs
        WHERE tenant_id = t.id AND gpu_class = :gpu_class
          AND status = 'queued' AND dispatched_at IS NULL
        ORDER BY priority DESC, created_at
        LIMIT LEAST(:per_tenant, t.max_running_jobs)
    ) j
    WHERE t.suspended_at IS NULL
""")

# Jobs holding (or about to hold) a worker slot. Written exactly as the partial index
# ix_fine_tuning_jobs_inflight's predicate, so PostgreSQL reads only that small index.
INFLIGHT_SQL = text("""
    SELECT tenant_id, gpu_class, count(*)
    FROM fine_tuning_jobs
    WHERE status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)
    GROUP BY tenant_id, gpu_class
""")


@dataclass(frozen=True)
class Pick:
    job_id: str
    tenant_id: str
    gpu_class: str


def _locked(session: Session, lock_id: int) -> bool:
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))))


@dataclass(frozen=True)
class InFlight:
    by_class: dict[str, int]  # running or dispatched jobs per GPU class
    by_tenant: dict[str, int]  # ... and per tenant, across classes

    @classmethod
    def read(cls, session: Session) -> InFlight:
        by_class: dict[str, int] = {}
        by_tenant: dict[str, int] = {}
        for tenant_id, gpu_class, n in session.execute(INFLIGHT_SQL):
            by_class[gpu_class] = by_class.get(gpu_class, 0) + int(n)
            by_tenant[tenant_id] = by_tenant.get(tenant_id, 0) + int(n)
        return cls(by_class, by_tenant)


def free_slots(session: Session, settings: Settings, now: datetime,
               inflight: InFlight) -> dict[str, int]:
    """Capacity of recently seen workers minus jobs running or already dispatched."""
    alive_since = now - timedelta(seconds=settings.worker_timeout_seconds)
    capacity = session.execute(
        select(Worker.gpu_class, func.sum(Worker.capacity))
        .where(Worker.alive(alive_since))
        .group_by(Worker.gpu_class)
    ).all()
    free = {gpu: int(cap) - inflight.by_class.get(gpu, 0) for gpu, cap in capacity}
    return {gpu: n for gpu, n in free.items() if n > 0}


def choose(session: Session, gpu_class: str, slots: int, inflight: InFlight) -> list[Pick]:
    """The next ``slots`` jobs of one GPU class, fairly across tenants."""
    tenants: dict[str, tuple[int, datetime]] = {}
    heads: dict[str, list[tuple[int, datetime, str]]] = {}
    for job_id, tenant_id, priority, created_at, quota, served in session.execute(
            HEADS_SQL, {"gpu_class": gpu_class, "per_tenant": slots}):
        heads.setdefault(tenant_id, []).append((-priority, created_at, job_id))
        tenants[tenant_id] = (int(quota), served or EPOCH)
    # (running, -priority, tenant last served, job created, job id, tenant)
    heap: list[tuple[int, int, datetime, datetime, str, str]] = []

    def offer(tenant_id: str, running: int, served: datetime) -> None:
        quota = tenants[tenant_id][0]
        if heads[tenant_id] and running < quota:
            neg_priority, created, job_id = heads[tenant_id][0]
            heapq.heappush(heap, (running, neg_priority, served, created, job_id, tenant_id))

    for tenant_id in heads:
        offer(tenant_id, inflight.by_tenant.get(tenant_id, 0), tenants[tenant_id][1])
    picks: list[Pick] = []
    now = datetime.now(UTC)
    while heap and len(picks) < slots:
        running, _, _, _, job_id, tenant_id = heapq.heappop(heap)
        picks.append(Pick(job_id, tenant_id, gpu_class))
        heads[tenant_id].pop(0)
        offer(tenant_id, running + 1, now)
    return picks


def dispatch_tick(session: Session, settings: Settings) -> list[Pick]:
    """Choose and mark jobs as dispatched; the caller sends them after commit."""
    if not _locked(session, DISPATCH_LOCK):
        return []
    now = session.scalar(select(func.now()))
    assert now is not None
    inflight = InFlight.read(session)
    picks: list[Pick] = []
    for gpu_class, slots in sorted(free_slots(session, settings, now, inflight).items()):
        picks += choose(session, gpu_class, slots, inflight)
    if picks:
        session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id.in_([p.job_id for p in picks]),
                   FineTuningJob.status == jobstate.QUEUED)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Tenant).where(Tenant.id.in_({p.tenant_id for p in picks}))
            .values(last_dispatched_at=now).execution_options(synchronize_session=False)
        )
    return picks


def undispatch(session: Session, job_ids: list[str]) -> None:
    """The broker refused the messages: let the next tick try again."""
    session.execute(update(FineTuningJob)
                    .where(FineTuningJob.id.in_(job_ids),
                           FineTuningJob.status == jobstate.QUEUED)
                    .values(dispatched_at=None)
                    .execution_options(synchronize_session=False))


def sweep(session: Session, settings: Settings) -> dict[str, list[str]]:
    """Re-queue or fail jobs whose worker stopped heartbeating; re-arm lost dispatches."""
    if not _locked(session, SWEEP_LOCK):
        return {"requeued": [], "failed": [], "redispatched": []}
    now = session.scalar(select(func.now()))
    assert now is not None
    # GREATEST ignores a NULL heartbeat (a claim that never beat)
    last_sign = func.greatest(FineTuningJob.heartbeat_at, func.pg_postmaster_start_time())
    stale = list(session.scalars(
        select(FineTuningJob)
        .where(FineTuningJob.status == jobstate.RUNNING,
               last_sign < now - timedelta(seconds=settings.lease_timeout_seconds))
        .with_for_update(skip_locked=True)
    ))
    out: dict[str, list[str]] = {"requeued": [], "failed": [], "redispatched": []}
    for job in stale:
        silent = int((now - job.heartbeat_at).total_seconds()) if job.heartbeat_at else 0
        lost = f"worker {job.worker_id} stopped heartbeating {silent}s ago"
        if job.attempt >= settings.max_attempts:
            error = {"code": "worker_lost", "param": None,
                     "message": f"the job lost its worker {job.attempt} times (last: {lost}); "
                                f"giving up after {settings.max_attempts} attempts"}
            done = jobstate.transition(session, job.id, jobstate.FAILED,
                                       lease_token=job.lease_token,
                                       values={"error": error, "lease_token": None})
            if done is not None:
                job_repo.add_event(session, done, f"Fine-tuning job failed: {error['message']}",
                                   level="error")
                out["failed"].append(job.id)
            continue
        done = jobstate.transition(session, job.id, jobstate.QUEUED,
                                   lease_token=job.lease_token,
                                   values={"lease_token": None, "worker_id": None,
                                           "dispatched_at": None})
        if done is not None:
            job_repo.add_event(
                session, done, f"Worker lost ({lost}); job re-queued, attempt "
                f"{done.attempt + 1} of {settings.max_attempts} will resume from its last "
                "checkpoint", level="warn")
            out["requeued"].append(job.id)
    rearmed = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.status == jobstate.QUEUED,
               FineTuningJob.dispatched_at < now - timedelta(
                   seconds=settings.dispatch_timeout_seconds))
        .values(dispatched_at=None)
        .returning(FineTuningJob.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    out["redispatched"] = list(rearmed)
    idempotency_repo.delete_expired(session, now)
    return out


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
        now = session.scalar(select(func.now()))
        assert now is not None
        aborted = storage.abort_stale_uploads("tenants/",
                                              timedelta(hours=settings.stale_upload_hours))
        since = (self.covered_until or now - timedelta(days=1)) - timedelta(minutes=5)
        ended = session.execute(select(FineTuningJob.tenant_id, FineTuningJob.id).where(
            FineTuningJob.finished_at >= since)).all()
        staged = [key for tenant_id, job_id in ended
                  for key in storage.list_keys(staging_root(tenant_id, job_id))]
        storage.delete_quietly(*staged)
        self.covered_until = now
        return {"aborted_uploads": len(aborted), "staged_objects": len(staged)}


janitor = StorageJanitor()  # the scheduler process's
