"""Peak training memory, predicted from the model's shape and the job's settings; it picks
the GPU class a job runs on.

What a QLoRA step holds on one GPU at its peak (bytes, all ``float`` for the arithmetic):

- **weights**: the decoder's linear layers in NF4 with double quantization (4 bits a
  weight, plus an 8-bit absmax per 64 weights and an fp32 one per 256 blocks), the
  embeddings, output layer and norms in the compute dtype (bf16); unquantized jobs hold
  every weight in bf16. One linear layer is dequantized at a time for its matmul.
- **adapter**: LoRA's A and B for every targeted module in fp32, with their gradients and
  AdamW's two moments: 16 bytes a parameter.
- **activations**: with gradient checkpointing (on for 4-bit), every decoder layer's input
  is kept for the micro-batch (``layers * tokens * hidden * 2``) and one layer's inner
  activations are rebuilt during its backward pass; without it every layer's are kept.
  SDPA's packed rows add a boolean block-diagonal mask (``tokens * row length``);
  FlashAttention-2 needs none.
- **loss**: the output layer runs a chunk of ``LOSS_CHUNK`` positions at a time in fp32
  (logits, log-softmax, gradient), never the whole micro-batch.

The figure is what ``torch.cuda.max_memory_allocated`` would report; a GPU also holds the
CUDA context and the allocator's slack, which :data:`HEADROOM` and :data:`CONTEXT` cover
when a class is chosen. bench/gpu_check.sh compares it with a measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
LOSS_CHUNK = 1024  # positions per output-layer chunk (worker/training/loss.py: chunk_tokens)
MICRO_BATCH_TOKENS = 16384  # the recipe's token budget per micro-batch on CUDA
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weight, 8-bit absmax, fp32 absmax²
HEADROOM = 1.10  # the caching allocator's fragmentation
CONTEXT = 1.0 * GIB  # CUDA context, cuBLAS workspace, kernels
CPU_PARAMS = 300e6  # models up to this size train on CPU workers (slowly, but they do)
# (class, memory per GPU, GPUs): a job takes the first class it fits
GPU_CLASSES: tuple[tuple[str, float, int], ...] = (
    ("gpu-24gb", 24 * GIB, 1), ("gpu-80gb", 80 * GIB, 1), ("gpu-multi", 80 * GIB, 8))
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "qkv_proj", "gate_up_proj")


@dataclass(frozen=True)
class Shape:
    """What the memory model needs of a model's config.json."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shape | None:
        """From a config.json (a multimodal one's ``text_config``); None when it does not
        say enough."""
        text = config.get("text_config") or config
        try:
            hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
            return cls(
                hidden=hidden, layers=int(text["num_hidden_layers"]),
                intermediate=int(text["intermediate_size"]), vocab=int(text["vocab_size"]),
                heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads),
                tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings",
                                                                     False))),
                fused="Phi3" in str(config.get("architectures") or ""))
        except (KeyError, TypeError, ValueError):
            return None

    def linears(self) -> dict[str, tuple[int, int]]:
        """One decoder layer's linear modules: name → (in, out)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, \
            self.kv_heads * self.head_dim
        if self.fused:
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h),
                    "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def other_params(self) -> int:
        """Embeddings, the output layer (unless tied) and the norms."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + \
            (2 * self.layers + 1) * self.hidden


@dataclass(frozen=True)
class Settings:
    """A job's settings as far as memory goes; the defaults are core/jobs/spec.py's (a
    unit test holds them equal: this package cannot import that one)."""

    r: int = 8
    target_modules: str | list[str] = "all-linear"
    quantization: str = "nf4"
    seq_len: int = 4096
    micro_batch_tokens: int = MICRO_BATCH_TOKENS
    checkpointing: bool | None = None  # None: on for nf4, as the recipe does
    flash_attention: bool = False


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float] = field(default_factory=dict)  # bytes, by what holds them

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def per_gpu(self, gpus: int) -> float:
        """Bytes on each of ``gpus`` GPUs when FSDP shards the weights and the adapter's
        state over them (activations are each GPU's own), with the headroom a GPU needs."""
        sharded = self.parts["weights"] + self.parts["adapter"]
        own = self.total - sharded
        return (sharded / gpus + own) * HEADROOM + CONTEXT

    def gib(self) -> dict[str, float]:
        return {name: round(value / GIB, 2) for name, value in
                {**self.parts, "total": self.total}.items()}


