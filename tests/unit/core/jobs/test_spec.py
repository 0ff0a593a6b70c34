"""The job spec (core/jobs/spec.py): "auto" hyperparameters resolved from the dataset's
size, LoRA defaults in one place, and specs stored before versioning still readable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.jobs.spec import (
    DatasetInfo,
    JobSpec,
    LoraSpec,
    RequestedHyperparameters,
    Supervised,
    resolve,
)


@pytest.mark.parametrize(("examples", "epochs", "batch"), [
    (1, 10, 1), (9, 10, 1), (15, 7, 1), (16, 7, 2), (40, 3, 2), (63, 2, 2), (64, 2, 4),
    (100, 1, 4), (255, 1, 4), (256, 1, 8), (100_000, 1, 8), (0, 10, 1),
])
def test_auto_hyperparameters_follow_the_dataset_size(examples: int, epochs: int,
                                                      batch: int) -> None:
    resolved = resolve(RequestedHyperparameters(), examples)
    assert (resolved.n_epochs, resolved.batch_size) == (epochs, batch)
    assert resolved.learning_rate_multiplier == 1.0


def test_given_values_are_kept() -> None:
    resolved = resolve(RequestedHyperparameters(n_epochs=3, batch_size=16,
                                                learning_rate_multiplier=0.5), 10_000)
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == (
        3, 16, 0.5)


def test_lora_defaults_and_bounds() -> None:
    assert LoraSpec().model_dump() == {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                       "target_modules": "all-linear", "quantization": "nf4"}
    bads: list[dict[str, object]] = [
        {"r": 0}, {"r": 257}, {"dropout": 1.0}, {"alpha": 0}, {"target_modules": []},
        {"target_modules": ["q proj"]}, {"quantization": "int3"}, {"rank": 8}]
    for bad in bads:
        with pytest.raises(ValidationError):
            LoraSpec.model_validate(bad)


def spec() -> JobSpec:
    return JobSpec(supervised=Supervised(hyperparameters=resolve(RequestedHyperparameters(),
                                                                 20)),
                   lora=LoraSpec(r=16), dataset=DatasetInfo(format="chat", sha256="0" * 64,
                                                            examples=20))


def test_stored_and_read_back_unchanged() -> None:
    stored = spec().stored()
    assert stored["version"] == 1 and stored["type"] == "supervised"
    assert JobSpec.of(stored) == spec()


def test_a_spec_stored_before_versioning_reads_as_version_one() -> None:
    stored = spec().stored()
    del stored["version"]
    assert JobSpec.of(stored).version == 1
    assert JobSpec.of(stored).hyperparameters.batch_size == 2
