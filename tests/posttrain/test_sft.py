"""SFT: assistant-only labels, counted drops and truncation, bad rows, reductions, packing, padding-free rows."""

import json
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from olmolab import ModelConfig, Transformer
from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.model.loss import IGNORE_INDEX
from olmolab.posttrain import sft
from olmolab.posttrain.batches import padding_free
from olmolab.posttrain.chat_data import read_rows, sft_row
from olmolab.posttrain.config import load_post_train_config
from olmolab.posttrain.sft import (
    SFTTrainer,
    collate_sequences,
    document_attention_mask,
    pack,
    padding_pays_removing,
    tokenize_conversations,
)
from olmolab.train.metrics import read_metrics

from .conftest import conversation, write_jsonl


def examples(tokenizer, n=6, seed=0):
    rng = random.Random(seed)
    return tokenize_conversations([conversation(rng) for _ in range(n)], tokenizer, 1000, "truncate", Counter())


def test_conversations_tokenized_in_parallel_chunks_are_each_as_if_alone(chat_tokenizer, monkeypatch):
    rng = random.Random(1)
    rows = [conversation(rng) for _ in range(7)]
    monkeypatch.setattr(sft, "TOKENIZE_CHUNK", 3)  # chunks of 3, 3 and 1
    chunked = tokenize_conversations(rows, chat_tokenizer, 1000, "truncate", Counter())
    for example, messages in zip(chunked, rows, strict=True):
        ids, trained = chat_tokenizer.encode_chat_with_mask(messages)
        assert example.ids.tolist() == ids and example.trained.tolist() == trained


def test_tokenizing_the_data_shows_its_progress(sft_config, capsys):
    assert main(["sft", str(sft_config(max_steps=1, progress=True))]) == 0
    assert "tokenizing conversations" in capsys.readouterr().err


def test_labels_are_the_next_token_on_assistant_turns_only(chat_tokenizer):
    messages = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "3"},
                {"role": "user", "content": "Double it."}, {"role": "assistant", "content": "6"}]
    (example,) = tokenize_conversations([messages], chat_tokenizer, 1000, "truncate", Counter())
    labels = collate_sequences([[example]], pad_id=1, packed=False)["labels"][0]
    targets = labels[labels != IGNORE_INDEX].tolist()
    assert chat_tokenizer.decode(targets) == "3<|endoftext|>\n6<|endoftext|>"
    ids = example.ids.tolist()
    # each label is the token that follows its position
    assert all(ids[t + 1] == label for t, label in enumerate(labels.tolist()) if label != IGNORE_INDEX)


def test_untrainable_rows_are_dropped_and_overlong_rows_truncated_or_dropped_and_counted(chat_tokenizer):
    rows = [[{"role": "user", "content": "hi"}],  # nothing to train on
            [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}],
            [{"role": "user", "content": "What is 12 + 30? " * 8}, {"role": "assistant", "content": "42"}]]
    long = len(chat_tokenizer.encode_chat(rows[2]))
    counts = Counter()
    kept = tokenize_conversations(rows, chat_tokenizer, long - 10, "truncate", counts)
    assert counts == {"dropped_untrained": 2, "truncated": 1}, "cut before its answer, a row has nothing to train"
    counts = Counter()
    kept = tokenize_conversations(rows, chat_tokenizer, long - 1, "truncate", counts)
    assert counts == {"dropped_untrained": 1, "truncated": 1} and len(kept) == 2 and len(kept[1].ids) == long - 1
    counts = Counter()
    kept = tokenize_conversations(rows, chat_tokenizer, long - 1, "drop", counts)
    assert counts == {"dropped_untrained": 1, "dropped_overlong": 1} and len(kept) == 1


@pytest.mark.parametrize("line, error", [
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "content must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
])
def test_a_bad_row_is_an_error_naming_file_and_line_or_a_counted_skip(tmp_path, line, error):
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    path = write_jsonl(tmp_path / "data.jsonl.gz", [good, good, line, good])
    with pytest.raises(UserError, match=rf"data.jsonl.gz:3: .*{error}"):
        read_rows([path], sft_row, skip_bad=False, counts=Counter())
    counts = Counter()
    assert len(read_rows([path], sft_row, skip_bad=True, counts=counts)) == 3
    assert counts == {"rows": 4, "bad_rows": 1}


