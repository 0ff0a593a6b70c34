"""Runs one fine-tuning job on this worker: claim, train, publish — every write fenced.

The Celery task is a hint: :func:`run_job` claims the job with a conditional UPDATE
(queued → running, new lease token) and does nothing if someone else has it. From then on
each write checks the lease token and that the job still runs, so a worker whose lease
was taken over, or whose job was cancelled, cannot change the job. The recipe
(worker/training) knows nothing of this; it reports through :class:`JobReporter`.

A short database outage (a PostgreSQL restart) does not cost the attempt: every write is
retried with backoff for as long as the lease could still be ours (:func:`outage_tolerant`),
and cancel checks skip a beat instead of failing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import func
from sqlalchemy.orm import Session

from core.adapters import card
from core.adapters import service as adapter_service
from core.adapters.models import AdapterVersion
from core.base_models import repository as model_repo
from core.checkpoints import service as checkpoint_service
from core.files import repository as file_repo
from core.jobs import repository as job_repo
from core.jobs import state as jobstate
from core.jobs.models import FineTuningJob
from core.jobs.spec import JobSpec
from core.jobs.state import JobStatus
from core.kit import metrics
from core.kit.db import UNREACHABLE as DB_DOWN
from core.kit.db import tenant_scope
from core.kit.orm import utcnow
from core.kit.settings import get_settings
from core.kit.storage import (
    ObjectMismatch,
    StorageUnavailable,
    get_storage,
)
from core.tenants import integrations
from core.tenants import repository as tenant_repo
from core.tenants.integrations import Wandb
from worker.ticker import Stop, Ticker

if TYPE_CHECKING:
    from worker.integrations import Integration
    from worker.training.recipe import TrainResult, TrainSpec

log = logging.getLogger("loramill.worker")
CANCEL_POLL_SECONDS = 1.0
P = ParamSpec("P")
R = TypeVar("R")


class LeaseLost(Exception):
    pass


def outage_tolerant(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry ``fn`` (one whole transaction) while the database is unreachable, with
    backoff, for up to the lease timeout: past that the sweeper may have given the job to
    another worker, and the next fenced write says so."""
    @functools.wraps(fn)
    def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
        deadline = time.monotonic() + get_settings().lease_timeout_seconds
        pause = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except DB_DOWN as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("database unavailable (%s); retrying %s in %.2fs",
                            type(exc).__name__, fn.__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 4.0)
    return retrying


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    lease_token: str
    attempt: int
    model: str
    model_path: Path  # the registered path (a model in the bucket: see model_uri)
    training_key: str
    validation_key: str | None
    method: dict[str, Any]
    seed: int
    suffix: str | None
    dataset_sha256: str
    resume_step: int | None = None
    resume_prefix: str | None = None
    trained_tokens: int = 0  # as last reported, so a resumed run counts only new tokens
    wandb: Wandb | None = None  # the tenant's W&B credentials, for a job that logs there
    model_files: list[dict[str, Any]] | None = None  # a model in the bucket: its sha256s
    model_uri: str = ""  # ... and where it is (s3://bucket/prefix/)


@outage_tolerant
def claim(job_id: str, tenant_id: str, worker_id: str) -> Claim | None:
    token = secrets.token_hex(16)
    with tenant_scope(tenant_id) as session:
        job = jobstate.transition(session, job_id, JobStatus.RUNNING, values={
            "lease_token": token, "worker_id": worker_id, "heartbeat_at": func.now(),
            "started_at": func.coalesce(FineTuningJob.started_at, func.now()),
            "attempt": FineTuningJob.attempt + 1,
        })
        if job is None:
            return None
        base = model_repo.get(session, job.model)
        training = file_repo.by_id(session, job.training_file)
        validation = file_repo.by_id(session, job.validation_file) if job.validation_file else None
        assert base is not None and training is not None
        job_repo.add_event(session, job, f"Fine-tuning job started on {worker_id} "
                           f"(attempt {job.attempt})", data={"worker": worker_id})
        latest = checkpoint_service.latest(session, job.id)
        tenant = tenant_repo.get(session, job.tenant_id)
        assert tenant is not None
        return Claim(
            wandb=integrations.wandb_for(tenant, get_settings()),
            resume_step=latest.step if latest else None,
            resume_prefix=latest.object_prefix if latest else None,
            job_id=job.id, tenant_id=job.tenant_id, lease_token=token, attempt=job.attempt,
            model=job.model, model_path=Path(base.source_uri), model_files=base.files,
            model_uri=base.source_uri,
            training_key=training.object_key,
            validation_key=validation.object_key if validation else None,
            method=dict(job.method), seed=job.seed, suffix=job.suffix,
            dataset_sha256=training.sha256, trained_tokens=job.trained_tokens or 0,
        )


