"""DPO: the losses against a plain reference, the data checks, the cached reference, the logged rewards."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.model.loss import IGNORE_INDEX
from olmolab.posttrain import dpo
from olmolab.posttrain.batches import stream_padding_pays_removing
from olmolab.posttrain.chat_data import preference_row, read_rows
from olmolab.train.metrics import read_metrics
from tests.conftest import assert_one_line_error, run_cli
from tests.test_model_files import RunsACommand

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


def preference_pairs(tokenizer):
    """Pairs with one or two turns before the scored one, answers of different lengths, and
    answers that begin alike."""
    first = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "Double it."}]
    second = [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 12 + 1?"}]
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [(first + answer("4"), first + answer("5 or so")), (second + answer("13"), second + answer("12")),
            (second + answer("13, since 12 + 1 is 13"), second + answer("13"))]
    return dpo.tokenize_pairs(rows, tokenizer, 1000, "truncate", Counter())


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize(("share_prefix", "multiple"), [(True, 1), (False, 1), (True, 16)])
def test_pair_scores_are_each_turns_log_probs_as_if_its_conversation_were_alone(chat_tokenizer, share_prefix, multiple,
                                                                                padding_free):
    """Whether or not the pair shares its prompt, with its lengths rounded up (bf16 on a CPU), and
    with the pairs as one row without their padding."""
    from olmolab import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny")).eval()
    pairs = preference_pairs(chat_tokenizer)
    batch = dpo.collate_pairs(pairs, pad_id=1, share_prefix=share_prefix, multiple=multiple)
    assert batch["input_ids"].shape[1] % multiple == 0 and batch["rows"].shape[2] % multiple == 0
    assert stream_padding_pays_removing(batch)  # so that padding_free takes its own path
    alone = []  # per pair, per side: the summed log-probs and the count of the scored tokens
    for pair in pairs:
        for side in (pair.chosen, pair.rejected):
            log_probs = model(torch.as_tensor(side.ids)[None])[0].log_softmax(-1)
            targets = torch.as_tensor(side.trained[1:]).nonzero().flatten() + 1
            alone.append((log_probs[targets - 1, torch.as_tensor(side.ids)[targets]].sum(), len(targets)))
    with torch.no_grad():
        for average in (False, True):
            scores = torch.stack(dpo.pair_scores(model, batch, average, padding_free, multiple), dim=1).flatten()
            expected = torch.stack([total / (n if average else 1) for total, n in alone])
            torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_pairs_without_their_padding_give_the_padded_rows_scores_and_gradients(chat_tokenizer):
    """In float64 (but for the norms, in fp32 by design): a token laid out wrong would be far off."""
    from olmolab import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny")).double()
    batch = dpo.collate_pairs(preference_pairs(chat_tokenizer), pad_id=1)
    results = []
    for padding_free in (False, True):
        model.zero_grad()
        chosen, rejected = dpo.pair_scores(model, batch, False, padding_free, multiple=64, pad_id=1)
        (chosen - 2 * rejected).sum().backward()
        results.append((chosen.detach(), rejected.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_pairs_stay_padded_where_padding_is_under_a_sixteenth(chat_tokenizer):
    pair = preference_pairs(chat_tokenizer)[0]
    batch = dpo.collate_pairs([pair, pair], pad_id=1)  # two rows of one length: no padding
    assert not stream_padding_pays_removing(batch)
    batch = dpo.collate_pairs([pair, pair], pad_id=1, multiple=64)  # padded up to a multiple of 64
    assert stream_padding_pays_removing(batch)


def test_a_pair_computes_its_prompt_once_and_each_side_the_token_before_its_answer(chat_tokenizer):
    pairs = preference_pairs(chat_tokenizer)
    batch = dpo.collate_pairs(pairs, pad_id=1)
    for b, pair in enumerate(pairs):
        first_answer_token = int(pair.chosen.trained.argmax())
        assert dpo.shared_prefix_length(pair) == first_answer_token - 1  # the prompt but its last token
        stream_length = len(pair.chosen.ids) + len(pair.rejected.ids) - (first_answer_token - 1)
        assert (batch["input_ids"][b, :stream_length] == torch.as_tensor(
            np.concatenate([pair.chosen.ids, pair.rejected.ids[first_answer_token - 1:]]))).all()
    unshared = dpo.collate_pairs(pairs, pad_id=1, share_prefix=False)
    assert batch["input_ids"].shape[1] < unshared["input_ids"].shape[1]


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
    labels, rejected = batch["labels"][0], batch["rejected"][0]
    for side, answer in ((~rejected, "4"), (rejected, "5")):
        scored = labels[side & (labels != IGNORE_INDEX)]
        assert chat_tokenizer.decode(scored.tolist()) == answer + "<|endoftext|>"


def test_scoring_the_reference_shows_its_progress(dpo_config, capsys):
    assert main(["dpo", str(dpo_config(max_steps=1, progress=True))]) == 0
    assert "reference: scoring 16 pairs" in capsys.readouterr().err


def test_a_reference_cache_holding_code_or_other_scores_is_refused_in_one_line(dpo_config, tmp_path, capsys):
    """The cache sits in the run directory, which a user may have been handed: it is read by
    torch's restricted unpickler, never run, and one that does not fit the data is refused."""
    assert main(["dpo", str(dpo_config(max_steps=1))]) == 0
    (scored,) = (tmp_path / "dpo").glob("reference_logps-*.pt")  # its name: the data's and reference's key
    config = dpo_config("handed.yaml", run_dir=str(tmp_path / "handed"))
    cache = tmp_path / "handed" / scored.name
    cache.parent.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"chosen": RunsACommand(marker), "rejected": torch.zeros(16)}, cache)
    code, _, err = run_cli(capsys, "dpo", config)
    assert_one_line_error(code, last_line(err), f"{cache}: refused: it holds objects other than tensors",
                          "GLOBAL posix.system", "delete it, and the next run scores the reference again")
    assert not marker.exists() and "weights_only` set to `False" not in err and "Traceback" not in err
    torch.save({"chosen": torch.zeros(15), "rejected": torch.zeros(15)}, cache)
    code, _, err = run_cli(capsys, "dpo", config)
    assert_one_line_error(code, last_line(err),
                          f"{cache}: expected the reference's chosen and rejected scores of 16 pairs")


def last_line(err: str) -> str:
    """stderr's last line (an in-process run may say first that this process's threads keep
    denormal floats: olmolab/denormals.py)."""
    return err.strip().splitlines()[-1] + "\n"


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
