"""The one place where loss arithmetic lives (torchtune's lesson, issue #2307): summed
token losses and counts, so micro-batches, steps and examples all agree."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from worker.training.data import IGNORE


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy in fp32, 0 where the target is ignored. [rows, length]"""
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE, reduction="none",
    )
    return flat.reshape(targets.shape)


def summed(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of token losses and how many tokens it covers."""
    return token_losses(logits, targets).sum(), int((targets != IGNORE).sum())


Fused = Callable[..., torch.Tensor]


def fused_kernel(device: torch.device) -> Fused | None:
    """Liger's fused linear cross-entropy (Triton kernels: the output layer and the loss
    in one pass, chunked inside, no logits kept) on CUDA where liger-kernel is installed;
    None elsewhere, and the chunked path below is used."""
    if device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy  # type: ignore[no-any-return]


def summed_from_hidden(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                       targets: torch.Tensor, *, chunk_tokens: int = 1024,
                       softcap: float | None = None,
                       fused: Fused | None = None) -> tuple[torch.Tensor, int]:
    """:func:`summed` without the whole micro-batch's logits: only the positions that are
    trained on go through the output layer, ``chunk_tokens`` at a time, each chunk's fp32
    logits recomputed in the backward pass instead of kept. Peak memory for the logits is
    one chunk's ``[chunk_tokens x vocab]`` (4 MB a thousand tokens of a 1k vocabulary,
    0.5 GB of a 128k one) instead of every token's (16k tokens x 128k x fp32 = 8 GB)."""
    flat = targets.reshape(-1)
    keep = flat != IGNORE
    states = hidden.reshape(-1, hidden.shape[-1])[keep]
    wanted = flat[keep]
    weight = getattr(head, "weight", None)
    if fused is not None and weight is not None and getattr(head, "bias", None) is None:
        return fused(states, weight, wanted, reduction="sum",
                     softcap=softcap).float(), int(wanted.numel())
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.numel(), chunk_tokens):
        part = checkpoint(_chunk_loss, states[start:start + chunk_tokens],
                          wanted[start:start + chunk_tokens], head, softcap,
                          use_reentrant=False)
        total = total + part
    return total, int(wanted.numel())


def _chunk_loss(states: torch.Tensor, wanted: torch.Tensor,
                head: Callable[[torch.Tensor], torch.Tensor],
                softcap: float | None) -> torch.Tensor:
    logits = head(states).float()
    if softcap:  # Gemma 2's final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, wanted, reduction="sum")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its trained tokens (one sequence a row). [rows]"""
    return -token_losses(logits, targets).sum(dim=1)


def dpo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (Rafailov et al., 2023): per pair, the loss
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) and whether the adapter prefers
    the chosen answer by more than the reference does (the margin is positive)."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin > 0


def mean(total: float, count: int) -> float:
    return total / count if count else float("nan")