def fenced(session: Session, c: Claim) -> FineTuningJob:
    """Touch the heartbeat under our lease (locking the job row for this transaction);
    raises LeaseLost when the job is no longer ours."""
    job = job_repo.fence(session, c.job_id, c.lease_token)
    if job is None:
        raise LeaseLost(c.job_id)
    return job


class Heartbeat:
    """The job's lease, renewed every few seconds on a thread of its own (worker/ticker.py),
    so a long step or a slow model load does not look like a lost worker. ``lost`` is set
    once a renewal is refused: the job is no longer ours."""

    def __init__(self, c: Claim, every: float | None = None):
        self.claim = c
        self.lost = threading.Event()
        self._ticker = Ticker(f"heartbeat {c.job_id}",
                              every or get_settings().heartbeat_seconds, self._beat)

    def _beat(self) -> None:
        try:
            with tenant_scope(self.claim.tenant_id) as session:
                fenced(session, self.claim)
        except LeaseLost:
            self.lost.set()
            raise Stop() from None

    def __enter__(self) -> Heartbeat:
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ticker.stop()


class JobReporter:
    """The recipe's view of the job: events, metrics, cancel checks, checkpoints."""

    def __init__(self, c: Claim, heartbeat: Heartbeat,
                 shutting_down: threading.Event | None = None):
        self.claim = c
        self.heartbeat = heartbeat
        self.shutting_down = shutting_down or threading.Event()
        self.started = time.monotonic()
        self._polled = 0.0
        self._tokens = c.trained_tokens
        self.integrations: list[Integration] = []  # worker/integrations.py
        self.last_metrics: dict[str, Any] = {}

    @outage_tolerant
    def message(self, text: str, *, level: str = "info",
                data: dict[str, Any] | None = None) -> None:
        with tenant_scope(self.claim.tenant_id) as session:
            job = fenced(session, self.claim)
            job_repo.add_event(session, job, text, level=level, data=data)

    def metrics(self, values: dict[str, Any]) -> None:
        step, total = values["step"], values["total_steps"]
        elapsed = time.monotonic() - self.started
        remaining = elapsed / max(step, 1) * (total - step)
        text = f"Step {step}/{total}: training loss={values['train_loss']:.4f}"
        if values.get("valid_loss") is not None:
            text += f", validation loss={values['valid_loss']:.4f}"
        if values.get("valid_preference_accuracy") is not None:
            text += f", validation preference accuracy={values['valid_preference_accuracy']:.2f}"
        self._report_metrics(values, text, utcnow() + timedelta(seconds=remaining))
        new_tokens = values["trained_tokens"] - self._tokens
        self._tokens = values["trained_tokens"]
        metrics.TRAINED_TOKENS.labels(get_settings().gpu_class).inc(max(new_tokens, 0))
        self.last_metrics = values
        for integration in list(self.integrations):
            try:
                integration.log(values, step)
            except Exception as exc:  # never the job's failure: that integration stops
                log.warning("job %s: %s logging failed", self.claim.job_id, integration.kind,
                            exc_info=True)
                self.integrations.remove(integration)
                self.message(f"Logging to {integration.kind} failed ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); training goes on without it", level="warn")

    def finish_integrations(self, outcome: str) -> None:
        summary = {k: v for k, v in self.last_metrics.items()
                   if k in ("step", "train_loss", "valid_loss", "trained_tokens")}
        for integration in self.integrations:
            try:
                integration.finish(outcome, summary)
            except Exception:
                log.warning("job %s: %s did not finish cleanly", self.claim.job_id,
                            integration.kind, exc_info=True)
        self.integrations = []

    @outage_tolerant
    def _report_metrics(self, values: dict[str, Any], text: str, finish_at: Any) -> None:
        with tenant_scope(self.claim.tenant_id) as session:
            job = fenced(session, self.claim)
            job.trained_tokens = values["trained_tokens"]
            job.estimated_finish = finish_at
            job_repo.add_event(session, job, text, type="metrics", data=values)

    def should_stop(self) -> str | None:
        lost = self.heartbeat.lost.is_set()
        if self.shutting_down.is_set() and not lost:
            return "shutdown"
        now = time.monotonic()
        if not lost and now - self._polled < CANCEL_POLL_SECONDS:
            return None
        self._polled = now
        try:
            with tenant_scope(self.claim.tenant_id) as session:
                status, lease, pause = job_repo.lease_state(session, self.claim.job_id)
        except DB_DOWN:
            log.warning("database unavailable; cancel check skipped")
            return None  # the heartbeat retries, and a later check will tell
        if lease != self.claim.lease_token:
            return "lease_lost"
        if status == JobStatus.CANCELLED:
            return "cancel"
        if status != JobStatus.RUNNING:
            return "lease_lost"
        return "pause" if pause else None

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        uploaded = checkpoint_service.upload(get_storage(), self.claim.tenant_id,
                                             self.claim.job_id, step, directory)
        self._record_checkpoint(step, metrics, uploaded)

    @outage_tolerant
    def _record_checkpoint(self, step: int, metrics: dict[str, Any],
                           uploaded: checkpoint_service.Uploaded) -> None:
        with tenant_scope(self.claim.tenant_id) as session:
            checkpoint_service.record(session, fenced(session, self.claim), step, metrics,
                                      uploaded)


