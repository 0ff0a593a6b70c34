"""Base model loading (safetensors only, never remote code), 4-bit NF4 quantization
through bitsandbytes, and LoRA adapters through peft. QLoRA is a flag, not a recipe."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# bitsandbytes looks for optional hub-downloaded CPU kernels and logs a warning on every
# load when they are absent; we never download code at run time, so the notice is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class UnreadableModel(ValueError):
    """The base model cannot be loaded safely (missing, or not safetensors)."""


@dataclass(frozen=True)
class LoraSpec:
    """The adapter to train. No defaults here: a job's come from its spec
    (core/jobs/spec.py), the one place they are set."""

    r: int
    alpha: float
    dropout: float
    target_modules: str | list[str]
    quantization: str  # nf4 | none


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").exists():
        raise UnreadableModel(f"base model directory {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        raise UnreadableModel(
            f"base model directory {path} has no .safetensors weights"
            + (f" (only pickle files: {', '.join(pickles)})" if pickles else "")
            + "; pickle weights are never loaded"
        )


def compute_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    check_model_dir(path)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def attention_implementation(device: torch.device) -> str:
    """Chosen, not left to transformers' default: FlashAttention-2 on CUDA where it is
    installed (its varlen kernels attend within each packed example, from the position
    ids), PyTorch's SDPA otherwise (transformers builds the packed rows' block-diagonal
    mask from the position ids); eager for an architecture that has neither (Gemma 2)."""
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def load_base(path: Path, quantization: str, device: torch.device, *,
              shardable: bool = False) -> Any:
    """The frozen base model on ``device``; ``shardable``: 4-bit weights stored in the
    compute dtype (bitsandbytes' ``quant_storage``), so FSDP can shard them as it shards
    any float tensor (QLoRA with FSDP)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_model_dir(path)
    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False,
                              "use_safetensors": True,
                              "attn_implementation": attention_implementation(device)}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            **({"bnb_4bit_quant_storage": dtype} if shardable else {}),
        )
        kwargs["device_map"] = {"": device}
    from safetensors import SafetensorError

    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except ValueError as exc:  # an architecture without SDPA (Gemma 2): eager
            if "attention implementation" not in str(exc) or \
                    kwargs["attn_implementation"] == "eager":
                raise
            kwargs["attn_implementation"] = "eager"
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        raise UnreadableModel(f"cannot load base model from {path}: {exc}") from exc
    if quantization != "nf4":
        model.to(device)  # type: ignore[arg-type]
    model.config.use_cache = False
    return model


def add_lora(model: Any, spec: LoraSpec, *, checkpointing: bool = False) -> Any:
    """The LoRA adapter on a frozen base; with ``checkpointing``, each decoder layer's
    activations are recomputed in the backward pass instead of kept (the non-reentrant
    implementation: no inputs need grads, and the RNG state is replayed, so dropout and
    resumes stay exact)."""
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    if checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft takes floats
        lora_dropout=spec.dropout, target_modules=spec.target_modules, bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
