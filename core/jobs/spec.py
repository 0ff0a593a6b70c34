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


class RequestedDpoHyperparameters(RequestedHyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class Hyperparameters(BaseModel):
    """What a job runs with: no ``"auto"`` left."""

    model_config = ConfigDict(frozen=True)

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


def resolve_dpo(requested: RequestedDpoHyperparameters, examples: int) -> DpoHyperparameters:
    common = resolve(requested, examples)
    beta = DEFAULT_BETA if requested.beta == "auto" else float(requested.beta)
    return DpoHyperparameters(**common.model_dump(), beta=beta)


def resolve(requested: RequestedHyperparameters, examples: int) -> Hyperparameters:
    """Turn ``"auto"`` into numbers from the dataset size, so the spec is fixed at
    creation and the job shows what it will run."""
    def pick(value: Any, auto: Any) -> Any:
        return auto if value == "auto" else value

    batch_auto = 1 if examples < 16 else 2 if examples < 64 else 4 if examples < 256 else 8
    return Hyperparameters(
        n_epochs=pick(requested.n_epochs, min(10, max(1, math.ceil(100 / max(examples, 1))))),
        batch_size=pick(requested.batch_size, batch_auto),
        learning_rate_multiplier=pick(requested.learning_rate_multiplier, 1.0),
    )


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


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: Literal[1] = SPEC_VERSION  # specs stored before versioning read as 1
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    lora: LoraSpec
    dataset: DatasetInfo
    max_seq_len: int | None = None

    @property
    def hyperparameters(self) -> Hyperparameters:
        method = self.dpo if self.type == "dpo" else self.supervised
        assert method is not None, f"a {self.type} spec without its settings"
        return method.hyperparameters

    def method(self) -> dict[str, Any]:
        """The OpenAI-style ``method`` object: the type and its settings."""
        return {"type": self.type, self.type: {"hyperparameters":
                                               self.hyperparameters.model_dump()}}

    @classmethod
    def of(cls, method: dict[str, Any]) -> JobSpec:
        """The spec stored in a job's ``method`` column."""
        return cls.model_validate(method)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
