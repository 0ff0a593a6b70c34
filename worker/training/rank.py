"""One rank of a training run: ``python -m worker.training.rank JOB.json``.

Started by a training worker that owns several devices (worker/training/distributed.py:
the worker is rank 0 and reports; this process is a helper), or by torchrun for a run
outside the service, e.g. ``torchrun --nproc-per-node 2 -m worker.training.rank job.json``
(rank 0 then prints its reports as JSON lines and writes the adapter to
``<work_dir>/adapter``). JOB.json holds :func:`job_arguments`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from worker.training import distributed
from worker.training.model import LoraSpec
from worker.training.recipe import Recipe, Stopped, TrainSpec


def job_arguments(spec: TrainSpec, model_dir: Path, train_file: Path, *,
                  valid_file: Path | None, work_dir: Path,
                  resume_from: Path | None, init_from: Path | None = None) -> dict[str, Any]:
    return {"spec": dataclasses.asdict(spec), "model_dir": str(model_dir),
            "train_file": str(train_file),
            "valid_file": str(valid_file) if valid_file else None,
            "work_dir": str(work_dir), "resume_from": str(resume_from) if resume_from else None,
            "init_from": str(init_from) if init_from else None}


def spec_of(values: dict[str, Any]) -> TrainSpec:
    return TrainSpec(**{**values, "lora": LoraSpec(**values["lora"])})


class Printed:
    """Rank 0's reports under torchrun: JSON lines on stdout. Helpers say nothing."""

    def __init__(self, speak: bool):
        self.speak = speak

    def _say(self, kind: str, **values: Any) -> None:
        if self.speak:
            print(json.dumps({"type": kind, **values}), flush=True)

    def message(self, text: str, *, level: str = "info",
                data: dict[str, Any] | None = None) -> None:
        self._say("message", text=text, level=level)

    def metrics(self, values: dict[str, Any]) -> None:
        self._say("metrics", **values)

    def should_stop(self) -> str | None:
        return None

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        self._say("checkpoint", step=step, directory=str(directory))


def main(path: str) -> int:
    job = json.loads(Path(path).read_text())
    group = distributed.from_environment()
    try:
        recipe = Recipe(spec_of(job["spec"]), Path(job["model_dir"]), Path(job["train_file"]),
                        Printed(group.leader), work_dir=Path(job["work_dir"]),
                        valid_file=Path(job["valid_file"]) if job["valid_file"] else None,
                        group=group)
        recipe.setup(resume_from=Path(job["resume_from"]) if job["resume_from"] else None,
                     init_from=Path(job["init_from"]) if job.get("init_from") else None)
        try:
            result = recipe.train_loop()
        except Stopped:
            return 0  # rank 0 stopped the run (cancel, pause, shutdown): it checkpoints
        if group.leader:
            recipe.save(Path(job["work_dir"]) / "adapter")
            print(json.dumps({"type": "result", "steps": result.steps,
                              "final_loss": result.final_loss,
                              "valid_loss": result.valid_loss}), flush=True)
        return 0
    finally:
        distributed.leave()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
