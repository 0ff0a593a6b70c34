"""Where a job's metrics go besides its events: the integrations its spec asks for
(Weights & Biases so far). The integration point is :class:`Integration`; :func:`open_all`
makes one per entry of the spec's ``integrations`` (a new kind, MLflow say, is a class
and a line in ``KINDS``). The runner's reporter feeds each one the metrics it reports
and finishes them when the job ends; one that fails is switched off with a warning event
and never fails the job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core.jobs.spec import Integration as IntegrationSpec
from core.jobs.spec import JobSpec, WandbIntegration
from core.tenants.integrations import Wandb

log = logging.getLogger("loramill.worker")


class Integration(Protocol):
    kind: str

    def log(self, values: dict[str, Any], step: int) -> None: ...

    def finish(self, outcome: str, summary: dict[str, Any]) -> None: ...


class WandbRun:
    """One W&B run per job, its id the job's, so a job resumed on another worker goes on
    logging to the same run."""

    kind = "wandb"

    def __init__(self, job_id: str, model: str, spec: JobSpec, wanted: WandbIntegration,
                 credentials: Wandb, work_dir: Path, directory: Path | None):
        import wandb

        settings = wanted.wandb
        extra = {"base_url": credentials.base_url} if credentials.base_url else {}
        root = directory or work_dir
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, name=settings.name or job_id,
            tags=list(settings.tags), id=job_id.replace("ftjob-", ""), resume="allow",
            mode=credentials.mode, dir=str(root), reinit="create_new",
            config={"job_id": job_id, "base_model": model, "method": spec.type,
                    "hyperparameters": spec.hyperparameters.model_dump(),
                    "lora": spec.lora.model_dump(), "max_seq_len": spec.max_seq_len},
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                    api_key=credentials.api_key, **extra))

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in values.items() if k not in ("step", "total_steps")},
                     step=step)

    def finish(self, outcome: str, summary: dict[str, Any]) -> None:
        self.run.summary.update({"outcome": outcome, **summary})
        self.run.finish(exit_code=0 if outcome == "succeeded" else 1)


Factory = Callable[..., Integration]
KINDS: dict[str, Factory] = {"wandb": WandbRun}


def open_all(job_id: str, model: str, spec: JobSpec, wandb: Wandb | None, work_dir: Path,
             wandb_dir: Path | None, warn: Callable[[str], None]) -> list[Integration]:
    """The job's integrations, started; one that cannot start is reported and left out."""
    found: list[Integration] = []
    for wanted in spec.integrations:
        try:
            found.append(_open(wanted, job_id, model, spec, wandb, work_dir, wandb_dir))
        except Exception as exc:
            log.warning("job %s: %s integration did not start", job_id, wanted.type,
                        exc_info=True)
            warn(f"The {wanted.type} integration could not start ({type(exc).__name__}: "
                 f"{str(exc)[:200]}); training goes on without it")
    return found


def _open(wanted: IntegrationSpec, job_id: str, model: str, spec: JobSpec,
          wandb: Wandb | None, work_dir: Path, wandb_dir: Path | None) -> Integration:
    if wanted.type == "wandb":
        assert wandb is not None, "the claim carries the tenant's W&B credentials"
        return KINDS["wandb"](job_id, model, spec, wanted, wandb, work_dir, wandb_dir)
    raise ValueError(f"no integration of type {wanted.type!r}")
