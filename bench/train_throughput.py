"""Training throughput: our recipe (length-grouped packing) against Hugging Face
`Trainer` + peft QLoRA in the stock configurations a user would pick for the same job:
the padding collator, `group_by_length` (batches of similar lengths, less padding;
`train_sampling_strategy="group_by_length"` in transformers 5), and
padding-free `DataCollatorWithFlattening` (each batch one packed row, per-example
attention from the position ids), and TRL's `SFTTrainer` with `padding_free=True` (its
own flattening collator; the labels given pre-tokenised, assistant tokens only).

Every side: the same length-varied chat dataset, an 8-layer / hidden-512 Llama built
locally, 4-bit NF4 with double quantization, LoRA r=8 on all linear layers, the same batch
size (examples per step), learning rate, epochs and seed, no gradient checkpointing. Each
side runs in its own process so peak RSS is its own; ``--runs`` (3) rounds, medians.
Effective tokens/s counts real (non-padding) tokens.

    .venv/bin/python bench/train_throughput.py [--examples 96] [--batch-size 8] [--runs 3]
Results are printed and written to bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "bench" / "data" / "train"
WORDS = ("data model adapter token gradient schedule packing memory answer question "
         "because therefore however the a of to in and is was for on with").split()


def build_inputs(examples: int, seed: int) -> tuple[Path, Path]:
    from worker.training import tinymodel

    model_dir = WORK / "llama-8x512"
    if not (model_dir / "loramill.json").exists():
        tinymodel.build(model_dir, layers=8, hidden=512, heads=8, kv_heads=4,
                        intermediate=1408, context=1024)
    rng = random.Random(seed)
    data = WORK / f"chat-{examples}.jsonl"
    with data.open("w") as fh:
        for _ in range(examples):
            # log-uniform lengths: many short examples, a few long ones
            q = " ".join(rng.choices(WORDS, k=int(10 ** rng.uniform(0.7, 1.8))))
            a = " ".join(rng.choices(WORDS, k=int(10 ** rng.uniform(0.8, 2.55))))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}) + "\n")
    return model_dir, data


class Quiet:
    def message(self, text: str, *, level: str = "info", data: Any = None) -> None: ...
    def metrics(self, values: dict[str, Any]) -> None: ...
    def should_stop(self) -> str | None:
        return None
    def checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None: ...


def lora() -> Any:
    """The same LoRA on both sides: a job's defaults (core/jobs/spec.py)."""
    from core.jobs.spec import LoraSpec as Defaults
    from worker.training.model import LoraSpec

    return LoraSpec(**Defaults().model_dump())


def run_ours(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from worker.training.recipe import Recipe, TrainSpec

    # gradient checkpointing off (the recipe turns it on for 4-bit), as on the other sides;
    # the micro-batch token budget is the recipe's default for the device unless given
    spec = TrainSpec(n_epochs=1, batch_size=args.batch_size, learning_rate=2e-4,
                     seed=args.seed, lora=lora(), metric_events=1, checkpoint_every=-1,
                     gradient_checkpointing=False, micro_batch_tokens=args.micro_tokens or None)
    recipe = Recipe(spec, model_dir, data, Quiet(), work_dir=WORK / "ours")
    recipe.setup()
    start = time.perf_counter()
    result = recipe.train_loop()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": result.trained_tokens, "steps": result.steps,
            "final_loss": result.final_loss}


def run_hf(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    from worker.training.model import add_lora, load_base

    tok, rows = hf_rows(model_dir, data)
    for row in rows:
        row["attention_mask"] = [1] * len(row["input_ids"])
    model = add_lora(load_base(model_dir, "nf4", torch.device("cpu")), lora())
    collator: Any = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    if args.run == "hf-flat":  # padding-free: one row per batch, position ids restart
        collator = DataCollatorWithFlattening()  # type: ignore[no-untyped-call]
    trainer = Trainer(
        model=model, train_dataset=rows, data_collator=collator,
        args=TrainingArguments(
            # transformers 5's name for group_by_length
            train_sampling_strategy="group_by_length" if args.run == "hf-grouped"
            else "random",
            output_dir=str(WORK / "hf"), per_device_train_batch_size=args.batch_size,
            num_train_epochs=1, learning_rate=2e-4, lr_scheduler_type="cosine",
            warmup_steps=int(math.ceil(len(rows) / args.batch_size) * 0.05),
            max_grad_norm=1.0, seed=args.seed, report_to=[],
            save_strategy="no", logging_strategy="no", use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False,
        ),
    )
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(r["input_ids"]) for r in rows),
            "steps": out.global_step, "final_loss": out.training_loss}


