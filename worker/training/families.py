"""Tiny random models of the architectures customers bring: Llama 3, Qwen 2 and 3,
Mistral, Gemma 2 and 3, Phi-3. Each has its family's own chat template (its turn markers,
its way with system messages, what it appends at the end) and special tokens, on the
shared tiny byte-level BPE, so the recipe's masking, packing, 4-bit loading and LoRA
targets meet each family's real quirks without a model hub.

Widths are multiples of 64 (bitsandbytes' CPU 4-bit kernels work in blocks of 64), head
sizes are set explicitly (several families default to 128 or 256).
"""

from __future__ import annotations

from pathlib import Path

from worker.training.tinymodel import Family, built, write

VERSION = 2  # 2: Gemma's embeddings tied, as the real models' (vLLM expects it)

# Llama 3: header-wrapped roles, <|eot_id|> after every turn, content trimmed.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ (m['content'] or '') | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# ChatML, as Qwen 2 writes it: a default system turn when the conversation has none.
QWEN2 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{{ (m['content'] or '') + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen 3: ChatML without a default system turn.
QWEN3 = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{{ (m['content'] or '') + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral: [INST] blocks; no system role (it is folded into the next user turn); the
# answer follows [/INST] and ends with </s>; no generation prompt of its own.
MISTRAL = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + m['content'] + '[/INST]' }}"
    "{% set ns.system = '' %}"
    "{% else %}{{ ' ' + (m['content'] or '') + eos_token }}{% endif %}{% endfor %}"
)
# Gemma 2 and 3: turns of 'user' and 'model'; the system message is folded into the
# first user turn.
GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') }}"
    "{{ '\\n' + ns.system + ((m['content'] or '') | trim) + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# Phi-3: <|role|> markers and <|end|>; a conversation rendered without a generation
# prompt ends with the end-of-text token, which no earlier prefix has.
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + (m['content'] or '') }}"
    "{{ '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


FAMILIES = {
    "llama3": Family("LlamaConfig", "LlamaForCausalLM", LLAMA3, eos="<|eot_id|>",
                     pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>",
                     specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                               "<|end_header_id|>", "<|eot_id|>",
                               "<|finetune_right_pad_id|>")),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", QWEN2, eos="<|im_end|>",
                    pad="<|endoftext|>",
                    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", QWEN3, eos="<|im_end|>",
                    pad="<|endoftext|>",
                    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    extra={"head_dim": 32}),
    "mistral": Family("MistralConfig", "MistralForCausalLM", MISTRAL, eos="</s>", pad="<unk>",
                      bos="<s>", specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
                      extra={"sliding_window": None, "head_dim": 32}),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM", GEMMA, eos="<end_of_turn>",
                     pad="<pad>", bos="<bos>",
                     specials=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
                     extra={"head_dim": 32, "query_pre_attn_scalar": 32,
                            "final_logit_softcapping": 30.0, "attn_logit_softcapping": None,
                            "sliding_window": 256, "tie_word_embeddings": True}),
    "gemma3": Family("Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA, eos="<end_of_turn>",
                     pad="<pad>", bos="<bos>",
                     specials=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
                     extra={"head_dim": 32, "query_pre_attn_scalar": 32,
                            "sliding_window": 256, "tie_word_embeddings": True}),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", PHI3, eos="<|endoftext|>", pad="<|endoftext|>",
                   bos="<s>", specials=("<s>", "<|endoftext|>", "<|system|>", "<|user|>",
                                        "<|assistant|>", "<|end|>"),
                   extra={"original_max_position_embeddings": 512}),
}


def model_id(family: str) -> str:
    return f"loramill/tiny-{family}"


def build(out_dir: Path, family: str, *, layers: int = 2, hidden: int = 128, heads: int = 4,
          kv_heads: int = 2, intermediate: int = 256, context: int = 512,
          vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random ``family`` model, its tokenizer and chat template."""
    return write(out_dir, FAMILIES[family], marker={"family": family, "version": VERSION},
                 layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                 intermediate=intermediate, context=context, vocab_size=vocab_size, seed=seed)


def ensure(out_dir: Path, family: str) -> Path:
    return out_dir if built(out_dir, family=family, version=VERSION) else build(out_dir, family)
