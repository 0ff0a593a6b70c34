"""What makes a published adapter travel: its ``adapter_config.json`` names the base
model by its registered id (not a path on the worker that trained it), and its
``README.md`` is a model card — the base, the data's sha256, the settings, the final
metrics, and how to load it with PEFT or call it through the API — rendered from the
version's manifest (so the two never disagree)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
CARD = "README.md"


def make_portable(adapter_dir: Path, base_model: str) -> None:
    """Point the adapter's config at ``base_model`` (the registered id) and drop PEFT's
    empty card template (the version's card is written when it is published)."""
    config_path = adapter_dir / CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (adapter_dir / CARD).unlink(missing_ok=True)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`" if isinstance(value, str) else str(value)


def model_card(manifest: dict[str, Any]) -> str:
    """The version's README.md, from its manifest."""
    method: dict[str, Any] = manifest.get("method") or {}
    kind = method.get("type", "supervised")
    hyper = (method.get(kind) or {}).get("hyperparameters") or {}
    lora = method.get("lora") or {}
    dataset = method.get("dataset") or {}
    metrics = manifest.get("metrics") or {}
    evaluation = manifest.get("evaluation") or {}
    parent = manifest.get("parent") or {}
    name, version = manifest["adapter"], manifest["version"]
    base, model = manifest["base_model"], manifest["fine_tuned_model"]
    libraries = manifest.get("libraries") or {}
    tags = ["loramill", "lora", "peft", "sft" if kind == "supervised" else kind]
    front = "\n".join(["---", f"base_model: {base}", "library_name: peft",
                       "tags:", *(f"- {t}" for t in tags), "---"])
    trained_from = (f"continued from `{parent.get('model')}`" if parent.get("model")
                    else f"trained from `{base}`")
    sections = [
        front,
        f"# {name} v{version}",
        f"A LoRA adapter for **`{base}`**, {trained_from} by loramill job "
        f"`{manifest.get('job_id')}` ({kind} fine-tuning).",
        "## Model",
        _table([("fine-tuned model", model), ("base model", base),
                ("adapter", f"{name} v{version}"), ("job", manifest.get("job_id")),
                ("published", manifest.get("created_at"))]),
        "## Data",
        _table([("dataset sha256", manifest.get("dataset_sha256")),
                ("format", dataset.get("format")),
                ("trained tokens", manifest.get("trained_tokens"))]),
        "## Settings",
        _table([*((k, v) for k, v in sorted(hyper.items())),
                ("LoRA rank", lora.get("r")), ("LoRA alpha", lora.get("alpha")),
                ("LoRA dropout", lora.get("dropout")),
                ("LoRA targets", lora.get("target_modules")),
                ("quantization", lora.get("quantization")),
                ("max sequence length", method.get("max_seq_len")),
                ("seed", manifest.get("seed"))]),
        "## Final metrics",
        _table([("step", metrics.get("step")), ("train loss", metrics.get("train_loss")),
                ("validation loss", metrics.get("valid_loss")),
                ("best validation loss", evaluation.get("best_valid_loss")),
                ("best step", evaluation.get("best_step")),
                ("published", evaluation.get("published"))]),
        "## Use it",
        "Through the API (OpenAI's wire format; any OpenAI client):",
        "```python\nfrom openai import OpenAI\n\n"
        "client = OpenAI(base_url=\"<your loramill URL>/v1\", api_key=\"<your key>\")\n"
        f"answer = client.chat.completions.create(\n    model=\"{model}\",\n"
        "    messages=[{\"role\": \"user\", \"content\": \"Hello\"}])\n"
        "print(answer.choices[0].message.content)\n```",
        f"or by an alias you promote it to: `{name}@production` "
        f"(`loramill adapters promote {name} production {version}`).",
        "With PEFT, on the base model's weights (`loramill adapters download "
        f"{name} {version}` fetches this directory, every file's sha256 checked):",
        "```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"base = AutoModelForCausalLM.from_pretrained(\"<the weights of {base}>\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"<the weights of {base}>\")\n"
        f"model = PeftModel.from_pretrained(base, \"{name}-v{version}\")\n```",
        "## Files",
        "`manifest.json` lists every file of this version with its sha256; "
        "`adapter_config.json` names the base model by its loramill id.",
    ]
    if libraries:
        sections += ["## Trained with", _table(sorted(libraries.items()))]
    return "\n\n".join(sections) + "\n"