def test_packing_fills_sequences_in_order_without_splitting_a_conversation():
    assert pack([5, 4, 3, 6, 2], 9) == [[0, 1], [2, 3], [4]]


def test_a_packed_batch_gives_the_same_per_token_losses_as_the_conversations_one_by_one(chat_tokenizer):
    model = Transformer(ModelConfig.preset("olmo2-tiny")).eval()
    convs = examples(chat_tokenizer, n=5)
    packed = collate_sequences([convs[:3], convs[3:]], pad_id=1, packed=True)
    mask = document_attention_mask(packed["doc_ids"])
    logits = model(packed["input_ids"], positions=packed["positions"], attn_mask=mask)
    packed_losses = F.cross_entropy(logits.flatten(0, 1), packed["labels"].flatten(), reduction="none")
    packed_losses = packed_losses[packed["labels"].flatten() != IGNORE_INDEX]

    alone = []
    for conv in convs:
        batch = collate_sequences([[conv]], pad_id=1, packed=False)
        losses = F.cross_entropy(model(batch["input_ids"])[0], batch["labels"][0], reduction="none")
        alone.append(losses[batch["labels"][0] != IGNORE_INDEX])
    torch.testing.assert_close(packed_losses, torch.cat(alone), atol=1e-5, rtol=1e-5)


def _gradients(config_path, overrides):
    trainer = SFTTrainer(load_post_train_config("sft", config_path, overrides))
    batch = next(iter(trainer.loader))
    row = trainer.forward_backward(batch)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}, row


