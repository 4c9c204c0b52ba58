"""`olmolab rlvr`: GRPO on the trainer's engine, end to end at toy size."""

import json
import random
import re
import signal
import subprocess
import time
from collections import Counter

import pytest
import torch
import yaml

from olmolab.cli import main
from olmolab.posttrain import verifiers
from olmolab.posttrain.batches import stream_padding_pays_removing
from olmolab.posttrain.chat_data import BadRow
from olmolab.posttrain.rlvr import response_streams, rlvr_row, token_logps, tokenize_prompts
from olmolab.revisions import list_revisions
from olmolab.train.metrics import read_metrics

from ..train.test_trainer import final_weights, olmolab_cmd, run_env
from .conftest import MAX_SEQ_LEN, write_config, write_jsonl


@pytest.fixture
def rlvr_config(tmp_path, base_checkpoint):
    """A function writing an `olmolab rlvr` config on arithmetic prompts checked by `gsm8k`."""
    rng = random.Random(3)
    rows = []
    for _ in range(8):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
                     "ground_truth": str(a + b), "dataset": "gsm8k"})
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)

    def make(name="rlvr.yaml", rlvr=None, **trainer):
        section = {"paths": [data], "max_seq_len": MAX_SEQ_LEN, "samples_per_prompt": 4, "response_length": 6,
                   "sample_interval": 1, "samples_logged": 2} | (rlvr or {})
        return write_config(tmp_path / name, base_checkpoint, "rlvr", section,
                            {"global_batch_size": 2, "micro_batch_size": 1, "save_interval": 1} | trainer,
                            {"lr": 1e-3}, {"name": "constant"})

    return make


@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_groups_responses_are_one_stream_labelled_with_the_response_tokens_only(share_prefix):
    import numpy as np

    batch = response_streams([np.array([5, 6, 7]), np.array([5, 6])], [[8, 9], [10], [11, 12, 13], []], pad_id=1,
                             share_prefix=share_prefix)
    if share_prefix:  # the prompt but its last token once, then each response after its own copy of it
        assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 7, 10], [5, 6, 11, 12, 13, 6, 1]]
        assert batch["labels"].tolist() == [[-100, -100, 8, 9, -100, 10, -100], [-100, 11, 12, 13, -100, -100, -100]]
        assert batch["sample"].tolist() == [[-1, -1, 0, 0, 0, 1, 1], [-1, 0, 0, 0, 0, 1, -1]]
        assert batch["positions"][0].tolist() == [0, 1, 2, 3, 4, 2, 3]
    else:
        assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 5, 6, 7, 10], [5, 6, 11, 12, 13, 5, 6, 1, 1]]
        assert batch["labels"].tolist() == [[-100, -100, 8, 9, -100, -100, -100, 10, -100],
                                            [-100, 11, 12, 13, -100, -100, -100, -100, -100]]


def test_a_groups_stream_rounded_up_to_a_multiple_is_the_same_stream_then_padding():
    import numpy as np

    args = ([np.array([5, 6, 7]), np.array([5, 6])], [[8, 9], [10], [11, 12, 13], []])
    exact = response_streams(*args, pad_id=1)
    rounded = response_streams(*args, pad_id=1, multiple=4)  # (16 in bf16 on a CPU)
    assert rounded["input_ids"].shape == (2, 8) and rounded["rows"].shape[2] == 8
    assert rounded["input_ids"][:, :7].tolist() == exact["input_ids"].tolist()
    assert rounded["labels"][:, 7].tolist() == [-100, -100] and rounded["sample"][:, 7].tolist() == [-1, -1]


