from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from api.deps import CurrentTenant, JobsWriter, UoW
from api.schemas.adapters import CheckpointObject
from api.schemas.common import Limit, ListPage
from api.schemas.jobs import CreateJob, EstimateObject, EventObject, JobObject
from core.checkpoints import repository as checkpoint_repo
from core.jobs import estimate
from core.jobs import repository as job_repo
from core.jobs import service as job_service
from core.jobs.spec import RequestedDpoHyperparameters, RequestedHyperparameters
from core.kit import queue
from core.kit.errors import InvalidRequest
from core.kit.storage import get_storage
from core.kit.types import IntRange
from core.lineage import service as lineage
from core.tenants.scope import TenantId

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
estimates = APIRouter(prefix="/v1/fine_tuning/estimates", tags=["fine-tuning"])


def job_request(body: CreateJob, tenant_id: TenantId, session: Session,
                ) -> job_service.JobRequest:
    """What a job body asks for, checked for consistency; ``model`` resolved to a base
    model (and the parent adapter, for a job that continues one)."""
    kind = body.method.type if body.method else "supervised"
    settings = getattr(body.method, kind, None) if body.method else None
    for other in ("supervised", "dpo"):
        if other != kind and body.method and getattr(body.method, other) is not None:
            raise InvalidRequest(f"method.{other} is given but method.type is {kind!r}",
                                 param=f"method.{other}")
    hyper: RequestedHyperparameters | None = body.hyperparameters
    if settings is not None and settings.hyperparameters is not None:
        if hyper is not None:
            raise InvalidRequest(
                "give hyperparameters either at the top level or in "
                f"method.{kind}.hyperparameters, not both", param="hyperparameters",
            )
        hyper = settings.hyperparameters
    if kind == "dpo" and not isinstance(hyper, RequestedDpoHyperparameters):
        hyper = RequestedDpoHyperparameters(**(hyper.model_dump() if hyper else {}))
    base, parent = lineage.continue_from(session, tenant_id, body.model)
    return job_service.JobRequest(
        model=base, parent=parent, training_file=body.training_file,
        validation_file=body.validation_file, method=kind,
        hyperparameters=hyper or RequestedHyperparameters(), lora=body.lora,
        suffix=body.suffix or None, seed=body.seed, metadata=body.metadata,
        max_seq_len=body.max_seq_len, integrations=tuple(body.integrations or ()),
    )


@router.post("", response_model=JobObject)
def create_job(body: CreateJob, tenant_id: JobsWriter, uow: UoW) -> JobObject:
    job = job_service.create(uow.session, tenant_id, job_request(body, tenant_id,
                                                                  uow.session))
    uow.after_commit(queue.wake_dispatcher)
    return JobObject.of(job)


@estimates.post("", response_model=EstimateObject)
def estimate_job(body: CreateJob, tenant_id: CurrentTenant, uow: UoW) -> EstimateObject:
    """What a job with this body would train, on which GPU class, for how long and at
    what cost: every check job creation makes, nothing queued."""
    found = estimate.estimate(uow.session, get_storage(), tenant_id,
                              job_request(body, tenant_id, uow.session))
    return EstimateObject.model_validate(estimate.shown(found))


def _metadata_filter(request: Request) -> dict[str, str]:
    # OpenAI's form: ?metadata[key]=value
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
    return found


@router.get("", response_model=ListPage[JobObject])
def list_jobs(
    request: Request, tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
    limit: Limit = 20,
) -> ListPage[JobObject]:
    items, more = job_repo.list_page(
        uow.session, tenant_id, after=after, limit=limit, metadata=_metadata_filter(request)
    )
    return ListPage.of([JobObject.of(j) for j in items], more)


@router.get("/{job_id}", response_model=JobObject)
def get_job(job_id: str, tenant_id: CurrentTenant, uow: UoW) -> JobObject:
    return JobObject.of(job_service.get(uow.session, tenant_id, job_id))


@router.post("/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, tenant_id: JobsWriter, uow: UoW) -> JobObject:
    return JobObject.of(job_service.cancel(uow.session, tenant_id, job_id))


@router.post("/{job_id}/pause", response_model=JobObject)
def pause_job(job_id: str, tenant_id: JobsWriter, uow: UoW) -> JobObject:
    return JobObject.of(job_service.pause(uow.session, tenant_id, job_id))


@router.post("/{job_id}/resume", response_model=JobObject)
def resume_job(job_id: str, tenant_id: JobsWriter, uow: UoW) -> JobObject:
    job = job_service.resume(uow.session, tenant_id, job_id)
    uow.after_commit(queue.wake_dispatcher)
    return JobObject.of(job)


@router.get("/{job_id}/events", response_model=ListPage[EventObject])
def list_events(
    job_id: str, tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
    limit: Annotated[int, Query(), IntRange(1, 1000)] = 20,
) -> ListPage[EventObject]:
    job_service.get(uow.session, tenant_id, job_id)
    items, more = job_repo.list_events(
        uow.session, tenant_id, job_id, after=after, limit=limit
    )
    return ListPage.of([EventObject.of(e) for e in items], more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointObject])
def list_checkpoints(
    job_id: str, tenant_id: CurrentTenant, uow: UoW, after: str | None = None,
    limit: Limit = 10,
) -> ListPage[CheckpointObject]:
    job = job_service.get(uow.session, tenant_id, job_id)
    items, more = checkpoint_repo.list_page(uow.session, tenant_id, job_id, after=after,
                                            limit=limit)
    return ListPage.of([CheckpointObject.of(c, job.model) for c in items], more)
