"""GRPO's arithmetic: rewards, group-relative advantages and the per-token loss (Shao et al. 2024,
as open-instruct's `grpo_fast.py` runs it for OLMo 2 1B's RLVR stage).

For each prompt, G responses are sampled and scored; with r the rewards of one prompt's group,

    advantage  = r - mean(r)                         (centered, open-instruct's default)
               = (r - mean(r)) / (std(r) + 1e-8)     (standard)

and a group whose rewards are all equal (nothing to learn from) is dropped. Every token t of a
response then has, with d_old = log π(t) - log π_old(t) and d_ref = log π(t) - log π_ref(t),

    ratio      = exp(d_old)
    policy     = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))
    kl         = exp(-d_ref) - 1 + d_ref             (Schulman's k3: unbiased, always >= 0)
    loss       = policy + β kl

averaged over all response tokens of the batch. π_old is the policy that sampled the responses
(ratio = 1 on the first gradient step after sampling), π_ref the frozen starting model; all three
are softmax(logits / temperature), the distribution the responses were sampled from.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

Normalization = Literal["centered", "standard"]


def rewards_of(scores: Tensor, finished: Tensor, verification_reward: float, cutoff_reward: float | None) -> Tensor:
    """(N,) rewards: verifier score × `verification_reward`; a response cut off before EOS gets
    `cutoff_reward` instead when that is set (OLMo 2's PPO: -10; open-instruct's
    non_stop_penalty_value)."""
    rewards = scores.float() * verification_reward
    if cutoff_reward is None:
        return rewards
    return torch.where(finished, rewards, torch.full_like(rewards, cutoff_reward))


def group_advantages(rewards: Tensor, normalization: Normalization = "centered") -> tuple[Tensor, Tensor]:
    """(advantages (P, G), kept (P,)) from the rewards (P, G) of P prompts' groups of G. A group is
    kept when its rewards differ; a dropped group's advantages are 0."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased, as open-instruct's torch.std
    kept = (rewards != rewards[:, :1]).any(dim=1)
    advantages = rewards - mean
    if normalization == "standard":
        advantages = advantages / (std + 1e-8)
    return torch.where(kept[:, None], advantages, torch.zeros_like(advantages)), kept


class GRPOTokenLoss(NamedTuple):
    loss: Tensor
    """per-token loss (same shape as the log-probs): policy + β kl."""
    policy: Tensor
    kl: Tensor
    clipped: Tensor
    """bool: the clipped term was the larger (the token's gradient is cut off by the clip)."""


def grpo_token_loss(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, advantages: Tensor, *,
                    clip_low: float = 0.2, clip_high: float = 0.272, beta: float = 0.01) -> GRPOTokenLoss:
    """The loss of each response token from its log-prob under the policy (with gradient), the
    sampling policy and the reference; `advantages` is each token's sequence's advantage."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    policy = torch.maximum(unclipped, clipped)
    # clamped as open-instruct does: exp(-d) must not overflow for a token the policy has left behind
    d_ref = (logps - ref_logps).clamp(-40.0, 40.0)
    kl = torch.expm1(-d_ref) + d_ref
    return GRPOTokenLoss(policy + beta * kl, policy, kl, clipped > unclipped)
