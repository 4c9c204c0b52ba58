"""DPO: the losses against a plain reference, the data checks, the cached reference, the logged rewards."""

import json
import math
from collections import Counter

import pytest
import torch

from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.model.loss import IGNORE_INDEX
from olmolab.posttrain import dpo
from olmolab.posttrain.chat_data import preference_row, read_rows
from olmolab.train.metrics import read_metrics

from .conftest import write_jsonl


def plain_dpo(token_logps, masks, refs, beta, eps, average):
    """Per pair, in float64 Python: the loss, and its gradient w.r.t. each token's log-prob."""
    losses, grads = [], []
    for c_lp, r_lp, c_m, r_m, (ref_c, ref_r) in zip(*token_logps, *masks, refs, strict=True):
        n_c, n_r = sum(c_m), sum(r_m)
        pi_c = sum(x for x, m in zip(c_lp, c_m, strict=True) if m) / (n_c if average else 1)
        pi_r = sum(x for x, m in zip(r_lp, r_m, strict=True) if m) / (n_r if average else 1)
        z = beta * ((pi_c - pi_r) - (ref_c - ref_r))
        sig = 1 / (1 + math.exp(-z))
        losses.append(-(1 - eps) * math.log(sig) - eps * math.log(1 - sig))
        dz = beta * (-(1 - eps) * (1 - sig) + eps * sig)  # d loss / d (pi_c - pi_r)
        grads.append(([dz / (n_c if average else 1) * m for m in c_m], [-dz / (n_r if average else 1) * m for m in r_m]))
    return losses, grads


@pytest.mark.parametrize("loss_type", ["dpo", "dpo_norm"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_dpo_loss_and_its_gradient_match_a_plain_implementation(loss_type, eps):
    torch.manual_seed(0)
    B, T, beta = 5, 7, 2.5
    token_logps = -torch.rand(2, B, T, dtype=torch.float64) * 3
    token_logps.requires_grad_(True)
    masks = torch.rand(2, B, T) < 0.6
    masks[:, :, 0] = True
    refs = -torch.rand(B, 2, dtype=torch.float64) * 10
    average = loss_type == "dpo_norm"
    scores = (token_logps * masks).sum(-1) / (masks.sum(-1) if average else 1)
    out = dpo.dpo_loss(scores[0], scores[1], refs[:, 0], refs[:, 1], beta, eps)
    out.losses.sum().backward()

    expected, grads = plain_dpo(token_logps.tolist(), masks.tolist(), refs.tolist(), beta, eps, average)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    expected_grad = torch.tensor([[c for c, _ in grads], [r for _, r in grads]], dtype=torch.float64)
    torch.testing.assert_close(token_logps.grad, expected_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_rewards, beta * (scores[0] - refs[:, 0]).detach())


def test_turn_scores_are_the_summed_or_mean_log_probs_of_the_labelled_tokens():
    from olmolab import ModelConfig, Transformer

    model = Transformer(ModelConfig.preset("olmo2-tiny")).eval()
    ids = torch.randint(2, 500, (2, 9))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3:8], labels[1, 6:8] = ids[0, 4:9], ids[1, 7:9]
    logps = model(ids).log_softmax(-1)
    expected = [logps[0, 3:8].gather(1, ids[0, 4:9, None]).sum(), logps[1, 6:8].gather(1, ids[1, 7:9, None]).sum()]
    with torch.no_grad():
        torch.testing.assert_close(dpo.turn_scores(model, ids, labels, average=False), torch.stack(expected))
        torch.testing.assert_close(dpo.turn_scores(model, ids, labels, average=True),
                                   torch.stack([expected[0] / 5, expected[1] / 2]))


def test_pairs_that_differ_before_the_last_turn_are_an_error_naming_the_line(tmp_path):
    user, other = {"role": "user", "content": "1 + 1?"}, {"role": "user", "content": "2 + 2?"}
    good = {"chosen": [user, {"role": "assistant", "content": "2"}], "rejected": [user, {"role": "assistant", "content": "3"}]}
    bad = {"chosen": [user, {"role": "assistant", "content": "2"}], "rejected": [other, {"role": "assistant", "content": "3"}]}
    not_assistant = {"chosen": [user], "rejected": [user]}
    for row, error in ((bad, "share every message but the last"), (not_assistant, "must be the assistant's")):
        path = write_jsonl(tmp_path / "pairs.jsonl", [good, row])
        with pytest.raises(UserError, match=rf"pairs.jsonl:2: .*{error}"):
            read_rows([path], preference_row, skip_bad=False, counts=Counter())


def test_only_the_last_assistant_turn_is_scored(chat_tokenizer):
    turns = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "Double it."}]
    rows = [(turns + [{"role": "assistant", "content": "4"}], turns + [{"role": "assistant", "content": "5"}])]
    (pair,) = dpo.tokenize_pairs(rows, chat_tokenizer, 1000, "truncate", Counter())
    batch = dpo.collate_pairs([pair], pad_id=1)
    for side, answer in (("chosen", "4"), ("rejected", "5")):
        labels = batch[f"{side}_labels"][0]
        assert chat_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist()) == answer + "<|endoftext|>"


def test_dpo_caches_the_reference_before_training_reuses_it_on_resume_and_logs_rewards(dpo_config, tmp_path,
                                                                                         monkeypatch):
    assert main(["dpo", str(dpo_config())]) == 0
    run = tmp_path / "dpo"
    (cache,) = run.glob("reference_logps-dpo_norm-*.pt")
    scores = torch.load(cache)
    assert scores["chosen"].shape == scores["rejected"].shape == (16,)
    rows = [r for r in read_metrics(run) if "loss" in r]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen",
                "logps/rejected"):
        assert key in rows[0]
    # at the first step the policy is the reference: every reward is ~0, and the loss log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["rewards/margin"] == pytest.approx(0, abs=1e-5)
    assert rows[-1]["rewards/margin"] > 0

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference was scored again")

    monkeypatch.setattr(dpo, "reference_scores", no_reference)
    assert main(["dpo", str(dpo_config()), "--trainer.max_steps=3"]) == 0
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3]
    assert json.loads((run / "data_stats.json").read_text())["examples"] == 16