def test_padding_free_lays_the_conversations_end_to_end_each_attending_within_its_own_row():
    doc_ids = torch.tensor([[0, 0, 0, -1, -1],   # one conversation of 3, padded
                            [0, 0, 1, 1, 1]])    # two packed: 2 and 3 tokens
    index, length, inputs = padding_free(doc_ids)
    assert index.tolist() == [0, 1, 2, 5, 6, 7, 8, 9] and length == 8  # the padding skipped
    assert inputs["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]  # restarting at each conversation
    rows, outputs = inputs["shared_prefix"].rows, inputs["shared_prefix"].outputs
    assert rows.shape == (1, 3, 3)  # three conversations, each in a row of the longest's length
    assert rows[0, 1, :2].tolist() == [3, 4] and rows[0, 2].tolist() == [5, 6, 7]
    assert outputs.tolist() == [[0, 1, 2, 3, 4, 6, 7, 8]]  # each token's output from its place in its row


def test_padding_free_rounds_the_stream_and_its_rows_up_to_a_multiple():
    """In bf16 on a CPU token counts come in multiples of 64, rows' lengths of 16
    (`olmolab.kernels.token_multiple`, `length_multiple`)."""
    doc_ids = torch.tensor([[0, 0, 0, -1, -1], [0, 0, 1, 1, 1]])
    index, length, inputs = padding_free(doc_ids, multiple=6, length_multiple=4)
    assert len(index) == 8 and length == 12  # 4 places of padding at the stream's end
    assert inputs["positions"].shape == inputs["shared_prefix"].outputs.shape == (1, 12)
    assert inputs["shared_prefix"].rows.shape == (1, 3, 4)  # rows of 3 tokens at most, as 4


@pytest.mark.parametrize("packing", [False, True])
def test_padding_free_rows_give_the_padded_rows_loss_and_gradients(sft_config, packing):
    path = sft_config(sft={"packing": packing})
    trainer = SFTTrainer(load_post_train_config("sft", path, []))
    assert packing or padding_pays_removing(next(iter(trainer.loader))["doc_ids"])  # else both runs would pad
    stream, row = _gradients(path, [])
    padded, row_padded = _gradients(path, ["sft.padding_free=false"])
    assert row["loss"] == pytest.approx(row_padded["loss"], rel=1e-5)
    assert row["trained_tokens"] == row_padded["trained_tokens"]
    for name, grad in padded.items():
        torch.testing.assert_close(stream[name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("packing", "padding_free"), [(False, True), (True, True), (False, False), (True, False)])
def test_token_counts_rounded_up_change_nothing_but_the_shapes(sft_config, monkeypatch, packing, padding_free):
    path = sft_config(sft={"packing": packing, "padding_free": padding_free})
    exact, row = _gradients(path, [])
    monkeypatch.setattr(SFTTrainer, "token_multiple", 64)  # bf16's on a CPU
    monkeypatch.setattr(SFTTrainer, "length_multiple", 16)
    rounded, row_rounded = _gradients(path, [])
    assert row["loss"] == pytest.approx(row_rounded["loss"], rel=1e-5)
    for name, grad in exact.items():
        torch.testing.assert_close(rounded[name], grad, atol=1e-5, rtol=1e-4)


def test_rows_with_little_padding_stay_padded():
    """Below 1/16 of the positions, removing the padding costs about what it saves."""
    nearly_full = torch.zeros(4, 64, dtype=torch.long)
    nearly_full[0, -15:] = -1
    assert not padding_pays_removing(nearly_full)
    nearly_full[1, -1] = -1
    assert padding_pays_removing(nearly_full)


def test_sum_reduction_is_the_mean_times_the_trained_tokens_and_micro_batching_does_not_matter(sft_config):
    path = sft_config()
    mean, row = _gradients(path, ["trainer.micro_batch_size=4"])
    mean_micro, row_micro = _gradients(path, ["trainer.micro_batch_size=1"])
    total, row_sum = _gradients(path, ["sft.reduction=sum"])
    assert row["loss"] == pytest.approx(row_micro["loss"], rel=1e-6) == pytest.approx(row_sum["loss"], rel=1e-6)
    for name, grad in mean.items():
        torch.testing.assert_close(mean_micro[name], grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(total[name], grad * row["trained_tokens"], atol=1e-5, rtol=1e-4)


def test_sft_run_writes_revisions_metrics_and_data_stats(sft_config, tmp_path):
    assert main(["sft", str(sft_config(sft={"packing": True}))]) == 0
    run = tmp_path / "sft"
    assert sorted(p.name.split("-")[0] for p in run.glob("step*-tokens*")) == ["step2", "step4"]
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"]
    assert (run / "data_stats.json").exists()


@pytest.mark.parametrize("size, sft_lr, sft_batch, dpo_lr", [
    ("1b", 3e-5, 128, 2.5e-6), ("7b", 2e-5, 128, 1e-6), ("13b", 5e-6, 64, 8e-7),
])
def test_official_post_training_recipes_carry_the_published_hyperparameters(size, sft_lr, sft_batch, dpo_lr):
    from tests.conftest import REPO_ROOT

    sft = load_post_train_config("sft", REPO_ROOT / f"configs/official/olmo2-{size}-sft.yaml")
    assert (sft.optim.lr, sft.trainer.global_batch_size, sft.data.epochs, sft.data.max_seq_len) == (sft_lr, sft_batch, 2, 4096)
    assert (sft.data.reduction, sft.data.warmup_ratio, sft.optim.weight_decay, sft.scheduler.name) == ("sum", 0.03, 0, "linear")
    dpo = load_post_train_config("dpo", REPO_ROOT / f"configs/official/olmo2-{size}-dpo.yaml")
    assert (dpo.optim.lr, dpo.trainer.global_batch_size, dpo.data.epochs, dpo.data.max_seq_len) == (dpo_lr, 128, 1, 2048)
    assert (dpo.data.loss, dpo.data.beta, dpo.data.warmup_ratio, dpo.optim.weight_decay) == ("dpo_norm", 5, 0.1, 0)


def test_olmolab_sft_stops_at_a_bad_row_naming_it_or_skips_and_counts_it_with_skip_bad(sft_config, tmp_path, capsys):
    good = '{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}'
    data = write_jsonl(tmp_path / "bad.jsonl", [good] * 5 + ['{"messages": [{"role": "bot", "content": "2"}]}'])
    path = sft_config(sft={"paths": [data]}, max_steps=1)
    assert main(["sft", str(path)]) == 2
    assert "bad.jsonl:6: messages[0]: unknown role 'bot'" in capsys.readouterr().err
    assert main(["sft", str(path), "--skip-bad"]) == 0
    stats = json.loads((tmp_path / "sft" / "data_stats.json").read_text())
    assert (stats["rows"], stats["bad_rows"], stats["examples"]) == (6, 1, 5)