def explain(exc: BaseException) -> dict[str, Any]:
    """The error object a failed job shows: what went wrong, in the user's terms."""
    import torch

    from worker.training.checkpoint import IncompatibleAdapter
    from worker.training.data import NoTrainableTokens
    from worker.training.model import UnreadableModel

    if isinstance(exc, ParentUnusable | IncompatibleAdapter):
        return {"code": "parent_unusable", "message": public(str(exc)), "param": "model"}
    if isinstance(exc, ObjectMismatch):
        return {"code": "base_model_unreadable", "param": "model",
                "message": f"the stored base model file {exc.name} does not match the "
                           "sha256 it was registered with; the job does not train on it"}
    if isinstance(exc, NoTrainableTokens):
        return {"code": "no_trainable_tokens", "message": str(exc), "param": "training_file"}
    if isinstance(exc, UnreadableModel):
        return {"code": "base_model_unreadable", "message": str(exc), "param": "model"}
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return {"code": "out_of_memory",
                "message": "training ran out of memory; try a smaller batch_size, or a "
                           f"GPU class with more memory ({type(exc).__name__})",
                "param": "hyperparameters.batch_size"}
    if isinstance(exc, StorageUnavailable):
        return {"code": "storage_unavailable", "message": exc.message, "param": None}
    return {"code": "training_error", "message": public(f"{type(exc).__name__}: {exc}"),
            "param": None}