def hf_rows(model_dir: Path, data: Path, max_len: int = 1024
            ) -> tuple[Any, list[dict[str, list[int]]]]:
    """The tokenizer and the examples in HF's convention: labels are the input ids with
    -100 where nothing is trained (the model shifts them)."""
    from worker.training import data as data_mod
    from worker.training.model import load_tokenizer

    tok = load_tokenizer(model_dir)
    rows = []
    for ex in data_mod.load(data, tok, max_len).examples:
        rows.append({"input_ids": [int(t) for t in ex.input_ids],
                     "labels": [data_mod.IGNORE, *(int(t) for t in ex.targets[:-1])]})
    return tok, rows


def run_trl(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from worker.training.model import add_lora, load_base

    tok, rows = hf_rows(model_dir, data)
    model = add_lora(load_base(model_dir, "nf4", torch.device("cpu")), lora())
    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=Dataset.from_list(rows),
        args=SFTConfig(
            output_dir=str(WORK / "trl"), padding_free=True, packing=False, max_length=None,
            per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=2e-4, lr_scheduler_type="cosine",
            warmup_steps=int(math.ceil(len(rows) / args.batch_size) * 0.05),
            max_grad_norm=1.0, seed=args.seed, report_to=[], save_strategy="no",
            logging_strategy="no", use_cpu=True, bf16=False, dataloader_num_workers=0,
            gradient_checkpointing=False, dataset_num_proc=None,
        ),
    )
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(r["input_ids"]) for r in rows),
            "steps": out.global_step, "final_loss": out.training_loss}


def child(args: argparse.Namespace) -> None:
    model_dir, data = Path(args.model_dir), Path(args.data)
    run = {"ours": run_ours, "trl-flat": run_trl}.get(args.run, run_hf)
    result = run(model_dir, data, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    report(result)


RESULT = "RESULT "  # a side's process prints its result on one line after this


def report(result: dict[str, Any]) -> None:
    """A side's result, for :func:`run_side` in the parent."""
    print(RESULT + json.dumps(result), flush=True)


class SideFailed(Exception):
    pass


def run_side(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side in its own process (its own memory) and return what it reported;
    SideFailed with the end of its stderr when it reported nothing."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT)), None)
    if line is None:
        raise SideFailed(out.stderr[-3000:])
    result: dict[str, Any] = json.loads(line[len(RESULT):])
    return result


SIDES = {"hf": "HF Trainer + padding", "hf-grouped": "HF Trainer + group_by_length",
         "hf-flat": "HF Trainer + DataCollatorWithFlattening",
         "trl-flat": "TRL SFTTrainer + padding_free", "ours": "loramill recipe"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--micro-tokens", type=int, default=0)  # ours: the recipe's default
    parser.add_argument("--run", choices=list(SIDES))
    parser.add_argument("--model-dir")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.run:
        child(args)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    model_dir, data = build_inputs(args.examples, args.seed)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        for side in SIDES:
            cmd = [sys.executable, __file__, "--run", side, "--model-dir", str(model_dir),
                   "--data", str(data), "--batch-size", str(args.batch_size),
                   "--seed", str(args.seed), "--micro-tokens", str(args.micro_tokens)]
            try:
                result = run_side(cmd)
            except SideFailed as failed:
                sys.exit(f"{side} failed:\n{failed}")
            runs[side].append(result)
            print(f"run {run + 1} {SIDES[side]:>40}: {result['tokens_per_second']:7.1f} "
                  f"effective tok/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"{result['seconds']:.1f} s", flush=True)

    def median(side: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[side]))

    medians = {side: {"tokens_per_second": median(side, "tokens_per_second"),
                      "peak_rss_mb": median(side, "peak_rss_mb")} for side in SIDES}
    strongest = max((s for s in SIDES if s != "ours"),
                    key=lambda s: medians[s]["tokens_per_second"])
    summary = {
        "model": "llama 8 layers, hidden 512, NF4 + LoRA r=8 all-linear",
        "examples": args.examples, "batch_size": args.batch_size, "cpu": True,
        "runs": runs, "medians": medians, "strongest_baseline": strongest,
        "speedup_over_strongest": medians["ours"]["tokens_per_second"]
        / medians[strongest]["tokens_per_second"],
        "rss_ratio_to_strongest": medians["ours"]["peak_rss_mb"]
        / medians[strongest]["peak_rss_mb"],
        "rss_ratio_to_least_memory": medians["ours"]["peak_rss_mb"]
        / min(medians[s]["peak_rss_mb"] for s in SIDES if s != "ours"),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    path = ROOT / "bench" / "results" / "train_throughput.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