def test_token_logps_are_the_full_forwards_log_probs_of_the_labels():
    from olmolab import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny")).eval()
    ids = torch.randint(2, 100, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 2:5], labels[1, 1:3] = ids[0, 3:6], ids[1, 2:4]
    with torch.no_grad():
        full = model(ids).float().log_softmax(-1)
        got = token_logps(model, ids, labels)
    mask = labels != -100
    expected = full.gather(2, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("padding_free", [True, False])
def test_the_loss_scores_each_response_token_as_the_sampler_drew_it(tmp_path, chat_tokenizer, monkeypatch,
                                                                    padding_free):
    """Before the first update the policy is the sampling policy, so the log-probs the loss uses
    (policy, sampling policy, reference) are those `generate` drew each token with: at the
    rollout's temperature, and over the model's vocabulary, not the embedding's padding rows;
    with each micro-batch's group rows scored as one row without their padding, or padded."""
    from olmolab import ModelConfig, Transformer
    from olmolab.generation import decode, sampling
    from olmolab.model_files import save_model
    from olmolab.posttrain.config import load_post_train_config
    from olmolab.posttrain.rlvr import RLVRTrainer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny", max_seq_len=MAX_SEQ_LEN, embedding_size=640))
    checkpoint = save_model(model, tmp_path / "base", tokenizer=chat_tokenizer)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": f"What is {a} + {a}?" + " Think." * a}], "ground_truth": str(2 * a),
         "dataset": "gsm8k"} for a in range(4)])
    config = write_config(tmp_path / "rlvr.yaml", checkpoint, "rlvr",
                          {"paths": [prompts], "max_seq_len": MAX_SEQ_LEN, "samples_per_prompt": 4,
                           "response_length": 12, "temperature": 0.7, "padding_free": padding_free},
                          {"global_batch_size": 4, "micro_batch_size": 2}, {"lr": 1e-3}, {"name": "constant"})
    trainer = RLVRTrainer(load_post_train_config("rlvr", config))

    drawn = []  # per decode step: the chosen tokens and their log-probs, for the rows still running

    def recording(logits, generation, generator):
        tokens = sampling.next_token(logits, generation, generator)
        logps = (logits.float() / generation.temperature).log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
        drawn.append((tokens.tolist(), logps))
        return tokens

    monkeypatch.setattr(decode, "next_token", recording)
    batch, _ = trainer.rollout(list(range(4)))
    monkeypatch.undo()
    sampled = [[] for _ in drawn[0][0]]  # per response, in the batch's order (group by group)
    running = list(range(len(sampled)))  # a row leaves the batch after its EOS
    for tokens, logps in drawn:
        for row, logp in zip(running, logps.tolist(), strict=True):
            sampled[row].append(logp)
        running = [row for row, token in zip(running, tokens, strict=True) if token != model.config.eos_token_id]
    micro_batches = [{k: batch[k][rows] for k in ("positions", "stream_lengths")} for rows in (slice(0, 2), slice(2, 4))]
    # the prompts differ in length: with padding_free, the first goes as one row, the second padded
    assert [stream_padding_pays_removing(micro) for micro in micro_batches] == [True, False]
    responses = batch["labels"] != -100
    expected = torch.zeros(responses.shape).masked_scatter(responses, torch.tensor([x for row in sampled for x in row]))
    assert responses.sum() == sum(map(len, sampled))
    torch.testing.assert_close(trainer._logps_in_micro_batches(trainer.model, batch), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["ref_logps"], expected, atol=1e-4, rtol=0)


def says_one(response: str, ground_truth) -> float:
    """A verifier an untrained model sometimes satisfies, so that groups have different rewards."""
    return float("1" in response)


