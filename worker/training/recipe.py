"""The QLoRA fine-tuning recipe: ``setup()`` → ``train()`` → ``save()``.

Takes a frozen spec and paths, reports through a small callback interface, and imports
neither FastAPI nor SQLAlchemy. The same code runs on CPU (tests, CI) and CUDA.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import get_cosine_schedule_with_warmup

from worker.training import checkpoint, data, distributed, loss, packing
from worker.training.checkpoint import Position
from worker.training.distributed import Group
from worker.training.model import LoraSpec, add_lora, load_base, load_tokenizer

BASE_LEARNING_RATE = 2e-4  # times the job's learning_rate_multiplier
# tokens a forward/backward pass takes at most (a longer row is never split): what bounds
# activation memory. A GPU wants large matrices; a CPU runs small ones faster (they stay
# in its caches: 2,048 was 1.3x as fast as 16,384 and used 0.4x the memory in
# bench/train_throughput.py) and has no memory to spare on one huge length-grouped step.
MICRO_BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}
EVAL_EXAMPLES = 8  # validation examples per forward pass


@dataclass(frozen=True)
class TrainSpec:
    """What to train, in the recipe's terms (the runner builds it from a job's spec)."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora: LoraSpec
    max_seq_len: int | None = None  # default: the model's context length
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    metric_events: int = 100  # about this many metrics reports a run
    checkpoints: int = 4  # about this many checkpoints a run ...
    checkpoint_every: int = 0  # ... unless this many steps is given; -1: none
    micro_batch_tokens: int | None = None  # None: MICRO_BATCH_TOKENS for the device
    pack: bool = True
    # recompute activations in the backward pass; None: on for 4-bit (QLoRA's memory
    # budget), as torchtune's and axolotl's QLoRA configs do
    gradient_checkpointing: bool | None = None
    method: str = "supervised"  # or "dpo": preference pairs, the base model as reference
    beta: float = 0.1  # dpo only
    # with a validation file: its loss every so many steps (None: at epoch ends) and at
    # the last; early stopping after so many evaluations without an improvement above
    # the threshold; publish_best: the adapter as it was at the best evaluation
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    publish_best: bool = False


