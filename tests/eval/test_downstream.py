"""Ranked classification: exact log-likelihoods, shared work, metric definitions, honesty at chance."""

import math

import numpy as np
import pytest
import torch

from olmolab.eval.downstream import (
    TokenPair,
    all_requests,
    evaluate_task,
    fit_window,
    loglikelihoods,
    packed_rows,
    plain_rows,
    score_examples,
    tokenize_requests,
)
from olmolab.eval.scoring import supports_packing
from olmolab.eval.tasks import Example, Request, TaskSpec, build_examples


def reference_loglikelihood(model, pair: TokenPair) -> float:
    """OLMo's recipe, one request per forward: input = context + continuation[:-1], window-truncated."""
    window = model.config.max_seq_len
    full = list(pair.context + pair.continuation)[-(window + 1) :]
    n_cont = min(len(pair.continuation), window)
    with torch.no_grad():
        logprobs = model(torch.tensor([full[:-1]]))[0].log_softmax(-1)
    first = len(full) - 1 - n_cont
    return sum(float(logprobs[first + j, tok]) for j, tok in enumerate(full[-n_cont:]))


def random_pairs(seed: int, n: int, shared_context: bool) -> list[TokenPair]:
    rng = np.random.default_rng(seed)
    context = tuple(rng.integers(2, 512, 40).tolist())
    pairs = []
    for _ in range(n):
        ctx = context if shared_context else tuple(rng.integers(2, 512, rng.integers(1, 60)).tolist())
        pairs.append(TokenPair(ctx, tuple(rng.integers(2, 512, rng.integers(1, 12)).tolist())))
    return pairs


@pytest.mark.parametrize("pack", [True, False])
def test_loglikelihoods_equal_one_forward_per_request(model, pack):
    pairs = random_pairs(0, 12, shared_context=True) + random_pairs(1, 12, shared_context=False)
    pairs.append(TokenPair(tuple(range(2, 302)), (7, 8, 9)))  # longer than the 256-token window
    pairs.append(pairs[0])  # a duplicate is scored once and reported twice
    assert supports_packing(model)  # so pack=True really packs
    ll, ntok = loglikelihoods(model, pairs, batch_size=5, pack=pack)
    expected = [reference_loglikelihood(model, p) for p in pairs]
    np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-4)
    assert ntok.tolist() == [len(p.continuation) for p in pairs]


