"""Training on a GPU: our recipe against TRL's SFTTrainer (padding-free, with Liger's
kernels where installed) on a ~1B random Llama, sequences up to 2,048, bf16 compute over
4-bit NF4 weights, LoRA r=16 on every linear layer, gradient checkpointing on every side;
and the memory model (core/base_models/memory.py) against the measured peak.

Run by bench/gpu_check.sh on a lent GPU machine; each side in its own process (its own
CUDA memory), ``--runs`` rounds, medians. ``--smoke`` runs the same code on a tiny model
and a few steps (a CPU check of the script itself; its numbers mean nothing).

MFU counts 6 FLOPs per parameter per token plus attention (12 x layers x hidden x
sequence per token: PaLM's convention) against the GPU's dense bf16 peak. A QLoRA step
does less than that (no weight gradients for the frozen base; the recomputation of
checkpointing is extra), so this is the convention, not the work done.

    python3 bench/gpu_train.py [--runs 3] [--steps 12] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.train_throughput import SideFailed, report, run_side  # noqa: E402

WORK = ROOT / "bench" / "data" / "gpu"
WORDS = ("data model adapter token gradient schedule packing memory answer question "
         "because therefore however the a of to in and is was for on with").split()
# dense bf16 peak, TFLOP/s, by what torch.cuda.get_device_name() contains
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "1b": (2048, 16, 16, 8, 5632, 32000),
    "smoke": (128, 2, 4, 2, 256, 1024),
}


def build_model(size: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from worker.training import tinymodel

    out = WORK / f"llama-{size}"
    if (out / "loramill.json").exists():
        return out
    hidden, layers, heads, kv, inter, vocab = SHAPES[size]
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tinymodel.train_tokenizer(1024), bos_token="<|bos|>",
        eos_token="<|end|>", pad_token="<|pad|>")
    tokenizer.chat_template = tinymodel.CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden,
                         intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "loramill.json").write_text(json.dumps({"generated": True, "size": size}))
    return out


def build_data(examples: int, longest: int) -> Path:
    """Chat examples with log-uniform lengths up to about ``longest`` tokens."""
    rng = random.Random(0)
    path = WORK / f"chat-{examples}-{longest}.jsonl"
    with path.open("w") as fh:
        for _ in range(examples):
            q = " ".join(rng.choices(WORDS, k=int(10 ** rng.uniform(1.0, 2.0))))
            a = " ".join(rng.choices(WORDS, k=int(10 ** rng.uniform(
                1.5, math.log10(max(longest * 0.9, 40))))))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}) + "\n")
    return path


def lora(r: int) -> Any:
    from worker.training.model import LoraSpec

    return LoraSpec(r=r, alpha=2 * r, dropout=0.0, target_modules="all-linear",
                    quantization="nf4")


def run_ours(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.train_throughput import Quiet
    from worker.training.recipe import Recipe, TrainSpec

    spec = TrainSpec(n_epochs=1, batch_size=args.batch_size, learning_rate=2e-4, seed=0,
                     lora=lora(args.r), metric_events=1, checkpoint_every=-1,
                     max_seq_len=args.seq, micro_batch_tokens=args.micro_tokens)
    recipe = Recipe(spec, model_dir, data, Quiet(), work_dir=WORK / "ours")
    recipe.setup()
    parity = loss_parity(recipe)
    batches = recipe.batches(0)[: args.steps + 1]
    recipe.step(batches[0])  # warm-up: kernels compiled, allocator grown
    sync()
    start, tokens = time.perf_counter(), 0
    for indices in batches[1:]:
        tokens += recipe.step(indices)[2]
    sync()
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "loss": parity,
            "attention": recipe.model.config._attn_implementation,
            "flash_attention": recipe.model.config._attn_implementation ==
            "flash_attention_2"}


def loss_parity(recipe: Any) -> dict[str, Any]:
    """The first batch's summed loss through Liger's fused kernel (when the recipe uses
    it) and through the chunked path: the same number, within bf16's rounding."""
    import torch

    from worker.training import packing

    if recipe.fused_loss is None:
        return {"path": "chunked"}
    indices = recipe.batches(0)[0]
    batch = packing.pack(recipe.train.examples, indices,
                         max(recipe.lengths[i] for i in indices))
    micro = packing.split_rows(batch, recipe.micro_batch_tokens)[0]
    with torch.no_grad():
        fused = float(recipe._summed_loss(micro)[0])
        recipe.fused_loss, kernel = None, recipe.fused_loss
        chunked = float(recipe._summed_loss(micro)[0])
        recipe.fused_loss = kernel
    return {"path": "liger", "fused": fused, "chunked": chunked,
            "relative_difference": abs(fused - chunked) / abs(chunked)}


