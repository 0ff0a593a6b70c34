"""Each architecture family customers bring (tiny random models with the family's own
chat template and special tokens) registers, trains in 4-bit with LoRA on every linear
layer, masks exactly its assistant turns, and resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loramill.datasets import grammar
from safetensors.torch import load_file

from core.base_models.service import inspect_local
from tests.conftest import ROOT
from tests.unit.worker.training.test_resume import Reporter
from worker.training import data, families
from worker.training.model import LoraSpec, load_tokenizer
from worker.training.recipe import Recipe, Stopped, TrainSpec

ARCHITECTURES = {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
                 "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                 "phi3": "Phi3ForCausalLM"}


def model_dir(family: str) -> Path:
    return families.ensure(ROOT / ".loramill-test-models" / f"tiny-{family}", family)


def conversation(i: int) -> dict[str, object]:
    return {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"Question number {i}?"},
        {"role": "assistant", "content": f"Answer {i}."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": f"Then {i + 1} " * (1 + i % 3)}]}


def recipe(tmp: Path, path: Path, dataset: Path, reporter: Reporter) -> Recipe:
    spec = TrainSpec(n_epochs=2, batch_size=2, learning_rate=2e-3, seed=5, checkpoint_every=3,
                     lora=LoraSpec(r=8, alpha=16, dropout=0.1, target_modules="all-linear",
                                   quantization="nf4"))
    return Recipe(spec, path, dataset, reporter, work_dir=tmp)


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_family_registers_masks_its_turns_trains_and_resumes_exactly(
        family: str, tmp_path: Path) -> None:
    path = model_dir(family)
    info = inspect_local(path)
    assert (info.architecture, info.has_chat_template) == (ARCHITECTURES[family], True)

    # masking: exactly the assistant turns' tokens (and each turn's end marker) train
    tok = load_tokenizer(path)
    row = conversation(3)
    example, _ = data.encode(tok, grammar.parse(json.dumps(row).encode())[1], 512)
    trained = tok.decode([example.input_ids[t + 1] for t in range(len(example) - 1)
                          if example.targets[t] != data.IGNORE])
    assert "Answer 3." in trained and "Then 4" in trained
    assert "Question" not in trained and "And then?" not in trained
    assert "briefly" not in trained

    dataset = tmp_path / "d.jsonl"
    dataset.write_text("\n".join(json.dumps(conversation(i)) for i in range(5)))
    whole = recipe(tmp_path / "a", path, dataset, Reporter())
    whole.setup()
    first_loss = whole.step(whole.batches(0)[0])[0]
    whole = recipe(tmp_path / "a2", path, dataset, Reporter())
    whole.setup()
    result = whole.train_loop()
    assert result.steps == 6 and result.final_loss < first_loss
    whole.save(tmp_path / "a" / "out")

    interrupted = recipe(tmp_path / "b", path, dataset, Reporter(stop_at=3))
    interrupted.setup()
    with pytest.raises(Stopped):
        interrupted.train_loop()
    resumed = recipe(tmp_path / "c", path, dataset, Reporter())
    resumed.setup(resume_from=interrupted.save_checkpoint())
    resumed.train_loop()
    resumed.save(tmp_path / "c" / "out")
    a = load_file(str(tmp_path / "a" / "out" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "c" / "out" / "adapter_model.safetensors"))
    # LoRA A and B on every linear layer of both decoder layers (Phi-3 fuses qkv and
    # gate/up: 4 a layer; the others have 7)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * (4 if family == "phi3" else 7)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
