"""One job across several devices: data-parallel ranks that take turns at a step's work.

Every rank builds the same step (same seed, same data, same packing), takes its share of
the step's micro-batches (:meth:`Group.share`), and backpropagates its summed token loss
divided by the step's *global* trainable-token count. One all-reduce then sums the LoRA
gradients and the loss (:meth:`Group.reduce_step`), so every rank applies the same update
and the result is the one-process result up to the order of float sums. The adapter's
gradients are small (megabytes), so one flat all-reduce after the backward passes costs
little, and ranks may run different numbers of micro-batches (DDP's hooks would need the
same number on every rank).

The ranks follow torchrun's environment contract (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): ``python -m worker.training.rank`` runs
under torchrun as it is, and a training worker that owns several devices is rank 0 itself
(it holds the job's lease and reports) and starts the others with :func:`start_helpers`.
Rank 0 alone reports, checkpoints and publishes; the decision to stop is broadcast from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")
# what rank 0's reporter may answer to "should we stop?", in the order broadcast
STOP_REASONS = (None, "cancel", "pause", "shutdown", "lease_lost")
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank that died does not hang the others longer


SHARD_VARIABLE = "LORAMILL_TRAINING_SHARD"  # "1": FSDP (the ranks share the weights)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    # FSDP: each decoder layer's weights (4-bit, stored in the compute dtype) and LoRA
    # parameters are sharded over the ranks and gathered for each layer's pass
    shard: bool = False

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        return torch.device("cpu")

    def _owners(self, sizes: Sequence[int]) -> list[int]:
        """The rank each part goes to: greedily balanced by size (largest first onto the
        least loaded rank), the same on every rank."""
        load, owners = [0] * self.world, [0] * len(sizes)
        for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            owner = min(range(self.world), key=lambda r: (load[r], r))
            load[owner] += sizes[index]
            owners[index] = owner
        return owners

    def share(self, parts: Sequence[T], sizes: Sequence[int]) -> list[T]:
        """This rank's parts, in their order (:meth:`_owners` splits them)."""
        if self.world == 1:
            return list(parts)
        return [part for part, owner in zip(parts, self._owners(sizes), strict=True)
                if owner == self.rank]

    def turns(self, parts: Sequence[T], sizes: Sequence[int]) -> list[tuple[T, bool]]:
        """This rank's share as (part, real). Sharded ranks gather each layer's weights
        together, so each runs as many passes as the busiest: fillers (a real part, run
        with its loss weighted 0) make up the difference."""
        if not self.shard or not parts:
            return [(part, True) for part in self.share(parts, sizes)]
        owners = self._owners(sizes)
        mine = [(part, True) for part, owner in zip(parts, owners, strict=True)
                if owner == self.rank]
        most = max(owners.count(rank) for rank in range(self.world))
        return mine + [(parts[0], False)] * (most - len(mine))

    def reduce_step(self, params: Sequence[torch.nn.Parameter], *values: float) -> list[float]:
        """Sum the parameters' gradients and ``values`` over the ranks; the sums of
        ``values`` are returned. A rank that had no work contributes zeros. Sharded, the
        gradients were summed by FSDP's reduce-scatter already."""
        if self.world == 1:
            return list(values)
        if self.shard:
            return self.sum(*values)
        import torch.distributed as dist

        device = params[0].device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]
                         + [torch.tensor(values, dtype=torch.float32, device=device)])
        dist.all_reduce(flat)
        at = 0
        for param in params:
            n = param.numel()
            param.grad = flat[at : at + n].view_as(param).to(param.dtype)
            at += n
        return [float(v) for v in flat[at:]]

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device())
        dist.all_reduce(tensor)
        return [float(v) for v in tensor]

    def decide(self, reason: str | None) -> str | None:
        """Rank 0's answer to "stop?" on every rank."""
        if self.world == 1:
            return reason
        import torch.distributed as dist

        code = torch.tensor([STOP_REASONS.index(reason) if self.leader else 0],
                            device=self.device())
        dist.broadcast(code, src=0)
        return STOP_REASONS[int(code)]


def world_size(configured: int = 0) -> int:
    """The ranks of a job on this worker: ``configured`` (LORAMILL_TRAINING_DEVICES), or
    else one per GPU the worker sees, or one on a CPU."""
    if configured > 0:
        return configured
    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def join(rank: int, world: int, shard: bool = False) -> Group:
    """Join the process group described by the torchrun environment variables."""
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    return Group(rank, world, shard=shard and world > 1)


def from_environment() -> Group:
    return join(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                os.environ.get(SHARD_VARIABLE) == "1")


def shard_layers(model: Any) -> None:
    """FSDP2 on each decoder layer of a peft model: its 4-bit weights and LoRA parameters
    sharded over the ranks, gathered for the layer's pass (and its recomputation), the
    LoRA gradients reduce-scattered as sums (the recipe's loss is already divided by the
    step's global token count). Embeddings, norms and the output layer are frozen and
    stay whole on every rank: they need no gradient sync, and the chunked loss calls the
    output layer a different number of times on each rank."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.get_base_model().get_decoder().layers:
        fully_shard(layer)
        layer.set_gradient_divide_factor(1.0)  # sums, not means
        layer.set_force_sum_reduction_for_comms(True)  # plain SUM: what gloo has


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered (a collective: every rank calls it), or the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shaped_like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out as ``param`` is: this rank's shard of a sharded one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh,
                                 param.placements)
    return value


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def started(world: int, job: dict[str, Any], work_dir: Path, *,
            shard: bool = False) -> Iterator[Group]:
    """This process as rank 0 of ``world``, with ranks 1… started as helper processes
    running ``job`` (worker/training/rank.py's arguments); the helpers are stopped and
    the group left on the way out, however it is left."""
    if world == 1:
        yield Group()
        return
    port = free_port()
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "WORLD_SIZE": str(world), SHARD_VARIABLE: "1" if shard else "0"}
    spec = work_dir / "rank-job.json"
    spec.write_text(json.dumps(job))
    helpers = [
        subprocess.Popen([sys.executable, "-m", "worker.training.rank", str(spec)],
                         env={**os.environ, **environment, "RANK": str(rank),
                              "LOCAL_RANK": str(rank)})
        for rank in range(1, world)
    ]
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    grace = 30.0
    try:
        yield join(0, world, shard)
    except BaseException:
        grace = 0.0  # rank 0 failed: the helpers would wait in a collective for nothing
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_helpers(helpers, grace)
        leave()


def stop_helpers(helpers: list[subprocess.Popen[bytes]], grace: float = 30.0) -> None:
    """Helpers end by themselves after the last step; a helper still running after
    ``grace`` seconds (rank 0 failed mid-step) is terminated."""
    deadline = time.monotonic() + grace
    for helper in helpers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.wait(timeout=max(deadline - time.monotonic(), 0.1))
        if helper.poll() is None:
            helper.terminate()
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