def run_trl(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bench.train_throughput import hf_rows
    from worker.training.model import add_lora, load_base

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok, rows = hf_rows(model_dir, data, args.seq)  # truncated as ours are
    model = add_lora(load_base(model_dir, "nf4", device), lora(args.r), checkpointing=True)
    timing: dict[str, float] = {}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
            if state.global_step == 1:  # the first step warms up, as on our side
                sync()
                timing["start"] = time.perf_counter()

    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=Dataset.from_list(rows),
        callbacks=[Clock()],
        args=SFTConfig(
            output_dir=str(WORK / "trl"), padding_free=True, packing=False, max_length=None,
            per_device_train_batch_size=args.batch_size, max_steps=args.steps + 1,
            learning_rate=2e-4, report_to=[], save_strategy="no", logging_strategy="no",
            bf16=device.type == "cuda", use_cpu=device.type == "cpu", seed=0,
            dataloader_num_workers=0, use_liger_kernel=args.run == "trl-liger",
            gradient_checkpointing=False,  # add_lora turned it on, non-reentrant
        ),
    )
    trainer.train()
    sync()
    seconds = time.perf_counter() - timing["start"]
    batches = math.ceil(len(rows) / args.batch_size)
    per_step = sum(len(r["input_ids"]) for r in rows) / batches
    return {"seconds": seconds, "tokens": per_step * args.steps}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def memory_check(model_dir: Path, args: argparse.Namespace, flash: bool) -> dict[str, Any]:
    from core.base_models import memory

    config = json.loads((model_dir / "config.json").read_text())
    shape = memory.Shape.of(config)
    assert shape is not None
    predicted = memory.estimate(shape, memory.Settings(
        r=args.r, seq_len=args.seq, micro_batch_tokens=args.micro_tokens,
        flash_attention=flash))
    return {"predicted_gib": predicted.gib()}


def child(args: argparse.Namespace) -> None:
    import torch

    model_dir, data = Path(args.model_dir), Path(args.data)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = (run_ours if args.run == "ours" else run_trl)(model_dir, data, args)
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.run == "ours":
        result.update(memory_check(model_dir, args, result["flash_attention"]))
    report(result)


def mfu(tokens_per_second: float, model_dir: Path, seq: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    if peak is None:
        return None
    from core.base_models import memory

    shape = memory.Shape.of(json.loads((model_dir / "config.json").read_text()))
    assert shape is not None
    params = shape.linear_params + shape.other_params
    per_token = 6 * params + 12 * shape.layers * shape.hidden * seq
    return tokens_per_second * per_token / (peak * 1e12)


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-tokens", type=int, default=16384)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--run")
    parser.add_argument("--model-dir")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.run:
        child(args)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.seq, args.steps, args.batch_size, args.runs = 256, 2, 4, 1
    model_dir = build_model("smoke" if args.smoke else "1b")
    data = build_data(args.batch_size * (args.steps + 1), args.seq)
    sides = ["ours"] + (["trl-flat"] if available("trl") else [])
    if available("liger_kernel") and available("trl"):
        sides.append("trl-liger")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for run in range(args.runs):
        for side in sides:
            cmd = [sys.executable, __file__, "--run", side, "--model-dir", str(model_dir),
                   "--data", str(data), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--seq", str(args.seq),
                   "--micro-tokens", str(args.micro_tokens), "--r", str(args.r)]
            try:
                result = run_side(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
            except SideFailed as failed:
                print(f"{side} failed:\n{failed}", flush=True)
                continue
            runs[side].append(result)
            print(f"run {run + 1} {side:>10}: {result['tokens_per_second']:9.1f} tok/s"
                  + (f", peak {result['peak_gib']:.2f} GiB" if "peak_gib" in result else ""),
                  flush=True)
    medians: dict[str, dict[str, Any]] = {}
    for side, results in runs.items():
        if not results:
            continue
        tps = statistics.median(r["tokens_per_second"] for r in results)
        medians[side] = {"tokens_per_second": tps, "mfu": mfu(tps, model_dir, args.seq)}
        if "peak_gib" in results[0]:
            medians[side]["peak_gib"] = statistics.median(r["peak_gib"] for r in results)
    summary: dict[str, Any] = {"shape": "smoke" if args.smoke else "1b", "seq": args.seq,
                               "batch_size": args.batch_size, "r": args.r,
                               "runs": runs, "medians": medians}
    ours = runs.get("ours") or []
    if ours and "peak_gib" in ours[0]:
        predicted = ours[0]["predicted_gib"]["total"]
        measured = medians["ours"]["peak_gib"]
        summary["memory_model"] = {"predicted_gib": predicted, "measured_gib": measured,
                                   "error": predicted / measured - 1,
                                   "within_15_percent": abs(predicted / measured - 1) <= 0.15}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if "ours" in medians else 1


if __name__ == "__main__":
    sys.exit(main())
