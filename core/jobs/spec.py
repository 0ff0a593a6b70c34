"""The job spec: one typed, versioned object frozen at creation (stored in the job's
``method`` column) and read by the API's job object, the runner, and through the runner
the training recipe. LoRA and hyperparameter defaults live here and nowhere else."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.kit.types import IntRange

SPEC_VERSION: Literal[1] = 1
Auto = Literal["auto"]
# the longest sequence a job trains on: a job's max_seq_len, capped by the base model's
# context; jobs stored before it existed have none (the recipe uses the model's context)
DEFAULT_SEQ_LEN = 4096
MIN_SEQ_LEN, MAX_SEQ_LEN = 64, 131072


def resolve_seq_len(requested: int | None, context_length: int) -> int:
    return min(requested or DEFAULT_SEQ_LEN, context_length)


class LoraSpec(BaseModel):
    """LoRA settings; every field has its default here (the API's ``lora`` object takes
    any subset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: Annotated[int, IntRange(1, 256)] = 8
    alpha: float = Field(16.0, gt=0, le=4096)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    quantization: Literal["nf4", "none"] = "nf4"

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value or len(value) > 64:
                raise ValueError("must list 1 to 64 module names, or be 'all-linear'")
            for name in value:
                if not name or len(name) > 100 or not name.replace("_", "").replace(
                    ".", ""
                ).isalnum():
                    raise ValueError(f"{name!r} is not a module name")
        return value


class RequestedHyperparameters(BaseModel):
    """What a job may ask for: numbers, or ``"auto"`` (the default) to let the dataset's
    size decide (:func:`resolve`)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, IntRange(1, 50)] = "auto"
    batch_size: Auto | Annotated[int, IntRange(1, 256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"
    # evaluation (loramill; they need a validation_file): the validation loss every so many
    # steps ("auto": about EVALUATIONS a run), early stopping after so many evaluations
    # without an improvement above the threshold, and which checkpoint is published
    eval_every: Auto | Annotated[int, IntRange(1, 1_000_000)] = "auto"
    early_stopping_patience: Annotated[int, IntRange(1, 1000)] | None = None
    early_stopping_threshold: float = Field(0.0, ge=0, le=10)
    publish_checkpoint: Literal["last", "best"] = "last"


class RequestedDpoHyperparameters(RequestedHyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class Hyperparameters(BaseModel):
    """What a job runs with: no ``"auto"`` left."""

    model_config = ConfigDict(frozen=True)

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    # None without a validation file (jobs stored before it: at epoch ends)
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    publish_checkpoint: Literal["last", "best"] = "last"

    def shown(self) -> dict[str, Any]:
        """What the job object shows: the evaluation settings only with a validation
        file (without one there is nothing to evaluate)."""
        if self.eval_every is None:
            return self.model_dump(exclude={*EVALUATION_FIELDS, "early_stopping_threshold"})
        return self.model_dump()


EVALUATIONS = 10  # eval_every "auto": about this many validation passes a run
EVALUATION_FIELDS = ("eval_every", "early_stopping_patience", "publish_checkpoint")


def resolve_dpo(requested: RequestedDpoHyperparameters, examples: int, *,
                validation: bool = False) -> DpoHyperparameters:
    common = resolve(requested, examples, validation=validation)
    beta = DEFAULT_BETA if requested.beta == "auto" else float(requested.beta)
    return DpoHyperparameters(**common.model_dump(), beta=beta)


def resolve(requested: RequestedHyperparameters, examples: int, *,
            validation: bool = False) -> Hyperparameters:
    """Turn ``"auto"`` into numbers from the dataset size (and whether there is a
    validation file), so the spec is fixed at creation and the job shows what it will
    run. Evaluation settings without a validation file are a :class:`NeedsValidation`."""
    def pick(value: Any, auto: Any) -> Any:
        return auto if value == "auto" else value

    batch_auto = 1 if examples < 16 else 2 if examples < 64 else 4 if examples < 256 else 8
    epochs = pick(requested.n_epochs, min(10, max(1, math.ceil(100 / max(examples, 1)))))
    batch_size = pick(requested.batch_size, batch_auto)
    if not validation:
        for name in EVALUATION_FIELDS:
            if name in requested.model_fields_set and getattr(requested, name) not in (
                    "auto", None, "last"):
                raise NeedsValidation(name)
    steps = total_steps(examples, batch_size, epochs)
    return Hyperparameters(
        n_epochs=epochs, batch_size=batch_size,
        learning_rate_multiplier=pick(requested.learning_rate_multiplier, 1.0),
        eval_every=pick(requested.eval_every, max(1, steps // EVALUATIONS))
        if validation else None,
        early_stopping_patience=requested.early_stopping_patience,
        early_stopping_threshold=requested.early_stopping_threshold,
        publish_checkpoint=requested.publish_checkpoint,
    )


def total_steps(examples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of a job, as the trainer counts them from the examples it loads
    (``worker.training.recipe.total_steps``; test_schedule holds the two equal)."""
    return math.ceil(examples / batch_size) * epochs


class NeedsValidation(ValueError):
    """An evaluation setting on a job without a validation file."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Supervised(BaseModel):
    model_config = ConfigDict(frozen=True)

    hyperparameters: Hyperparameters


DEFAULT_BETA = 0.1


class DpoHyperparameters(Hyperparameters):
    beta: float  # how far the adapter may move from the base model's preferences


class Dpo(BaseModel):
    """Direct preference optimisation on a preference file; the base model (the adapter
    switched off) is the reference."""

    model_config = ConfigDict(frozen=True)

    hyperparameters: DpoHyperparameters


class DatasetInfo(BaseModel):
    """The training file as it was when the job was created."""

    model_config = ConfigDict(frozen=True)

    format: str | None
    sha256: str
    examples: int


class Parent(BaseModel):
    """The adapter a continued job starts from (OpenAI's semantics: ``model`` is one of
    the tenant's fine-tuned or checkpoint models): its lineage, its files (the worker
    checks them against these sha256s) and the LoRA settings it was trained with."""

    model_config = ConfigDict(frozen=True)

    model: str  # the fine-tuned or checkpoint model id the job was created with
    job_id: str
    lora: LoraSpec
    adapter: str | None = None  # a published version: its adapter and number
    adapter_version: int | None = None
    checkpoint_step: int | None = None  # a checkpoint model: its step
    object_prefix: str
    files: list[dict[str, Any]]  # name, bytes, sha256

    def lineage(self) -> dict[str, Any]:
        """What the API and the manifest show (not where the files are)."""
        return self.model_dump(include={"model", "job_id", "adapter", "adapter_version",
                                        "checkpoint_step"})


class WandbSettings(BaseModel):
    """OpenAI's ``{"type": "wandb", "wandb": {...}}`` settings: where the job's metrics
    are logged in Weights & Biases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128)  # default: the job's id
    entity: str | None = Field(None, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=20)


class WandbIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["wandb"]
    wandb: WandbSettings


# the one kind so far; the worker's integration point (worker/integrations.py) takes any
Integration = WandbIntegration


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: Literal[1] = SPEC_VERSION  # specs stored before versioning read as 1
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    lora: LoraSpec
    dataset: DatasetInfo
    max_seq_len: int | None = None
    parent: Parent | None = None  # a continued job: the adapter it starts from
    integrations: list[Integration] = Field(default_factory=list)  # metrics also go there

    @property
    def hyperparameters(self) -> Hyperparameters:
        method = self.dpo if self.type == "dpo" else self.supervised
        assert method is not None, f"a {self.type} spec without its settings"
        return method.hyperparameters

    def method(self) -> dict[str, Any]:
        """The OpenAI-style ``method`` object: the type and its settings."""
        return {"type": self.type, self.type: {"hyperparameters":
                                               self.hyperparameters.shown()}}

    @classmethod
    def of(cls, method: dict[str, Any]) -> JobSpec:
        """The spec stored in a job's ``method`` column."""
        return cls.model_validate(method)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
