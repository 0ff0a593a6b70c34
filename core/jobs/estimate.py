"""Estimates: a job body answered without queueing it. What it would train (examples,
tokens, resolved hyperparameters, steps), where (the GPU class its predicted peak memory
picks), how long on each class this deployment runs that can hold it, and what it would
cost the tenant (its operator-set price table).

Tokens are counted with the base model's tokenizer and the trainer's own rendering
(``loramill.datasets.render``), each sequence capped at the job's ``max_seq_len``: every
example of a file up to :data:`SAMPLE_EXAMPLES`, a sample of the first ones scaled to the
file's count beyond that; where this process cannot read the model, from the file's size.
Durations come from the throughput that finished jobs on the same base model and class
reached (trained tokens over wall time, start to end: loading and evaluation included;
the median of the newest :data:`MEASURED_JOBS`), else from a nominal rate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from loramill.datasets.render import Tokenizer, parse_lines, sequences
from sqlalchemy.orm import Session

from core.base_models import memory
from core.base_models import service as model_service
from core.files.models import File
from core.jobs import repository as job_repo
from core.jobs.service import JobRequest, Plan, plan
from core.jobs.spec import total_steps
from core.kit.db import admin_scope
from core.kit.settings import get_settings
from core.kit.storage import Storage
from core.tenants import prices
from core.tenants import repository as tenant_repo
from core.tenants.scope import TenantId

SAMPLE_EXAMPLES = 2000
MEASURED_JOBS = 20
BYTES_A_TOKEN = 4  # without a tokenizer: about this many bytes of JSON a token
# Where no job on the base model has finished on a class: trained tokens a second =
# effective FLOP/s / (6 x parameters). A QLoRA token costs about 6N FLOPs (forward 2N,
# backward 2N for the activations' gradients, the checkpointed forward again 2N); the
# effective rate is 35 % of a typical card's dense bf16 peak (L4-class 121 TFLOP/s,
# A100 312, eight A100s), and what a 2-core CPU showed in bench/train_throughput.py.
NOMINAL_FLOPS = {"cpu": 2e10, "gpu-24gb": 0.35 * 121e12, "gpu-80gb": 0.35 * 312e12,
                 "gpu-multi": 8 * 0.35 * 312e12}


@dataclass(frozen=True)
class Tokens:
    per_epoch: int  # every sequence (a preference pair: two), each capped at max_seq_len
    trainable_per_epoch: int | None  # tokens the loss is taken on (unknown without one)
    counted_examples: int
    method: Literal["exact", "sampled", "approximate"]


@dataclass(frozen=True)
class Duration:
    gpu_class: str
    gpus: int
    seconds: float
    tokens_per_second: float
    basis: Literal["measured", "nominal"]
    measured_jobs: int
    cost: float | None


@dataclass(frozen=True)
class Estimate:
    plan: Plan
    examples: int
    tokens: Tokens
    total_steps: int
    total_tokens: int
    durations: list[Duration]
    currency: str | None

    @property
    def chosen(self) -> Duration | None:
        return next((d for d in self.durations if d.gpu_class == self.plan.gpu_class), None)


def estimate(session: Session, storage: Storage, tenant_id: TenantId,
             req: JobRequest) -> Estimate:
    p = plan(session, tenant_id, req)
    hp = p.spec.hyperparameters
    max_len = p.spec.max_seq_len or p.base.context_length
    tokens = count_tokens(storage, p.training, model_service.tokenizer(p.base), max_len)
    total = tokens.per_epoch * hp.n_epochs
    tenant = tenant_repo.get(session, tenant_id)
    assert tenant is not None
    table = prices.for_tenant(tenant)
    return Estimate(
        plan=p, examples=p.training.example_count, tokens=tokens,
        total_steps=total_steps(p.training.example_count, hp.batch_size, hp.n_epochs),
        total_tokens=total, durations=durations(p, total, table),
        currency=table.currency if table else None)


def count_tokens(storage: Storage, file: File, tok: Tokenizer | None,
                 max_len: int) -> Tokens:
    if tok is None:
        return Tokens(per_epoch=math.ceil(file.bytes / BYTES_A_TOKEN),
                      trainable_per_epoch=None, counted_examples=0, method="approximate")
    total = trainable = counted = 0
    for _, example in parse_lines(_lines(storage.iter_object(file.object_key))):
        for ids, mask in sequences(tok, example):
            length = min(len(ids), max_len)
            total += length
            trainable += sum(mask[1:length])  # a position's target is the next token
        counted += 1
        if counted >= SAMPLE_EXAMPLES:
            break
    scale = file.example_count / max(counted, 1)
    return Tokens(per_epoch=round(total * scale), trainable_per_epoch=round(trainable * scale),
                  counted_examples=counted,
                  method="exact" if counted >= file.example_count else "sampled")


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (split at b"\\n", as the upload splits them) from a stream of chunks."""
    rest = b""
    for chunk in chunks:
        *whole, rest = (rest + chunk).split(b"\n")
        yield from whole
    if rest:
        yield rest


def durations(p: Plan, tokens: int, table: prices.PriceTable | None) -> list[Duration]:
    """How long the run takes on each class this deployment runs that can hold it (the
    chosen one and larger; a CPU only for a model that trains on one), and its cost."""
    rank = {name: n for n, name in enumerate(memory.CLASS_ORDER)}
    classes = [c for c in get_settings().gpu_classes
               if rank.get(c, -1) >= rank[p.gpu_class] and (c != "cpu" or p.gpu_class == "cpu")]
    with admin_scope() as admin:  # a rate across tenants: no tenant's job is shown
        runs = job_repo.recent_runs(admin, p.base.id)
    found = []
    for name in sorted(classes, key=lambda c: rank[c]):
        rates = [t / s for c, t, s in runs if c == name][:MEASURED_JOBS]
        gpus = memory.gpus(name)
        if rates:
            rate, basis = statistics.median(rates), "measured"
        else:
            rate, basis = NOMINAL_FLOPS.get(name, NOMINAL_FLOPS["cpu"]) / (
                6 * max(p.base.params, 1)), "nominal"
        seconds = tokens / rate
        found.append(Duration(
            gpu_class=name, gpus=gpus, seconds=round(seconds, 1),
            tokens_per_second=round(rate, 1), basis=basis,  # type: ignore[arg-type]
            measured_jobs=len(rates),
            cost=table.cost(name, gpus, seconds, tokens) if table else None))
    return found


def shown(e: Estimate) -> dict[str, Any]:
    """The estimate as the API answers it."""
    p, hp = e.plan, e.plan.spec.hyperparameters
    chosen = e.chosen
    return {
        "object": "fine_tuning.estimate", "model": p.spec.parent.model if p.spec.parent
        else p.base.id, "base_model": p.base.id, "method": p.spec.method(),
        "hyperparameters": hp.shown(), "lora": p.spec.lora.model_dump(),
        "max_seq_len": p.spec.max_seq_len, "examples": e.examples,
        "tokens": {"per_epoch": e.tokens.per_epoch,
                   "trainable_per_epoch": e.tokens.trainable_per_epoch,
                   "total": e.total_tokens, "counted": e.tokens.method,
                   "counted_examples": e.tokens.counted_examples},
        "total_steps": e.total_steps, "gpu_class": p.gpu_class,
        "predicted_memory_gib": round(memory.needs(p.predicted, p.gpu_class) / memory.GIB, 2)
        if p.predicted else None,
        "estimated_seconds": chosen.seconds if chosen else None,
        "estimated_cost": chosen.cost if chosen else None, "currency": e.currency,
        "durations": [vars(d) for d in e.durations],
    }
