"""Fine-tuning jobs: creation with a frozen spec, reads, and cancellation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.base_models import memory
from core.base_models import repository as model_repo
from core.base_models.models import BaseModel
from core.files import repository as file_repo
from core.files.models import File
from core.files.validation import CHAT, PREFERENCE
from core.jobs import repository as job_repo
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob
from core.jobs.spec import (
    DatasetInfo,
    Dpo,
    Integration,
    JobSpec,
    LoraSpec,
    NeedsValidation,
    Parent,
    RequestedDpoHyperparameters,
    RequestedHyperparameters,
    Supervised,
    resolve,
    resolve_dpo,
    resolve_seq_len,
)
from core.jobs.state import JobStatus
from core.kit import ids
from core.kit.errors import InvalidRequest, NotFound, RateLimited
from core.kit.orm import utcnow
from core.kit.settings import get_settings
from core.tenants import integrations
from core.tenants import repository as tenant_repo
from core.tenants.models import Tenant
from core.tenants.scope import TenantId


@dataclass(frozen=True)
class JobRequest:
    """What the API validated; hyperparameter values may still be ``"auto"``."""

    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: RequestedHyperparameters  # RequestedDpoHyperparameters for dpo
    lora: LoraSpec | None  # None: the defaults, or a parent's settings
    suffix: str | None
    seed: int | None
    metadata: dict[str, str] | None
    method: str = "supervised"  # or "dpo"
    max_seq_len: int | None = None  # None: DEFAULT_SEQ_LEN; capped by the model's context
    parent: Parent | None = None  # continuing: ``model`` is then the parent's base model
    integrations: tuple[Integration, ...] = ()


# what a continued job cannot change: its parent's weights have this shape
LORA_SHAPE = ("r", "target_modules", "quantization")


def _lora(req: JobRequest) -> LoraSpec:
    """The job's LoRA settings: the request's over the defaults, or over the parent's for
    a continued job, whose shape (rank, target modules, quantization) they must keep."""
    if req.parent is None:
        return req.lora or LoraSpec()
    if req.lora is None:
        return req.parent.lora
    given = {name: getattr(req.lora, name) for name in req.lora.model_fields_set}
    for name in LORA_SHAPE:
        if name in given and given[name] != getattr(req.parent.lora, name):
            raise InvalidRequest(
                f"lora.{name} is {given[name]!r} but {req.parent.model} was trained with "
                f"{getattr(req.parent.lora, name)!r}; a continued job starts from its "
                f"parent's weights and keeps their shape: leave lora.{name} out",
                param=f"lora.{name}", code="lora_mismatch")
    return req.parent.lora.model_copy(update=given)


def _usable_file(session: Session, tenant_id: TenantId, file_id: str, param: str) -> File:
    file = file_repo.get(session, tenant_id, file_id, lock="share")  # not deleted meanwhile
    if file is None:
        raise InvalidRequest(f"{param} {file_id!r} does not exist", param=param,
                             code="file_not_found")
    if file.purpose != "fine-tune":
        raise InvalidRequest(f"{param} {file_id!r} has purpose {file.purpose!r}, "
                             "not 'fine-tune'", param=param, code="invalid_file")
    if file.status != "processed":
        raise InvalidRequest(f"{param} {file_id!r} is {file.status}, not processed",
                             param=param, code="file_not_ready")
    return file


def check_queued_quota(session: Session, tenant: Tenant) -> None:
    queued = job_repo.count_queued(session, TenantId(tenant.id))
    if queued >= tenant.max_queued_jobs:
        raise RateLimited(
            f"max_queued_jobs quota reached: {queued} of {tenant.max_queued_jobs} jobs are "
            "already queued; wait for some to start or ask for a higher quota",
            code="max_queued_jobs_exceeded",
        )


def _check_fits(file: File, param: str, method: str, base: BaseModel) -> None:
    """A file trains the job's method, and the base model's template can render it."""
    if method == "dpo" and file.format != PREFERENCE:
        raise InvalidRequest(
            f"a dpo job trains on preference data (input, preferred_output, "
            f"non_preferred_output); {param} {file.id!r} is {file.format} data",
            param=param, code="invalid_file")
    if method != "dpo" and file.format == PREFERENCE:
        raise InvalidRequest(
            f"{param} {file.id!r} is preference data, which trains a dpo job: give "
            "method: {\"type\": \"dpo\"}", param=param, code="invalid_file")
    if file.format in (CHAT, PREFERENCE) and not base.has_chat_template:
        raise InvalidRequest(
            f"{param} {file.id!r} is {file.format} data, which is rendered with the base "
            f"model's chat template, but {base.id!r} has none; use prompt/completion or "
            "text data with it, or a base model with a chat template",
            param=param, code="unsupported_by_model")
    if file.tool_examples and not base.renders_tools:
        raise InvalidRequest(
            f"{param} {file.id!r} has {file.tool_examples} examples with tools or tool "
            f"calls, but the chat template of {base.id!r} cannot render tools; choose a "
            "base model whose template does, or remove the tools from the data",
            param=param, code="unsupported_by_model")


def _method(req: JobRequest, examples: int) -> dict[str, Any]:
    validation = req.validation_file is not None
    try:
        if req.method == "dpo":
            assert isinstance(req.hyperparameters, RequestedDpoHyperparameters)
            return {"type": "dpo", "dpo": Dpo(hyperparameters=resolve_dpo(
                req.hyperparameters, examples, validation=validation))}
        return {"supervised": Supervised(hyperparameters=resolve(
            req.hyperparameters, examples, validation=validation))}
    except NeedsValidation as exc:
        raise InvalidRequest(
            f"hyperparameters.{exc.name} works on the validation loss, and the job has no "
            "validation_file; give one, or leave it out", param=f"hyperparameters.{exc.name}",
            code="validation_file_required") from None


@dataclass(frozen=True)
class Plan:
    """A job as it would run: its files and base model checked, its spec frozen, its GPU
    class chosen from the predicted memory. What creating and estimating share."""

    base: BaseModel
    training: File
    validation: File | None
    spec: JobSpec
    gpu_class: str
    predicted: memory.Estimate | None


def create(session: Session, tenant_id: TenantId, req: JobRequest) -> FineTuningJob:
    tenant = tenant_repo.get(session, tenant_id, lock=True)  # serialise the quota
    assert tenant is not None
    check_queued_quota(session, tenant)
    integrations.check_usable(tenant, get_settings(), [i.type for i in req.integrations])
    p = plan(session, tenant_id, req)
    gpu_class, predicted = p.gpu_class, p.predicted
    job = job_repo.add(session, FineTuningJob(
        id=ids.new_id(ids.JOB), tenant_id=tenant_id, model=p.base.id,
        training_file=p.training.id, validation_file=req.validation_file,
        method=p.spec.stored(), suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
        metadata_=req.metadata, status=JobStatus.QUEUED, gpu_class=gpu_class,
    ))
    job_repo.add_event(session, job, f"Created fine-tuning job: {job.id}")
    if req.parent is not None:
        job_repo.add_event(session, job, f"Continuing from {req.parent.model} (job "
                           f"{req.parent.job_id}): training starts from its adapter",
                           data={"parent": req.parent.lineage()})
    data: dict[str, Any] = {"gpu_class": job.gpu_class}
    text = f"Job queued for a {job.gpu_class} worker"
    if predicted is not None:
        data["predicted_memory_gib"] = predicted.gib()
        if gpu_class != "cpu":
            gib = memory.needs(predicted, gpu_class) / memory.GIB
            text += f" (predicted peak memory {gib:.1f} GiB a GPU)"
    job_repo.add_event(session, job, text + "; waiting for a worker", data=data)
    return job


def plan(session: Session, tenant_id: TenantId, req: JobRequest) -> Plan:
    """Check a job request and resolve it, writing nothing; every 4xx a job creation can
    meet but the queue quota."""
    base = model_repo.get_enabled(session, req.model)
    if base is None:
        raise InvalidRequest(
            f"the base model of {req.parent.model!r}, {req.model!r}, is not available"
            if req.parent else f"model {req.model!r} is neither an available base model "
            "nor one of your fine-tuned or checkpoint models; GET /v1/models lists them",
            param="model", code="model_not_found",
        )
    training = _usable_file(session, tenant_id, req.training_file, "training_file")
    validation = None
    if req.validation_file is not None:
        validation = _usable_file(session, tenant_id, req.validation_file, "validation_file")
        if validation.format != training.format:
            raise InvalidRequest(
                f"validation_file is {validation.format} data but training_file is "
                f"{training.format}; use one format for both", param="validation_file",
                code="invalid_file",
            )
    for file, param in ((training, "training_file"), (validation, "validation_file")):
        if file is not None:
            _check_fits(file, param, req.method, base)
    spec = JobSpec(
        **_method(req, training.example_count),
        lora=_lora(req), parent=req.parent, integrations=list(req.integrations),
        dataset=DatasetInfo(format=training.format, sha256=training.sha256,
                            examples=training.example_count),
        max_seq_len=resolve_seq_len(req.max_seq_len, base.context_length),
    )
    gpu_class, predicted = _gpu_class(base, spec)
    return Plan(base=base, training=training, validation=validation, spec=spec,
                gpu_class=gpu_class, predicted=predicted)


def memory_settings(base: BaseModel, spec: JobSpec) -> memory.Settings:
    return memory.Settings(
        r=spec.lora.r, target_modules=spec.lora.target_modules,
        quantization=spec.lora.quantization,
        seq_len=spec.max_seq_len or base.context_length)


def _gpu_class(base: BaseModel, spec: JobSpec) -> tuple[str, memory.Estimate | None]:
    """The job's GPU class from its predicted peak memory (its rank, targets and sequence
    length), never below an operator's pinned class; refused when no class can hold it or
    this deployment runs no worker of that class or a larger one (it would wait in the
    queue forever)."""
    shape = memory.Shape(**base.shape) if base.shape else None
    settings = memory_settings(base, spec)
    predicted = memory.estimate(shape, settings) if shape else None
    chosen = memory.class_for(base.params, predicted) if shape else base.gpu_class
    if chosen is None:
        assert predicted is not None
        largest, per_gpu, gpus = memory.GPU_CLASSES[-1]
        raise InvalidRequest(
            f"a job on {base.id!r} with LoRA r={settings.r} and max_seq_len "
            f"{settings.seq_len} needs about {predicted.per_gpu(gpus) / memory.GIB:.0f} GiB "
            f"on each GPU, more than the largest class ({largest}: {gpus} x "
            f"{per_gpu / memory.GIB:.0f} GiB) has; lower max_seq_len or the LoRA rank",
            param="max_seq_len", code="model_too_large")
    if base.gpu_class_pinned or not shape:
        chosen = memory.larger(base.gpu_class, chosen)
    deployed = get_settings().gpu_classes
    runs = memory.deployed_at_least(chosen, deployed)  # a larger class holds it too
    if runs is None:
        raise InvalidRequest(
            f"a job on {base.id!r} needs a {chosen} worker and this deployment runs none "
            f"(LORAMILL_GPU_CLASSES: {', '.join(deployed)}); it would wait forever",
            param="model", code="no_worker_class")
    return runs, predicted


def get(session: Session, tenant_id: TenantId, job_id: str) -> FineTuningJob:
    job = job_repo.get(session, tenant_id, job_id)
    if job is None:
        raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def cancel(session: Session, tenant_id: TenantId, job_id: str) -> FineTuningJob:
    """Cancel a job, at once, in whatever unfinished state it is: the one place that decides
    a cancel. A running job's worker finds its lease gone (every write it makes is fenced
    by status and lease) and stops at its next step, so nothing it does after this counts:
    no checkpoint row, no adapter version. A worker that died needs nothing more. If the
    job finished first (a publish that committed while this waited for its row lock), the
    answer says so: a cancel is never acknowledged and then ignored."""
    job = get(session, tenant_id, job_id)
    if job.status == JobStatus.CANCELLED:  # cancelling twice is harmless
        return job
    was = job.status
    cancelled = jobstate.transition(session, job_id, JobStatus.CANCELLED, tenant_id=tenant_id,
                                    values={"cancel_requested_at": utcnow(),
                                            "estimated_finish": None})
    if cancelled is None:
        session.refresh(job)  # what won the race: a worker finished it, or another cancel
        if job.status == JobStatus.CANCELLED:
            return job
        raise InvalidRequest(f"job {job_id} has already {job.status} and cannot be cancelled",
                             param="fine_tuning_job_id", code="job_not_cancellable")
    job_repo.add_event(session, cancelled, "Job cancelled" + (
        "; its worker stops at its next step" if was == JobStatus.RUNNING else ""))
    return cancelled


def pause(session: Session, tenant_id: TenantId, job_id: str) -> FineTuningJob:
    """Ask a running job to checkpoint and free its worker; it becomes ``paused``."""
    job = get(session, tenant_id, job_id)
    if job.status == JobStatus.PAUSED:
        return job
    if job.status != JobStatus.RUNNING:
        raise InvalidRequest(f"only running jobs can be paused; job {job_id} is {job.status}",
                             param="fine_tuning_job_id", code="job_not_pausable")
    if job.pause_requested_at is None:
        job.pause_requested_at = utcnow()
        job_repo.add_event(session, job, "Pause requested; checkpointing at the next step")
        session.flush()
    return job


def resume(session: Session, tenant_id: TenantId, job_id: str) -> FineTuningJob:
    """Put a paused job back in the queue; it continues from its pause checkpoint."""
    job = get(session, tenant_id, job_id)
    if job.status != JobStatus.PAUSED:
        raise InvalidRequest(f"only paused jobs can be resumed; job {job_id} is {job.status}",
                             param="fine_tuning_job_id", code="job_not_resumable")
    tenant = tenant_repo.get(session, tenant_id, lock=True)
    assert tenant is not None
    check_queued_quota(session, tenant)
    resumed = jobstate.transition(session, job_id, JobStatus.QUEUED, tenant_id=tenant_id,
                                  values={"pause_requested_at": None, "dispatched_at": None})
    if resumed is None:
        session.refresh(job)
        raise InvalidRequest(f"job {job_id} is {job.status} and cannot be resumed",
                             param="fine_tuning_job_id", code="job_not_resumable")
    job_repo.add_event(session, resumed, "Job resumed; queued to continue from its "
                                         "last checkpoint")
    return resumed
