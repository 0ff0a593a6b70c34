"""Training checkpoints: adapter, optimizer, scheduler, RNG and data position, written
with safetensors and JSON only (nothing is ever unpickled).

Layout of a checkpoint directory::

    adapter_model.safetensors, adapter_config.json   the LoRA weights (peft)
    optimizer.safetensors                            per-parameter AdamW state tensors
    rng.safetensors                                  torch (and CUDA) RNG states
    best_adapter.safetensors                         publish_best: the best evaluation's
    state.json                                       position, optimizer groups/steps,
                                                     scheduler, metrics history
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from worker.training.distributed import shaped_like, whole


@dataclass
class Position:
    """Where training is: enough to resume exactly (with the RNG state)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    trained_tokens: int = 0


FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors",
         "rng.safetensors", "state.json")
BEST = "best_adapter.safetensors"  # publish_best: the adapter at the best evaluation


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):  # a sharded one gathered (every rank calls)
                tensors[f"{index}.{name}"] = whole(value.detach()).cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save(directory: Path, model: Any, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, position: Position,
         history: list[dict[str, Any]], *, write: bool = True,
         best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint; with sharded (FSDP) parameters every rank calls this (the
    shards are gathered) and only the one with ``write`` writes."""
    adapter = adapter_state(model)
    tensors, opt_meta = _optimizer_state(optimizer)
    if not write:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=adapter)
    save_file(tensors, str(directory / "optimizer.safetensors"))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(directory / BEST))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    save_file(rng, str(directory / "rng.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (directory / "state.json").write_text(json.dumps({
        "position": asdict(position), "optimizer": opt_meta, "scheduler": sched,
        "history": history, "python_random": _jsonable(random.getstate()),
    }))
    return directory


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters, whole, by parameter name: what ``save_pretrained``
    keeps of a state dict (a collective when they are sharded)."""
    return {name: whole(param.detach()) for name, param in model.named_parameters()
            if param.requires_grad}


def _load_adapter(model: Any, saved: dict[str, torch.Tensor]) -> None:
    """peft's saved names (no adapter name) onto the parameters, each laid out as the
    parameter is (this rank's shard of a sharded one)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(shaped_like(param, saved[name.replace(".default.", ".")]))


class IncompatibleAdapter(ValueError):
    """A parent adapter that does not fit the model it should continue on."""


def warm_start(directory: Path, model: Any) -> None:
    """A parent adapter's weights (``adapter_model.safetensors`` in ``directory``) as the
    start of this run: a continued job. Every LoRA parameter must be there, in its shape."""
    saved = load_file(str(directory / "adapter_model.safetensors"))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = name.replace(".default.", ".")
        if key not in saved:
            raise IncompatibleAdapter(f"the parent adapter has no weights for {key}")
        if tuple(saved[key].shape) != tuple(param.shape):  # a sharded one's: global
            raise IncompatibleAdapter(
                f"the parent adapter's {key} has shape {tuple(saved[key].shape)}, this "
                f"model's {tuple(param.shape)}")
    _load_adapter(model, saved)


def load(directory: Path, model: Any, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler,
         history: list[dict[str, Any]]) -> Position:
    state = json.loads((directory / "state.json").read_text())
    _load_adapter(model, load_file(str(directory / "adapter_model.safetensors")))
    tensors = load_file(str(directory / "optimizer.safetensors"))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        param = params[int(index)]
        if value.shape == param.shape:  # a moment: laid out as its parameter
            value = shaped_like(param, value)
        opt_state.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": opt_state,
                               "param_groups": state["optimizer"]["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuples(state["python_random"]))
    history[:] = state["history"]
    return Position(**state["position"])


def load_best(directory: Path) -> dict[str, torch.Tensor] | None:
    """The adapter at the best evaluation so far, where the checkpoint kept one."""
    path = directory / BEST
    return load_file(str(path)) if path.is_file() else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