def test_ranks_of_a_process_group_score_disjoint_batches_that_add_up(model, monkeypatch):
    """Each rank scores every world-th batch (plus a spare call FSDP's lockstep needs); the
    all-reduce of their sums is the one-process result."""
    from olmolab.eval import scoring
    from olmolab.train import distributed as dist_utils

    pairs = random_pairs(0, 12, shared_context=True) + random_pairs(1, 12, shared_context=False)
    alone = loglikelihoods(model, pairs, batch_size=3)
    shards, calls = [], []
    monkeypatch.setattr(dist_utils, "all_reduce_sum", lambda tensor: tensor)  # each shard kept apart here
    real_target_logprobs = scoring.target_logprobs
    monkeypatch.setattr(scoring, "target_logprobs", lambda *a: calls.append(a[1]) or real_target_logprobs(*a))
    monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(dist_utils, "rank", lambda rank=rank: rank)
        shards.append(loglikelihoods(model, pairs, batch_size=3))
    np.testing.assert_allclose(shards[0][0] + shards[1][0], alone[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(shards[0][1] + shards[1][1], alone[1])
    assert all(shard[1].sum() < alone[1].sum() for shard in shards)  # both did part of the work
    assert len(calls) % 2 == 0  # both ranks made the same number of forward calls


def test_packing_runs_each_context_once_and_mc_letters_share_one_row():
    context = tuple(range(10, 60))
    cloze = [TokenPair(context, (1, 2, 3)), TokenPair(context, (4, 5)), TokenPair(context, (6,))]
    [row] = packed_rows(cloze, max_len=256)
    assert len(row.tokens) == 50 + 2 + 1 + 0  # the context once, then each continuation minus its last token
    letters = [TokenPair(context, (k,)) for k in (30, 31, 32, 33)]
    assert len(packed_rows(letters, max_len=256)) == len(plain_rows(letters)) == 1
    assert len(plain_rows(cloze)) == 3


def test_window_truncation_drops_the_oldest_context_first():
    pair = TokenPair(tuple(range(100)), (200, 201, 202))
    assert fit_window(pair, 50) == TokenPair(tuple(range(52, 100)), (200, 201, 202))
    assert fit_window(pair, 200) == pair
    assert fit_window(TokenPair((1,), tuple(range(10))), 4) == TokenPair((5,), (6, 7, 8, 9))


class TokenizerWithBos:
    """A character tokenizer with a BOS token: the tokenizer protocol is all evaluation needs."""

    bos_token_id, eos_token_id = 1, 0

    def encode(self, text: str) -> list[int]:
        return [2 + ord(c) % 500 for c in text]


def test_context_and_continuation_are_tokenized_separately_with_bos_only_before_the_context(tokenizer):
    [pair] = tokenize_requests([Request("Question: why?\nAnswer:", " because")], TokenizerWithBos())
    assert pair.context[0] == 1 and 1 not in pair.continuation
    assert len(pair.context) == 1 + len("Question: why?\nAnswer:") and len(pair.continuation) == len(
        " because"
    )
    [pair] = tokenize_requests([Request("Answer:", " yes")], tokenizer)  # no BOS: nothing prepended
    assert list(pair.context) == tokenizer.encode("Answer:") and list(pair.continuation) == tokenizer.encode(
        " yes"
    )


def test_metrics_follow_their_definitions():
    # Each normalization picks a different winner: the gold choice 1 wins on chars and PMI only.
    example = Example(0, (Request("Q", " ab"), Request("Q", " abcdefgh"), Request("Q", " abc")), gold=1,
                      uncond=(Request("Answer:", " ab"), Request("Answer:", " abcdefgh"), Request("Answer:", " abc")))  # fmt: skip
    ll = np.array([-2.0, -4.0, -3.5, -1.0, -9.0, -3.4])  # 3 conditional, then 3 unconditional
    ntok = np.array([2, 4, 7, 2, 4, 7])
    per_metric, predictions = score_examples([example], ll, ntok, "rc")
    assert predictions == [0]
    assert per_metric["acc"] == [0.0]  # -2 is the highest total
    assert per_metric["acc_norm"] == [1.0]  # -4/8 beats -2/2 and -3.5/3
    assert per_metric["acc_per_char"] == [1.0]  # -4/9 beats -2/3 and -3.5/4
    assert per_metric["acc_per_token"] == [0.0]  # -3.5/7 beats -2/2 and -4/4: choice 2
    assert per_metric["acc_pmi"] == [1.0]  # -4 - (-9) = 5 beats 1 and -0.1
    assert per_metric["bpb"] == [pytest.approx(4.0 / 9 / math.log(2))]
    mc_metrics, _ = score_examples([Example(0, example.requests, 1)], ll[:3], ntok[:3], "mc")
    assert set(mc_metrics) == {"acc", "bpb"}


def test_random_model_scores_piqa_at_chance(model, tokenizer, eval_data):
    result = evaluate_task(model, tokenizer, TaskSpec("piqa"), data_dir=eval_data, limit=200, batch_size=64)
    assert result.n_examples == 200
    for name in ("acc", "acc_norm", "acc_per_token", "acc_pmi"):
        assert 0.4 <= result.metrics[name] <= 0.6, (name, result.metrics[name])
    assert result.stderr["acc"] == pytest.approx(math.sqrt(0.25 / 199), rel=0.05)
    assert result.samples[0]["requests"][0]["context"].startswith("Goal: ")


def test_examples_and_their_requests_line_up(eval_data):
    examples = build_examples(TaskSpec("arc_challenge"), eval_data, limit=3)
    requests = all_requests(examples)
    assert len(requests) == sum(2 * len(e.requests) for e in examples)
    assert requests[: len(examples[0].requests)] == list(examples[0].requests)
