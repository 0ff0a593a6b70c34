"""Exports of a published adapter: a merged model (the base with the adapter folded in,
in the base's own dtype, safetensors) and a GGUF LoRA adapter for llama.cpp. Pure
functions of directories; worker/exports.py runs them for the service.

The GGUF adapter is what llama.cpp's ``convert_lora_to_gguf.py`` writes, with llama.cpp's
own ``gguf`` package: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, and for each adapted weight ``<gguf name>.weight.lora_a`` (rank x
in) and ``.lora_b`` (out x rank) under llama.cpp's tensor names
(``gguf.get_tensor_name_map``), so ``llama-cli -m base.gguf --lora adapter.gguf`` applies
it with llama.cpp's scale alpha / rank, as peft does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

# Hugging Face architectures and the llama.cpp architecture their GGUF files name
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                      "Qwen2ForCausalLM": "qwen2", "Gemma2ForCausalLM": "gemma2",
                      "Phi3ForCausalLM": "phi3"}
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class ExportError(ValueError):
    """An export that cannot be made of this adapter or base model."""


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> list[Path]:
    """The base model with the adapter merged into its weights, in the dtype the base is
    stored in (never the 4-bit training form), with its tokenizer: loadable with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def gguf_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    import gguf

    config = json.loads((base_dir / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    arch_name = GGUF_ARCHITECTURES.get(architecture)
    if arch_name is None:
        raise ExportError(f"no GGUF export for {architecture} models (llama.cpp's "
                          f"architectures here: {', '.join(sorted(GGUF_ARCHITECTURES))})")
    adapter = json.loads((adapter_dir / "adapter_config.json").read_text())
    if adapter.get("use_rslora") or adapter.get("use_dora"):
        raise ExportError("rsLoRA and DoRA adapters have no GGUF LoRA form")
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter["lora_alpha"]))
    for key in sorted(tensors):
        found = _LORA.match(key)
        if found is None:
            raise ExportError(f"{key} is not a LoRA weight; only LoRA adapters export")
        target = names.get_name(found["module"] + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise ExportError(f"llama.cpp has no tensor for {found['module']}")
        writer.add_tensor(f"{target}.lora_{found['part'].lower()}",
                          _array(tensors[key]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _array(tensor: torch.Tensor) -> Any:
    """A LoRA matrix as llama.cpp reads it: float32, rows x columns as torch has it (the
    GGUF dimensions are the reverse, which is what llama.cpp expects of A and B)."""
    return tensor.to(torch.float32).contiguous().numpy()