# Paths, URLs and object keys in an exception's text: the worker's log keeps them, the
# tenant's error does not.
_INTERNAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|(?<![\w.])/[^\s'\"]+|\btenants/\S+")


def public(text: str) -> str:
    return _INTERNAL.sub("<internal>", text)[:1000]


@outage_tolerant
def finish(c: Claim, target: str, message: str, *, level: str = "info",
           values: dict[str, Any] | None = None) -> None:
    """Move the job on under our lease (ending, pausing or handing it back), with an
    event saying so."""
    with tenant_scope(c.tenant_id) as session:
        job = jobstate.transition(session, c.job_id, target, lease_token=c.lease_token,
                                  values={"estimated_finish": None, **(values or {})})
        if job is None:
            raise LeaseLost(c.job_id)
        job_repo.add_event(session, job, message, level=level)
    _observe_end(job)


def _observe_end(job: FineTuningJob) -> None:
    """A finished job's duration, first start to end, for the metrics histogram."""
    if job.status in jobstate.TERMINAL and job.started_at and job.finished_at:
        metrics.JOB_DURATION.labels(job.gpu_class, job.status).observe(
            (job.finished_at - job.started_at).total_seconds())


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "safetensors"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    columns = ["step", "epoch", "train_loss", "valid_loss", "learning_rate",
               "tokens_per_second", "trained_tokens"]
    if any("train_preference_accuracy" in h for h in history):  # a DPO job's
        columns += ["train_preference_accuracy", "valid_preference_accuracy"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def publish(c: Claim, adapter_dir: Path, result: TrainResult,
            work_dir: Path) -> AdapterVersion:
    """Stage the adapter (no lock held), then publish it as the next version in one short,
    fenced transaction that also ends the job ``succeeded`` (core/adapters/service.py)."""
    storage = get_storage()
    csv_path = work_dir / "metrics.csv"
    write_metrics_csv(result.history, csv_path)
    staged = adapter_service.stage(
        storage, tenant_id=c.tenant_id, job_id=c.job_id, lease_token=c.lease_token,
        adapter_dir=adapter_dir, metrics_csv=csv_path, metric_rows=len(result.history))
    published = False
    try:
        row, done = _commit_version(c, staged, result)
        published = True
    finally:
        adapter_service.discard(storage, staged, published=published)
    _observe_end(done)
    return row


@outage_tolerant
def _commit_version(c: Claim, staged: adapter_service.Staged,
                    result: TrainResult) -> tuple[AdapterVersion, FineTuningJob]:
    """The fenced transaction: a cancel that committed first wins here; the copies put in
    place are removed if it does not commit."""
    storage = get_storage()
    parent = JobSpec.of(c.method).parent
    name = adapter_service.adapter_name(c.model, c.suffix, parent.adapter if parent else None)
    last = result.history[-1] if result.history else {}
    trained_tokens, evaluation = result.trained_tokens, result.evaluation
    placed: list[str] = []
    try:
        with tenant_scope(c.tenant_id) as session:
            job = fenced(session, c)
            row = adapter_service.publish_version(
                session, storage, job, staged, name=name, placed=placed, manifest={
                    "dataset_sha256": c.dataset_sha256, "trained_tokens": trained_tokens,
                    "metrics": {k: last.get(k) for k in ("step", "train_loss", "valid_loss")},
                    "libraries": _library_versions(),
                    "parent": parent.lineage() if parent else None,
                    "evaluation": evaluation})
            done = jobstate.transition(session, job.id, JobStatus.SUCCEEDED,
                                       lease_token=c.lease_token, values={
                                           "fine_tuned_model": row.fine_tuned_model,
                                           "trained_tokens": trained_tokens,
                                           "result_files": [staged.result.id],
                                           "estimated_finish": None})
            if done is None:
                raise LeaseLost(c.job_id)
            if evaluation and evaluation["published"] == "best":
                job_repo.add_event(
                    session, done, f"Published the adapter as it was at step "
                    f"{evaluation['best_step']}, the best validation loss "
                    f"({evaluation['best_valid_loss']:.4f}), not the last step's",
                    data=evaluation)
            job_repo.add_event(session, done,
                               f"New fine-tuned model created: {row.fine_tuned_model}",
                               data={"adapter": name, "version": row.version})
            job_repo.add_event(session, done, "The job has successfully completed")
    except BaseException:
        storage.delete_quietly(*placed)
        raise
    return row, done


def train_spec(c: Claim) -> TrainSpec:
    """The recipe's spec from the job's (core/jobs/spec.py): the one translation."""
    from worker.training.model import LoraSpec
    from worker.training.recipe import BASE_LEARNING_RATE, TrainSpec

    spec = JobSpec.of(c.method)
    hp, lora = spec.hyperparameters, spec.lora
    return TrainSpec(
        n_epochs=hp.n_epochs, batch_size=hp.batch_size, seed=c.seed,
        learning_rate=BASE_LEARNING_RATE * hp.learning_rate_multiplier,
        lora=LoraSpec(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                      target_modules=lora.target_modules, quantization=lora.quantization),
        checkpoint_every=max(get_settings().checkpoint_every_steps, 0), method=spec.type,
        beta=getattr(hp, "beta", 0.1), max_seq_len=spec.max_seq_len,
        eval_every=hp.eval_every, early_stopping_patience=hp.early_stopping_patience,
        early_stopping_threshold=hp.early_stopping_threshold,
        publish_best=hp.publish_checkpoint == "best")


def _download_parent(c: Claim, work: Path) -> Path | None:
    """A continued job's parent adapter, each file checked against its recorded sha256."""
    parent = JobSpec.of(c.method).parent
    if parent is None:
        return None
    directory = work / "parent"
    try:
        get_storage().download_verified(parent.object_prefix, parent.files, directory)
    except ObjectMismatch as exc:
        log.error("job %s: parent adapter file %s: sha256 %s, recorded %s", c.job_id,
                  exc.key, exc.found, exc.recorded)
        raise ParentUnusable(f"the parent adapter's {exc.name} does not match the sha256 "
                             "it was published with; the job does not start from it") from exc
    return directory


def _model_dir(c: Claim, reporter: JobReporter) -> Path:
    """The base model on this machine: its registered path, or a model in the bucket
    fetched into the local cache (every file's sha256 checked) the first time."""
    from core.base_models.models import BaseModel
    from core.base_models.service import local_dir

    if c.model_files is None:
        return c.model_path
    base = BaseModel(id=c.model, source_uri=c.model_uri, files=c.model_files)
    size = sum(int(f["bytes"]) for f in c.model_files)
    reporter.message(f"Fetching base model {c.model} from object storage ({size / 1e9:.2f} "
                     "GB, sha256-checked) unless it is cached here")
    return local_dir(base)


class ParentUnusable(Exception):
    """A continued job's parent adapter cannot be trained on (tampered, or not fitting)."""


def _download_checkpoint(c: Claim, work: Path) -> Path | None:
    if c.resume_prefix is None:
        return None
    storage = get_storage()
    directory = work / "resume"
    directory.mkdir()
    for key in storage.list_keys(c.resume_prefix):
        storage.download_file(key, directory / key.rsplit("/", 1)[-1])
    return directory


def hand_back(c: Claim, target: str, message: str) -> None:
    """Pause, or return to the queue on shutdown: the attempt does not count as a loss."""
    values: dict[str, Any] = {"lease_token": None, "worker_id": None,
                              "attempt": FineTuningJob.attempt - 1}
    if target == JobStatus.QUEUED:
        values["dispatched_at"] = None
    else:
        values["pause_requested_at"] = None
    finish(c, target, message, values=values)


def run_job(job_id: str, tenant_id: str, worker_id: str, *,
            shutting_down: threading.Event | None = None) -> str:
    """Run one job to an end state, a pause or a hand-back; returns what happened."""
    c = claim(job_id, tenant_id, worker_id)
    if c is None:
        return "not-claimed"
    with tempfile.TemporaryDirectory(prefix=f"{job_id}-") as tmp, Heartbeat(c) as heartbeat:
        reporter = JobReporter(c, heartbeat, shutting_down)
        outcome = "failed"
        try:
            outcome = _run_claimed(c, Path(tmp), reporter)
            return outcome
        finally:
            reporter.finish_integrations(outcome)


def _run_claimed(c: Claim, work: Path, reporter: JobReporter) -> str:
    from worker.integrations import open_all
    from worker.training import distributed
    from worker.training.rank import job_arguments
    from worker.training.recipe import Recipe, Stopped

    job_id = c.job_id
    recipe: Recipe | None = None
    try:
        reporter.integrations = open_all(
            c.job_id, c.model, JobSpec.of(c.method), c.wandb, work,
            get_settings().wandb_dir, lambda text: reporter.message(text, level="warn"))
        storage = get_storage()
        train_path = work / "train.jsonl"
        storage.download_file(c.training_key, train_path)
        valid_path = None
        if c.validation_key:
            valid_path = work / "valid.jsonl"
            storage.download_file(c.validation_key, valid_path)
        spec = train_spec(c)
        settings = get_settings()
        world = distributed.world_size(settings.training_devices)
        shard = world > 1 and (settings.training_shard if settings.training_shard
                               is not None else settings.gpu_class == "gpu-multi")
        reporter.message(f"Loading base model {c.model} "
                         f"({spec.lora.quantization} weights, LoRA r={spec.lora.r})")
        resume = _download_checkpoint(c, work)
        parent = None if resume else _download_parent(c, work)
        model_dir = _model_dir(c, reporter)
        ranks = job_arguments(spec, model_dir, train_path, valid_file=valid_path,
                              work_dir=work, resume_from=resume, init_from=parent)
        with distributed.started(world, ranks, work, shard=shard) as group:
            recipe = Recipe(spec, model_dir, train_path, reporter,
                            valid_file=valid_path, work_dir=work, group=group)
            recipe.setup(resume_from=resume, init_from=parent)
            if not recipe.position.step:
                on = recipe.device.type + (f" x {world}" if world > 1 else "") + (
                    " (FSDP)" if shard else "")
                reporter.message(
                    f"Training started: {len(recipe.train.examples)} examples, "
                    f"{recipe.total_steps} steps ({spec.n_epochs} epochs of "
                    f"{recipe.steps_per_epoch}) on {on}",
                    data={"total_steps": recipe.total_steps,
                          "device": recipe.device.type, "devices": world,
                          "sharded": shard,
                          "trainable_tokens": recipe.train.trainable_tokens})
            result = recipe.train_loop()
        adapter_dir = work / "adapter"
        recipe.save(adapter_dir)
        card.make_portable(adapter_dir, c.model)  # the registered id, not this host's path
        publish(c, adapter_dir, result, work)
        return "succeeded"
    except Stopped as stop:
        return _stopped(c, recipe, stop)
    except LeaseLost:
        return _lease_gone(c, recipe.position.step if recipe else None)
    except DB_DOWN:  # for longer than the lease: not the job's fault
        log.exception("job %s: database unreachable", job_id)
        try:
            hand_back(c, JobStatus.QUEUED, "The database was unreachable for too long: "
                      "job returned to the queue; it resumes from its last checkpoint")
        except LeaseLost:
            return _lease_gone(c, recipe.position.step if recipe else None)
        return "handed-back"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = explain(exc)
        try:
            finish(c, JobStatus.FAILED, f"Fine-tuning job failed: {error['message']}",
                   level="error", values={"error": error})
        except LeaseLost:
            return _lease_gone(c, recipe.position.step if recipe else None)
        return "failed"


@outage_tolerant
def _lease_gone(c: Claim, step: int | None) -> str:
    """The job is no longer ours to write: cancelled (the API did that at once; say where
    training stopped), or taken over by another worker."""
    with tenant_scope(c.tenant_id) as session:
        job = job_repo.cancelled_under(session, c.job_id, c.lease_token)
        if job is None:
            log.warning("job %s: lease lost at step %s; another worker has it", c.job_id, step)
            return "lease-lost"
        where = f"at step {step}" if step is not None else "before training"
        job_repo.add_event(session, job, f"Job cancelled {where}; the worker stopped")
    _observe_end(job)
    return "cancelled"


def _stopped(c: Claim, recipe: Any, stop: Any) -> str:
    if stop.reason in ("cancel", "lease_lost"):
        return _lease_gone(c, stop.step)
    if recipe is not None and stop.step != recipe.last_checkpoint_step:
        recipe.save_checkpoint()  # so the next claim resumes exactly here
    if stop.reason == "pause":
        hand_back(c, JobStatus.PAUSED, f"Job paused at step {stop.step}; resume continues "
                                      "from this checkpoint")
        return "paused"
    hand_back(c, JobStatus.QUEUED, f"Worker shutting down: job checkpointed at step "
                                  f"{stop.step} and returned to the queue")
    from core.kit import queue

    queue.wake_dispatcher()
    return "handed-back"