def targeted(shape: Shape, targets: str | list[str]) -> dict[str, tuple[int, int]]:
    names = ALL_LINEAR if targets == "all-linear" else targets
    return {name: dims for name, dims in shape.linears().items()
            if any(name == t or name.endswith("." + t) or t.endswith(name) for t in names)}


def estimate(shape: Shape, s: Settings) -> Estimate:
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    tokens = float(max(s.micro_batch_tokens, s.seq_len))  # a row is never split
    checkpointing = s.quantization == "nf4" if s.checkpointing is None else s.checkpointing
    largest = max(a * b for a, b in shape.linears().values())
    if s.quantization == "nf4":
        weights = shape.linear_params * NF4_BYTES + shape.other_params * 2 + largest * 2
    else:
        weights = (shape.linear_params + shape.other_params) * 2.0
    lora = targeted(shape, s.target_modules)
    adapter = shape.layers * sum(s.r * (a + b) for a, b in lora.values()) * 16.0
    # one layer's saved tensors per token (bf16): norms and residuals, q/k/v before and
    # after rotary, attention output, the MLP's gate, up, activation and product, and
    # what each LoRA module keeps of its input
    inner = 2.0 * tokens * (6 * h + 3 * q + 3 * kv + 4 * i + sum(a for a, _ in lora.values()))
    kept = shape.layers * tokens * h * 2.0 if checkpointing else shape.layers * inner
    activations = kept + (inner if checkpointing else 0) + 4 * tokens * h * 2.0
    if not s.flash_attention:
        activations += tokens * s.seq_len  # SDPA's boolean packed mask
    loss = LOSS_CHUNK * shape.vocab * 4.0 * 3 + tokens * h * 4.0
    return Estimate({"weights": weights, "adapter": adapter, "activations": activations,
                     "loss": loss})


def gpu_class(params: int, shape: Shape | None, settings: Settings) -> str | None:
    """The smallest class the job fits (models up to CPU_PARAMS train on CPU workers);
    None: no class can hold it. Without a shape: by parameter count alone."""
    return class_for(params, estimate(shape, settings) if shape else None)


def class_for(params: int, predicted: Estimate | None) -> str | None:
    """:func:`gpu_class` for a prediction already made."""
    if params <= CPU_PARAMS:
        return "cpu"
    if predicted is None:
        return "gpu-24gb" if params <= 14e9 else "gpu-80gb" if params <= 75e9 else "gpu-multi"
    for name, memory, gpus in GPU_CLASSES:
        if predicted.per_gpu(gpus) <= memory:
            return name
    return None


def gpus(gpu_class: str) -> int:
    """How many GPUs a worker of the class runs a job across (a CPU worker: one)."""
    return next((n for name, _, n in GPU_CLASSES if name == gpu_class), 1)


def needs(predicted: Estimate, gpu_class: str) -> float:
    """Bytes a GPU of ``gpu_class`` needs for the job, headroom included."""
    return predicted.per_gpu(gpus(gpu_class))


CLASS_ORDER = ("cpu", *(name for name, _, _ in GPU_CLASSES))


def deployed_at_least(gpu_class: str, deployed: list[str]) -> str | None:
    """The smallest class this deployment runs that holds what ``gpu_class`` holds: the
    class itself, or a larger one; None when it runs neither."""
    if gpu_class in deployed:
        return gpu_class
    if gpu_class not in CLASS_ORDER:
        return None
    return next((c for c in CLASS_ORDER[CLASS_ORDER.index(gpu_class) + 1:] if c in deployed),
                None)


def larger(a: str, b: str) -> str:
    """The larger of two classes (an operator's class for a model is a floor)."""
    rank = {name: n for n, name in enumerate(CLASS_ORDER)}
    return max(a, b, key=lambda name: rank.get(name, len(CLASS_ORDER)))
