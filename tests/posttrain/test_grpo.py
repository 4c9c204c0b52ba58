"""GRPO's arithmetic against a plain per-token implementation, and a toy policy that learns."""

from __future__ import annotations

import math

import torch

from olmolab.posttrain.grpo import group_advantages, grpo_token_loss, rewards_of
from olmolab.posttrain.verifiers import gsm8k_verifier


def reference_token_loss(logp, old_logp, ref_logp, advantage, clip_low, clip_high, beta):
    """One token's loss, written straight from the formulas with scalar operations."""
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    policy = torch.maximum(-advantage * ratio, -advantage * clipped_ratio)
    d = logp - ref_logp
    return policy + beta * (torch.exp(-d) - 1 + d)


def test_loss_matches_the_per_token_formula_in_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 5, generator=gen) * 3).requires_grad_()
    # old log-probs far enough from the policy's that some ratios leave [0.8, 1.272] on both sides
    old_logps = logps.detach() + torch.randn(3, 5, generator=gen) * 0.4
    ref_logps = logps.detach() + torch.randn(3, 5, generator=gen) * 0.5
    advantages = torch.tensor([1.5, -2.0, 0.7])[:, None].expand(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    beta = 0.05

    out = grpo_token_loss(logps, old_logps, ref_logps, advantages, beta=beta)
    loss = out.loss[mask].mean()
    (grad,) = torch.autograd.grad(loss, logps)

    terms = [reference_token_loss(logps[i, t], old_logps[i, t], ref_logps[i, t], advantages[i, t], 0.2, 0.272, beta)
             for i in range(3) for t in range(5) if mask[i, t]]
    expected = sum(terms) / len(terms)
    (expected_grad,) = torch.autograd.grad(expected, logps)

    ratios = torch.exp(logps - old_logps)[mask]
    assert (ratios < 0.8).any() and (ratios > 1.272).any() and out.clipped[mask].any()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert (grad[~mask] == 0).all()


def test_at_ratio_one_the_policy_gradient_is_minus_the_advantage():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    out = grpo_token_loss(logps, logps.detach(), logps.detach(), torch.tensor([2.0, -3.0]), beta=0.1)
    out.loss.sum().backward()
    assert out.kl.tolist() == [0.0, 0.0] and not out.clipped.any()
    torch.testing.assert_close(logps.grad, torch.tensor([-2.0, 3.0]))  # KL's gradient is 0 at the reference


def test_k3_is_the_kl_estimator():
    d = torch.tensor([-1.0, 0.0, 0.5])
    out = grpo_token_loss(d, d, torch.zeros(3), torch.zeros(3), beta=1.0)
    torch.testing.assert_close(out.kl, torch.exp(-d) - 1 + d)
    assert (out.kl >= 0).all()


def test_rewards_scale_the_score_and_replace_a_cut_off_response():
    scores, finished = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, True, False])
    assert rewards_of(scores, finished, 10.0, None).tolist() == [10.0, 0.0, 10.0]
    assert rewards_of(scores, finished, 10.0, -10.0).tolist() == [10.0, 0.0, -10.0]


def test_advantages_are_centered_or_standardised_per_group():
    rewards = torch.tensor([[10.0, 0.0, 0.0, 10.0], [0.0, 0.0, 0.0, 10.0]])
    centered, kept = group_advantages(rewards, "centered")
    assert centered.tolist() == [[5.0, -5.0, -5.0, 5.0], [-2.5, -2.5, -2.5, 7.5]] and kept.all()
    standard, _ = group_advantages(rewards, "standard")
    torch.testing.assert_close(standard, centered / rewards.std(dim=1, keepdim=True))


def test_a_group_with_equal_rewards_is_dropped_and_contributes_nothing():
    rewards = torch.tensor([[10.0, 10.0, 10.0], [0.0, 10.0, 0.0], [0.0, 0.0, 0.0]])
    for normalization in ("centered", "standard"):
        advantages, kept = group_advantages(rewards, normalization)
        assert kept.tolist() == [False, True, False]
        assert (advantages[~kept] == 0).all()
    # at the sampling policy and the reference (the first step), a dropped group has no gradient
    logps = torch.full((3, 3), -0.5, requires_grad=True)
    grpo_token_loss(logps, logps.detach(), logps.detach(), advantages).loss.sum().backward()
    assert (logps.grad[~kept] == 0).all() and (logps.grad[kept] != 0).all()


def test_a_few_grpo_steps_move_a_toy_policy_toward_the_rewarded_answer():
    """A policy over two answers to "What is 7 + 11?" ("18" right, "17" wrong), starting at 50/50:
    sample groups, score them with the gsm8k verifier, and take GRPO steps."""
    answers, truth = ["The answer is 17.", "The answer is 18."], "18"
    logits = torch.zeros(2, requires_grad=True)
    reference = torch.log_softmax(logits.detach(), 0)
    optimizer = torch.optim.SGD([logits], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        with torch.no_grad():
            picks = torch.multinomial(torch.softmax(logits, 0), 4 * 8, replacement=True, generator=gen).view(4, 8)
        scores = torch.tensor([[gsm8k_verifier(answers[i], truth) for i in row] for row in picks.tolist()])
        rewards = rewards_of(scores, torch.ones_like(scores, dtype=torch.bool), 10.0, None)
        advantages, _ = group_advantages(rewards)
        logps = torch.log_softmax(logits, 0)[picks]
        loss = grpo_token_loss(logps, logps.detach(), reference[picks], advantages, beta=0.01).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.softmax(logits, 0)[1].item() > 0.8  # from 0.5


def test_a_group_without_spread_never_gives_nan():
    advantages, kept = group_advantages(torch.tensor([[1.0, 1.0]]), "standard")
    assert not kept.any() and not math.isnan(advantages.sum().item())