@dataclass
class Evaluation:
    """The validation losses so far: the best (what ``publish_best`` publishes) and how
    many evaluations have passed without an improvement above the threshold."""

    best_loss: float | None = None
    best_step: int | None = None
    mark: float | None = None  # the last loss that counted as an improvement
    waited: int = 0
    stopped_at: int | None = None  # early stopping ended the run here

    def judge(self, step: int, loss: float, threshold: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.mark is None or loss < self.mark - threshold:
            self.mark, self.waited = loss, 0
        else:
            self.waited += 1
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step = loss, step
            return True
        return False


def total_steps(examples: int, batch_size: int, epochs: int) -> int:
    """The number of optimizer steps, the one count the trainer uses. The API's estimate
    has its own (``core.jobs.spec.total_steps``: this package imports nothing of the
    service); test_schedule holds the two equal."""
    return math.ceil(examples / batch_size) * epochs


def every(total: int, times: int) -> int:
    """An interval in steps that happens about ``times`` times in ``total`` steps."""
    return max(1, total // max(times, 1))


class Reporter(Protocol):
    def message(self, text: str, *, level: str = "info",
                data: dict[str, Any] | None = None) -> None: ...

    def metrics(self, values: dict[str, Any]) -> None: ...

    def should_stop(self) -> str | None: ...

    def checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None: ...


class Stopped(Exception):
    """Training stopped early because the reporter asked (cancel or pause)."""

    def __init__(self, reason: str, step: int):
        super().__init__(f"stopped at step {step}: {reason}")
        self.reason = reason
        self.step = step


@dataclass
class TrainResult:
    steps: int
    trained_tokens: int
    final_loss: float
    valid_loss: float | None
    history: list[dict[str, Any]]
    seconds: float
    evaluation: dict[str, Any] | None = None  # with a validation file: best, early stop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class Recipe:
    def __init__(self, spec: TrainSpec, model_dir: Path, train_file: Path,
                 reporter: Reporter, *, valid_file: Path | None = None,
                 work_dir: Path, device: torch.device | None = None,
                 group: Group | None = None):
        self.spec = spec
        self.model_dir = model_dir
        self.train_file = train_file
        self.valid_file = valid_file
        self.reporter = reporter
        self.work_dir = work_dir
        # one rank of a data-parallel run (worker/training/distributed.py), or the only one
        self.group = group or Group()
        self.device = device or self.group.device()
        self.position = Position()
        self.adapter: dict[str, torch.Tensor] | None = None  # whole, after a sharded run
        self.history: list[dict[str, Any]] = []
        self.evaluation = Evaluation()
        self.best_adapter: dict[str, torch.Tensor] | None = None  # publish_best: on CPU
        # what the last step and the last evaluation measured besides the loss (DPO:
        # preference accuracy), reported in the metrics
        self.step_stats: dict[str, float] = {}
        self.eval_stats: dict[str, float] = {}

    # ----- setup ---------------------------------------------------------------------

    def setup(self, resume_from: Path | None = None, init_from: Path | None = None) -> None:
        """Load the model, the data, the optimizer; then the state of a checkpoint
        (``resume_from``: the same run goes on exactly where it stopped) or the weights of
        a parent adapter (``init_from``: a continued job starts from them, its optimizer
        and schedule afresh)."""
        seed_everything(self.spec.seed)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.checkpointing = (self.spec.lora.quantization == "nf4"
                              if self.spec.gradient_checkpointing is None
                              else self.spec.gradient_checkpointing)
        self.model = add_lora(load_base(self.model_dir, self.spec.lora.quantization,
                                        self.device, shardable=self.group.shard),
                              self.spec.lora, checkpointing=self.checkpointing)
        if self.group.shard:
            distributed.shard_layers(self.model)
        self.fused_loss = loss.fused_kernel(self.device)  # Liger on CUDA, where installed
        context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_len = min(self.spec.max_seq_len or context, context)
        # a row is never split (its examples attend within it), so the micro-batch budget
        # holds any row: at least the longest sequence
        budget = self.spec.micro_batch_tokens or MICRO_BATCH_TOKENS.get(self.device.type,
                                                                         16384)
        self.micro_batch_tokens = max(budget, self.max_len)
        self.train = self._load(self.train_file, "train")
        self.valid = self._load(self.valid_file, "valid") if self.valid_file else None
        if self.train.dropped:
            self.reporter.message(
                f"{self.train.dropped} training examples have nothing to train on within "
                f"{self.max_len} tokens (what they train on lies beyond it) and were "
                f"skipped: {data.lines(self.train.dropped_lines)}", level="warn",
                data={"skipped_lines": self.train.dropped_lines[:100],
                      "max_len": self.max_len},
            )
        if self.train.truncated:
            self.reporter.message(
                f"{self.train.truncated} training examples were longer than {self.max_len} "
                "tokens (the job's max_seq_len, at most the model's context) and were "
                "truncated to it", level="warn",
                data={"truncated": self.train.truncated, "max_len": self.max_len},
            )
        self.lengths = [len(e) for e in self.train.examples]
        # from the examples as loaded (some may have been dropped), not as uploaded
        self.total_steps = total_steps(len(self.train.examples), self.spec.batch_size,
                                       self.spec.n_epochs)
        self.steps_per_epoch = self.total_steps // self.spec.n_epochs
        self.log_every = every(self.total_steps, self.spec.metric_events)
        self.checkpoint_every = (self.spec.checkpoint_every if self.spec.checkpoint_every
                                 else every(self.total_steps, self.spec.checkpoints))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.spec.learning_rate,
                                           weight_decay=self.spec.weight_decay)
        # transformers' schedule, as HF Trainer and TRL users know it: linear warmup from
        # 0, then cosine decay to 0 at the last step
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, warmup_steps(self.total_steps, self.spec.warmup_ratio),
            self.total_steps)
        if resume_from is not None:
            self.position = checkpoint.load(resume_from, self.model, self.optimizer,
                                            self.scheduler, self.history)
            for point in self.history:  # the evaluations so far, judged again
                if point.get("valid_loss") is not None:
                    self.evaluation.judge(point["step"], point["valid_loss"],
                                          self.spec.early_stopping_threshold)
            self.best_adapter = checkpoint.load_best(resume_from)
        elif init_from is not None:
            checkpoint.warm_start(init_from, self.model)
        self.last_checkpoint_step = self.position.step

    def _load(self, path: Path, name: str) -> data.Dataset:
        # tokenised onto disk in the work directory, memory-mapped: RAM is bounded by the
        # number of examples, not their tokens (each rank and each load has its own store,
        # in a new directory under this one)
        store = self.work_dir / "tokens" / f"{name}-rank{self.group.rank}"
        dataset = data.load(path, self.tokenizer, self.max_len, store=store)
        pairs = isinstance(dataset.examples[0], data.Pair)
        if pairs != (self.spec.method == "dpo"):  # job creation checks this too
            raise ValueError(f"a {self.spec.method} job cannot train on "
                             f"{'preference' if pairs else 'supervised'} data")
        return dataset

    # ----- train ---------------------------------------------------------------------

    def batches(self, epoch: int) -> list[list[int]]:
        if self.spec.pack:
            return packing.epoch_batches(len(self.lengths), self.lengths,
                                         self.spec.batch_size, seed=self.spec.seed,
                                         epoch=epoch)
        rng = random.Random(self.spec.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        return [order[i : i + self.spec.batch_size]
                for i in range(0, len(order), self.spec.batch_size)]

    def step(self, indices: list[int]) -> tuple[float, int, int]:
        """One optimizer step over ``indices``: (mean loss, trained tokens, input tokens)."""
        if self.spec.method == "dpo":
            return self._dpo_step(indices)
        if self.spec.pack:
            # Rows no longer than the batch's longest example: never more padded slots than
            # plain padding, fewer rows when short examples share one, and attention cost
            # (quadratic in row length) stays that of the examples themselves.
            row_len = max(self.lengths[i] for i in indices)
            batch = packing.pack(self.train.examples, indices, row_len)
        else:
            batch = packing.pad(self.train.examples, indices)
        count = batch.trainable_tokens
        total = 0.0
        self.model.train()
        micros = packing.split_rows(batch, self.micro_batch_tokens)
        for micro, real in self.group.turns(micros, [m.input_ids.numel() for m in micros]):
            summed, _ = self._summed_loss(micro)
            (summed * (1 / count if real else 0.0)).backward()  # type: ignore[no-untyped-call]
            total += float(summed.detach()) if real else 0.0
        (total,) = self._apply_gradients(total)
        return loss.mean(total, count), count, batch.tokens

    def _summed_loss(self, batch: packing.PackedBatch) -> tuple[torch.Tensor, int]:
        """The batch's summed token loss, through the decoder and then the output layer a
        chunk of trained positions at a time (loss.summed_from_hidden): the whole batch's
        logits never exist at once."""
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=batch.input_ids.to(self.device),
                                    position_ids=batch.position_ids.to(self.device),
                                    use_cache=False).last_hidden_state
        softcap = getattr(base.config, "final_logit_softcapping", None)
        return loss.summed_from_hidden(hidden, base.get_output_embeddings(),
                                       batch.targets.to(self.device), softcap=softcap,
                                       fused=self.fused_loss)

    def _apply_gradients(self, *values: float) -> list[float]:
        """Sum the gradients (and ``values``) over the ranks, clip, step the optimizer and
        the schedule, clear: the end of every step. Returns the summed ``values``."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        summed = self.group.reduce_step(params, *values)
        torch.nn.utils.clip_grad_norm_(params, self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return summed

    def _pair_chunks(self, pairs: Sequence[data.Pair]) -> list[list[data.Pair]]:
        """Pairs in micro-batches of about ``micro_batch_tokens`` (padded) tokens; a pair's
        two sequences stay together, since its loss needs both."""
        chunks: list[list[data.Pair]] = [[]]
        longest = 0
        for pair in pairs:
            longest = max(longest, len(pair.chosen), len(pair.rejected))
            if chunks[-1] and 2 * (len(chunks[-1]) + 1) * longest > self.micro_batch_tokens:
                chunks.append([])
                longest = max(len(pair.chosen), len(pair.rejected))
            chunks[-1].append(pair)
        return chunks

    def _logps(self, pairs: list[data.Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch = packing.pad(rows, list(range(len(rows))))
        out = self.model(input_ids=batch.input_ids.to(self.device),
                         position_ids=batch.position_ids.to(self.device), use_cache=False)
        logps = loss.sequence_logps(out.logits, batch.targets.to(self.device))
        return logps[: len(pairs)], logps[len(pairs) :]

    def _dpo_losses(self, pairs: list[data.Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self.model.disable_adapter():  # the base model: the reference
            ref_chosen, ref_rejected = self._logps(pairs)
        chosen, rejected = self._logps(pairs)
        return loss.dpo(chosen, rejected, ref_chosen, ref_rejected, self.spec.beta)

    def _dpo_step(self, indices: list[int]) -> tuple[float, int, int]:
        pairs = [self.train.examples[i] for i in indices]
        total, preferred = 0.0, 0.0
        self.model.train()
        chunks = self._pair_chunks(pairs)
        for chunk, real in self.group.turns(chunks, [sum(len(p) for p in c) for c in chunks]):
            losses, prefers = self._dpo_losses(chunk)
            (losses.sum() * (1 / len(pairs) if real else 0.0)).backward()  # type: ignore[no-untyped-call]
            total += float(losses.detach().sum()) if real else 0.0
            preferred += float(prefers.sum()) if real else 0.0
        total, preferred = self._apply_gradients(total, preferred)
        # the share of the step's pairs the adapter prefers as labelled, by more than the
        # base model does (TRL's rewards/accuracies)
        self.step_stats = {"preference_accuracy": preferred / len(pairs)}
        return (total / len(pairs), sum(p.trainable for p in pairs),
                sum(len(p) for p in pairs))

    def train_loop(self) -> TrainResult:
        spec, pos = self.spec, self.position
        started = time.monotonic()
        window_tokens, window_start = 0, time.monotonic()
        last_loss = float("nan")
        if pos.step:
            self.reporter.message(
                f"Resuming from step {pos.step} (epoch {pos.epoch + 1}, batch "
                f"{pos.batch_in_epoch + 1})", data={"step": pos.step})
        while pos.epoch < spec.n_epochs:
            batches = self.batches(pos.epoch)
            for index in range(pos.batch_in_epoch, len(batches)):
                reason = self.group.decide(
                    self.reporter.should_stop() if self.group.leader else None)
                if reason:
                    if self.group.shard and reason in ("pause", "shutdown") and \
                            pos.step != self.last_checkpoint_step:
                        self.save_checkpoint()  # together: rank 0 cannot gather alone
                    raise Stopped(reason, pos.step)
                last_loss, _, tokens = self.step(batches[index])
                epoch_end = index + 1 == len(batches)
                pos.step += 1
                pos.trained_tokens += tokens
                pos.epoch, pos.batch_in_epoch = ((pos.epoch + 1, 0) if epoch_end
                                                 else (pos.epoch, index + 1))
                window_tokens += tokens
                done = pos.step == self.total_steps
                evaluate = self._evaluation_due(epoch_end=epoch_end, done=done)
                if pos.step % self.log_every == 0 or done or evaluate:
                    elapsed = max(time.monotonic() - window_start, 1e-9)
                    # rounded as reported, so a resumed run judges the same numbers again
                    valid = (round(self.evaluate(self.valid), 6) if evaluate and self.valid
                             else None)
                    metrics = self._metrics(last_loss, window_tokens / elapsed, valid)
                    window_tokens, window_start = 0, time.monotonic()
                    self.history.append(metrics)
                    self.reporter.metrics(metrics)
                    if valid is not None and self._judge(valid, last=done):
                        break
                if (self.checkpoint_every > 0 and pos.step % self.checkpoint_every == 0
                        and not done):
                    self.save_checkpoint()
            if self.evaluation.stopped_at is not None:
                break
        return self._result(last_loss, started)

    def _evaluation_due(self, *, epoch_end: bool, done: bool) -> bool:
        if self.valid is None:
            return False
        if done:
            return True
        every_ = self.spec.eval_every
        return self.position.step % every_ == 0 if every_ else epoch_end

    def _judge(self, valid: float, *, last: bool) -> bool:
        """Keep the best evaluation (and its adapter, to publish it); True when early
        stopping ends the run here (before its ``last`` step)."""
        spec, ev, step = self.spec, self.evaluation, self.position.step
        if ev.judge(step, valid, spec.early_stopping_threshold) and spec.publish_best:
            self.best_adapter = {name: value.detach().to("cpu", copy=True) for name, value
                                 in checkpoint.adapter_state(self.model).items()}
        patience = spec.early_stopping_patience
        if patience is None or ev.waited < patience or last:
            return False
        ev.stopped_at = step
        self.reporter.message(
            f"Early stopping at step {step} of {self.total_steps}: the validation loss has "
            f"not improved by more than {spec.early_stopping_threshold} for {patience} "
            f"evaluations (best {ev.best_loss:.4f} at step {ev.best_step})",
            data={"step": step, "best_step": ev.best_step, "best_valid_loss": ev.best_loss})
        return True

    def _result(self, last_loss: float, started: float) -> TrainResult:
        pos, ev = self.position, self.evaluation
        best = self.spec.publish_best and self.best_adapter is not None
        if best:
            self.adapter = self.best_adapter
        else:  # the adapter, whole, for save(): sharded, gathered while every rank is here
            self.adapter = checkpoint.adapter_state(self.model) if self.group.shard else None
        valid = next((h["valid_loss"] for h in reversed(self.history)
                      if h.get("valid_loss") is not None), None)
        evaluation = None
        if self.valid is not None:
            evaluation = {
                "eval_every": self.spec.eval_every, "best_step": ev.best_step,
                "best_valid_loss": ev.best_loss, "stopped_early_at": ev.stopped_at,
                "published": "best" if best else "last",
                "published_step": ev.best_step if best else pos.step}
        return TrainResult(steps=pos.step, trained_tokens=pos.trained_tokens,
                           final_loss=last_loss, valid_loss=valid, history=self.history,
                           seconds=time.monotonic() - started, evaluation=evaluation)

    def _metrics(self, train_loss: float, tokens_per_second: float,
                 valid_loss: float | None) -> dict[str, Any]:
        pos = self.position
        metrics: dict[str, Any] = {
            "step": pos.step, "total_steps": self.total_steps, "epoch": pos.epoch,
            "train_loss": round(train_loss, 6),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "tokens_per_second": round(tokens_per_second, 1),
            "trained_tokens": pos.trained_tokens,
        }
        metrics.update({f"train_{k}": round(v, 6) for k, v in self.step_stats.items()})
        if valid_loss is not None:
            metrics["valid_loss"] = valid_loss
            metrics.update({f"valid_{k}": round(v, 6) for k, v in self.eval_stats.items()})
        return metrics

    @torch.no_grad()
    def evaluate(self, dataset: data.Dataset) -> float:
        # Only dropout goes to eval mode: a whole-model .eval() switches bitsandbytes'
        # CPU 4-bit layers to an inference weight layout that training must not see.
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        for module in dropouts:
            module.eval()
        try:
            return self._evaluate(dataset)
        finally:
            for module in dropouts:
                module.train()

    def _evaluate(self, dataset: data.Dataset) -> float:
        total, count = 0.0, 0
        if self.spec.method == "dpo":  # the mean DPO loss over the pairs
            chunks = self._pair_chunks(dataset.examples)
            preferred = 0.0
            for chunk, real in self.group.turns(chunks, [len(c) for c in chunks]):
                losses, prefers = self._dpo_losses(chunk)
                if real:
                    total, count = total + float(losses.sum()), count + len(chunk)
                    preferred += float(prefers.sum())
            summed_total, summed_count, summed_preferred = self.group.sum(total, count,
                                                                          preferred)
            self.eval_stats = {"preference_accuracy": summed_preferred / max(summed_count, 1)}
            return loss.mean(summed_total, int(summed_count))
        else:
            indices = list(range(len(dataset.examples)))
            # every example, EVAL_EXAMPLES at a time (memory bounded whatever the batch
            # size); the ranks take turns
            starts = range(0, len(indices), EVAL_EXAMPLES)
            for start, real in self.group.turns(starts, [1] * len(starts)):
                batch = packing.pack(dataset.examples,
                                     indices[start : start + EVAL_EXAMPLES], self.max_len)
                summed, n = self._summed_loss(batch)
                if real:
                    total, count = total + float(summed), count + n
        summed_total, summed_count = self.group.sum(total, count)
        return loss.mean(summed_total, int(summed_count))

    # ----- save ----------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        directory = self.work_dir / "checkpoints" / f"step-{self.position.step}"
        self.last_checkpoint_step = self.position.step
        if not self.group.shard and not self.group.leader:
            return directory  # every rank holds the same weights: rank 0 writes them
        # sharded, every rank gathers its shards, and rank 0 writes
        checkpoint.save(directory, self.model, self.optimizer, self.scheduler,
                        self.position, self.history, write=self.group.leader,
                        best=self.best_adapter)
        if not self.group.leader:
            return directory
        self.reporter.checkpoint(self.position.step, directory,
                                 self.history[-1] if self.history else {})
        return directory

    def save(self, out_dir: Path) -> list[Path]:
        """The adapter (safetensors + adapter_config.json) for publishing."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir), safe_serialization=True,
                                   state_dict=self.adapter or checkpoint.adapter_state(
                                       self.model))
        return sorted(p for p in out_dir.iterdir() if p.is_file())


def warmup_steps(total: int, ratio: float) -> int:
    """Steps of linear warmup: ``ratio`` of the run, at least one (a run of under 20
    steps used to start at the full learning rate), never the whole run."""
    return max(1, min(int(total * ratio), total - 1)) if total > 1 else 0