def test_rlvr_run_logs_rewards_kl_and_timing_writes_samples_and_revisions(rlvr_config, tmp_path, monkeypatch):
    monkeypatch.setitem(verifiers.VERIFIERS, "says_one", says_one)
    data = write_jsonl(tmp_path / "ones.jsonl", [{"messages": [{"role": "user", "content": f"Say {i}."}],
                                                  "ground_truth": "1", "dataset": "says_one"} for i in range(4)])
    config = rlvr_config(rlvr={"paths": [data], "updates_per_rollout": 2, "samples_per_prompt": 8})
    assert main(["rlvr", str(config)]) == 0
    rows = [r for r in read_metrics(tmp_path / "rlvr") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("reward/mean", "reward/std", "accuracy", "response_length", "cutoff_fraction", "kl",
                    "clip_fraction", "policy_loss", "groups/dropped", "time/generation_s", "time/learning_s"):
            assert key in row, key
        assert 0 < row["response_length"] <= 6 and 0 <= row["cutoff_fraction"] <= 1
    # the second update of a rollout moved the policy away from the reference
    assert rows[-1]["kl"] > 0
    samples = [json.loads(line) for line in (tmp_path / "rlvr" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    assert samples[0]["prompt"].endswith("<|assistant|>\n") and samples[0]["reward"] in (0.0, 10.0)
    assert [r.step for r in list_revisions(tmp_path / "rlvr")] == [1, 2]
    assert main(["plot", str(tmp_path / "rlvr"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert main(["export", "hf", str(tmp_path / "rlvr"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_resumed_run_samples_and_trains_exactly_as_the_uninterrupted_one(rlvr_config, tmp_path, monkeypatch):
    """Stopped after its step-2 revision and started again, the run samples the same responses
    (the sampling RNG is in the revision) and ends with the same weights, bit for bit."""
    monkeypatch.setitem(verifiers.VERIFIERS, "says_one", says_one)
    data = write_jsonl(tmp_path / "ones.jsonl", [{"messages": [{"role": "user", "content": f"Say {i}."}],
                                                  "ground_truth": "1", "dataset": "says_one"} for i in range(4)])
    rlvr = {"paths": [data], "samples_per_prompt": 8, "samples_logged": 16}
    straight = rlvr_config("straight.yaml", rlvr=rlvr, run_dir=str(tmp_path / "straight"), max_steps=3, save_interval=2)
    assert main(["rlvr", str(straight)]) == 0
    stopped = rlvr_config("stopped.yaml", rlvr=rlvr, run_dir=str(tmp_path / "stopped"), max_steps=2, save_interval=2)
    assert main(["rlvr", str(stopped)]) == 0
    resumed = rlvr_config("resumed.yaml", rlvr=rlvr, run_dir=str(tmp_path / "stopped"), max_steps=3, save_interval=2)
    assert main(["rlvr", str(resumed)]) == 0

    def run(name):
        rows = [r for r in read_metrics(tmp_path / name) if "loss" in r]
        curve = [(r["step"], r["loss"], r["reward/mean"], r["response_length"], r["grad_norm"]) for r in rows]
        samples = (tmp_path / name / "samples.jsonl").read_text()
        return curve, samples, final_weights(tmp_path / name)

    assert run("stopped") == run("straight")
    assert any(r["groups/dropped_fraction"] < 1 for r in read_metrics(tmp_path / "straight") if "loss" in r)


@pytest.mark.slow  # three runs as subprocesses: ~40 s on a quiet 2-core machine
def test_resume_after_sigkill_is_bitwise_identical(rlvr_config, tmp_path):
    """`olmolab rlvr` SIGKILLed after its step-2 revision (mid-rollout, mid-update or mid-save) and
    started again ends with the uninterrupted run's metrics, samples and weights, bit for bit: the
    revision holds the step, the optimizer and the data order, and the sampling seed is a pure
    function of (seed, step, rank). Run as subprocesses, so only a built-in verifier is at hand:
    `gsm8k` with "1" as the answer, which the random model's responses sometimes end on."""
    data = write_jsonl(tmp_path / "ones.jsonl", [{"messages": [{"role": "user", "content": f"What is {i} - {i - 1}?"}],
                                                  "ground_truth": "1", "dataset": "gsm8k"} for i in range(4)])
    rlvr = {"paths": [data], "samples_per_prompt": 8, "samples_logged": 16}
    settings = {"max_steps": 6, "save_interval": 1, "keep_last": 2}
    straight = rlvr_config("straight.yaml", rlvr=rlvr, run_dir=str(tmp_path / "straight"), **settings)
    subprocess.run(olmolab_cmd("rlvr", straight), check=True, env=run_env(), capture_output=True)

    killed = rlvr_config("killed.yaml", rlvr=rlvr, run_dir=str(tmp_path / "killed"), **settings)
    proc = subprocess.Popen(olmolab_cmd("rlvr", killed), env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(r.step >= 2 for r in list_revisions(tmp_path / "killed")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert list_revisions(tmp_path / "killed"), "the run was killed before its first revision"
    assert max(r.step for r in list_revisions(tmp_path / "killed")) < 6, "the run finished before the kill"
    subprocess.run(olmolab_cmd("rlvr", killed), check=True, env=run_env(), capture_output=True)

    def run(name):
        rows = [r for r in read_metrics(tmp_path / name) if "loss" in r]
        curve = [(r["step"], r["loss"], r["reward/mean"], r["kl"], r["response_length"], r["grad_norm"]) for r in rows]
        return curve, (tmp_path / name / "samples.jsonl").read_text(), final_weights(tmp_path / name)

    curve, _, _ = run("straight")
    assert [step for step, *_ in curve] == [1, 2, 3, 4, 5, 6]
    assert run("killed") == run("straight")
    # not a run that learned nothing (all groups dropped), whose weights would match trivially
    assert any(r["groups/dropped_fraction"] < 1 for r in read_metrics(tmp_path / "straight") if "loss" in r)


@pytest.mark.parametrize(("row", "error"), [
    ({"messages": [{"role": "user", "content": "2+2?"}], "dataset": "gsm8k"}, "'ground_truth'"),
    ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
      "ground_truth": "4", "dataset": "gsm8k"}, "must not end with an assistant turn"),
    ({"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": "4", "dataset": 7}, "no verifier named 7"),
])
def test_a_bad_prompt_row_says_what_is_wrong(row, error):
    with pytest.raises(BadRow, match=error):
        rlvr_row(row)


def test_a_prompt_too_long_for_a_response_is_dropped_and_counted(chat_tokenizer):
    rows = [([{"role": "user", "content": "What is 1 + 2?"}], "3", "gsm8k"),
            ([{"role": "user", "content": "What is 1 + 2? " * 20}], "3", "gsm8k")]
    counts = Counter()
    prompts = tokenize_prompts(rows, chat_tokenizer, max_prompt_len=40, counts=counts)
    assert len(prompts) == 1 and counts["dropped_overlong"] == 1
    assert chat_tokenizer.decode(prompts[0].ids).endswith("<|assistant|>\n")  # ready for the model's turn


def test_an_unknown_verifier_is_an_error_naming_the_line(rlvr_config, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}],
                                               "ground_truth": "1", "dataset": "gsm8k"},
                                              {"messages": [{"role": "user", "content": "hi"}],
                                               "ground_truth": "1", "dataset": "gsm9k"}])
    assert main(["rlvr", str(rlvr_config(rlvr={"paths": [bad]}))]) != 0
    assert re.search(r"bad.jsonl:2: no verifier named 'gsm9k'; known: gsm8k, (ifeval, )?math", capsys.readouterr().err)


def test_the_official_1b_recipe_carries_the_published_grpo_hyperparameters():
    from olmolab.posttrain.config import load_post_train_config
    from tests.conftest import REPO_ROOT

    config = load_post_train_config("rlvr", REPO_ROOT / "configs/official/olmo2-1b-rlvr.yaml")
    rlvr = config.data
    assert (rlvr.beta, config.optim.lr, config.scheduler.name) == (0.01, 5e-7, "constant")
    assert (rlvr.samples_per_prompt, config.trainer.global_batch_size, rlvr.response_length) == (16, 48, 2048)
    assert (rlvr.temperature, rlvr.verification_reward, rlvr.cutoff_reward) == (1.0, 10.0, 0.0)
    assert (rlvr.clip_low, rlvr.clip_high, rlvr.advantage_normalization) == (0.2, 0.272, "centered")


@pytest.mark.slow
def test_grpo_steps_on_the_engine_raise_the_reward_of_a_tiny_model(rlvr_config, tmp_path, monkeypatch):
    """From a random tiny model that says "1" in about one response in ten, GRPO pushes it to
    say it (nearly) always, while KL to the reference grows."""
    monkeypatch.setitem(verifiers.VERIFIERS, "says_one", says_one)
    data = write_jsonl(tmp_path / "ones.jsonl", [{"messages": [{"role": "user", "content": f"Say {i}."}],
                                                  "ground_truth": "1", "dataset": "says_one"} for i in range(8)])
    config = rlvr_config(rlvr={"paths": [data], "samples_per_prompt": 8, "response_length": 4, "sample_interval": 0},
                         global_batch_size=4, micro_batch_size=2, max_steps=16, save_interval=None)
    raw = yaml.safe_load(config.read_text())
    raw["optim"]["lr"] = 1e-2
    config.write_text(yaml.safe_dump(raw))
    assert main(["rlvr", str(config)]) == 0
    rows = [r for r in read_metrics(tmp_path / "rlvr") if "loss" in r]
    first, last = rows[:3], rows[-3:]
    assert sum(r["accuracy"] for r in first) / 3 < 0.3
    assert sum(r["accuracy"] for r in last) / 3 > 0.8
    assert last[-1]["kl"] > first[0]["kl"]


@pytest.mark.slow
def test_rlvr_under_torchrun_splits_the_prompts_between_ranks_and_fsdp_matches_ddp(rlvr_config, tmp_path):
    """Two ranks each sample their half of the step's prompts (with their own seeds), under DDP and
    under FSDP2, where each rank samples from a full copy of the sharded policy: the two runs see the
    same samples and take the same steps."""
    from .test_engine import curve, torchrun

    # an answer the random model's responses end on now and then (7: about one in twenty), so that
    # groups of 16 are kept and the weights move
    data = write_jsonl(tmp_path / "sevens.jsonl", [{"messages": [{"role": "user", "content": f"What is {i} + {7 - i}?"}],
                                                    "ground_truth": "7", "dataset": "gsm8k"} for i in range(8)])
    for strategy in ("ddp", "fsdp"):
        config = rlvr_config(f"{strategy}.yaml", rlvr={"paths": [data], "samples_per_prompt": 16, "response_length": 8,
                                                       "sample_interval": 0},
                             run_dir=str(tmp_path / strategy), distributed=strategy, global_batch_size=4,
                             max_steps=3, save_interval=3)
        torchrun("rlvr", config)
        rows = [r for r in read_metrics(tmp_path / strategy) if "loss" in r]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert [r["groups"] for r in rows] == [4, 4, 4]  # the logged counts are the global batch's
        assert [r.step for r in list_revisions(tmp_path / strategy)] == [3]
    keys = ("loss", "grad_norm", "reward/mean", "response_length", "kl")
    ddp, fsdp = curve(tmp_path / "ddp", keys), curve(tmp_path / "fsdp", keys)
    assert any(r["groups/dropped_fraction"] < 1 for r in read_metrics(tmp_path / "ddp") if "loss" in r)
    for row, expected in zip(fsdp, ddp, strict=True):
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-6)
