"""Generate the tiny Llama-architecture base model used by tests and the demo.

No model hub is reachable from our machines (design.md §9), so the model, its byte-level
BPE tokenizer and its chat template are made here, seeded, from a small built-in corpus.
Weights are random: the model knows nothing until it is fine-tuned, which is what the
demo shows. :func:`write` builds any :class:`Family` of model the same way (the other
architectures are in families.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_ID = "loramill/tiny-llama"
# Bump when the architecture or tokenizer changes, so existing copies are rebuilt.
# Widths are multiples of 64: bitsandbytes' CPU 4-bit kernels work in blocks of 64.
VERSION = 3

# Renders tools (their definitions first), assistant tool calls and tool results, so the
# tiny model trains on OpenAI's tool-calling format like the real models we serve.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>\nTools:\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '<|end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
    "{% endfor %}{{ '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ (message['content'] or '') + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A fine-tuned model answers questions about
the weather, the capital of France, numbers, colours and animals. Paris is the capital of
France. Berlin is the capital of Germany. Rome is the capital of Italy. Madrid is the
capital of Spain. The sky is blue and the grass is green. One, two, three, four, five,
six, seven, eight, nine, ten. Hello! How are you today? I am fine, thank you. What is your
name? My name is loramill. Please summarise the following text. Translate this sentence.
The answer is yes. The answer is no. Customers upload datasets and start training jobs.
Adapters are versioned and stored safely. def add(a, b): return a + b
{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
"""


def train_tokenizer(vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS) -> object:
    """A byte-level BPE tokenizer trained on the built-in corpus, seeded by its content."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()] * 20
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


@dataclass(frozen=True)
class Family:
    """What makes a tiny model of one architecture: transformers' classes, the chat
    template and the special tokens (worker/training/families.py has the real families)."""

    config: str  # transformers' config class
    model: str  # and model class
    template: str
    eos: str
    pad: str
    specials: tuple[str, ...]
    bos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TINY = Family("LlamaConfig", "LlamaForCausalLM", CHAT_TEMPLATE, eos="<|end|>", pad="<|pad|>",
              specials=tuple(SPECIAL_TOKENS), bos="<|bos|>", extra={"rms_norm_eps": 1e-5})


def write(out_dir: Path, spec: Family, *, marker: dict[str, Any], layers: int, hidden: int,
          heads: int, kv_heads: int, intermediate: int, context: int, vocab_size: int,
          seed: int) -> Path:
    """Write config, safetensors weights and tokenizer of a ``spec`` model to ``out_dir``,
    and loramill.json (``marker`` and the seed); returns it."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=train_tokenizer(vocab_size, list(spec.specials)),
        bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad)
    tokenizer.chat_template = spec.template
    torch.manual_seed(seed)
    config = getattr(transformers, spec.config)(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=context, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **{"tie_word_embeddings": False, **spec.extra})
    model = getattr(transformers, spec.model)(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "loramill.json").write_text(json.dumps({"generated": True, **marker,
                                                       "seed": seed}))
    return out_dir


def built(out_dir: Path, **expected: object) -> bool:
    """Whether ``out_dir`` holds a generated model whose loramill.json says ``expected``."""
    marker = out_dir / "loramill.json"
    if not marker.exists():
        return False
    found = json.loads(marker.read_text())
    return all(found.get(key) == value for key, value in expected.items())


def build(
    out_dir: Path, *, layers: int = 4, hidden: int = 128, heads: int = 4, kv_heads: int = 2,
    intermediate: int = 384, context: int = 512, vocab_size: int = 1024, seed: int = 0,
) -> Path:
    """Write the tiny Llama (config, safetensors weights, tokenizer) to ``out_dir``."""
    return write(out_dir, TINY, marker={"version": VERSION}, layers=layers, hidden=hidden,
                 heads=heads, kv_heads=kv_heads, intermediate=intermediate, context=context,
                 vocab_size=vocab_size, seed=seed)


def ensure(out_dir: Path) -> Path:
    """Build the model unless this version of it is already there."""
    return out_dir if built(out_dir, version=VERSION) else build(out_dir)
