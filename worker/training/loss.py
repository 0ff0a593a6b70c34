"""The one place where loss arithmetic lives (torchtune's lesson, issue #2307): summed
token losses and counts, so micro-batches, steps and examples all agree."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
