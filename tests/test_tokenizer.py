"""The tokenizer wrapper: OLMo's real tokenizers give OLMo's ids; trained ones round-trip."""

from __future__ import annotations

import csv
import gzip
import json
import pickle

import numpy as np
import pytest

from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.tokenizer import Tokenizer, train_bpe

OLMO_TOKENIZERS = {
    # file, dtype of Dolma's token file, eos, pad, vocab
    "dolma2": ("allenai_dolma2.json", np.uint32, 100257, 100277, 100278),
    "gpt-neox-olmo-dolma-v1_5": ("allenai_gpt-neox-olmo-dolma-v1_5.json", np.uint16, 50279, 1, 50280),
}
TEXT = ["the cat sat on the mat", "a dog sat on a log", "  cats and dogs  ", "Ünïcödé text, too: ¿qué? 你好"] * 30


@pytest.mark.parametrize("name", OLMO_TOKENIZERS)
def test_olmo_tokenizers_have_olmos_eos_pad_and_vocab_size(shared_data, name):
    file, _, eos, pad, vocab = OLMO_TOKENIZERS[name]
    tokenizer = Tokenizer.from_file(shared_data / "tokenizers" / file)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.vocab_size) == (eos, pad, vocab)
    assert tokenizer.bos_token_id is None  # OLMo pretraining data has no BOS


@pytest.mark.parametrize("name", OLMO_TOKENIZERS)
def test_documents_encode_to_the_ids_in_dolmas_token_files(shared_data, name):
    """Dolma's files hold encode(text.strip()) + [eos] per document; check documents by their provenance rows."""
    file, dtype, eos, _, _ = OLMO_TOKENIZERS[name]
    tokenizer = Tokenizer.from_file(shared_data / "tokenizers" / file)
    token_dir = shared_data / "tokens" / f"python-docs.{name}"
    tokens = np.memmap(token_dir / "part-0-00000.npy", dtype=dtype, mode="r")
    with gzip.open(token_dir / "part-0-00000.csv.gz", "rt") as f:
        rows = list(csv.reader(f))
    with gzip.open(shared_data / "corpora/python-docs/python-3.11-docs.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    # Include documents with leading whitespace: stripping matters for them.
    padded = [r for r in rows if docs[int(r[4]) - 1]["text"][:1].isspace()][:3]
    for start, end, doc_id, _, line in padded + rows[:3]:
        doc = docs[int(line) - 1]
        assert doc["id"] == doc_id
        assert tokenizer.encode(doc["text"].strip(), add_eos=True) == tokens[int(start) : int(end)].tolist()
    assert len(padded) == 3


def test_encode_batch_equals_encode_one_by_one():
    tokenizer = train_bpe(TEXT, vocab_size=300)
    assert tokenizer.encode_batch(TEXT[:4], add_eos=True) == [tokenizer.encode(t) + [0] for t in TEXT[:4]]


def test_trained_tokenizer_has_eos_0_pad_1_and_round_trips_through_its_file(tmp_path):
    tokenizer = train_bpe(TEXT, vocab_size=300)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.vocab_size) == (0, 1, 300)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.identity == tokenizer.identity
    for text in TEXT[:4]:
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.decode(loaded.encode(text)) == text  # byte-level: lossless, no unknown tokens
    assert pickle.loads(pickle.dumps(loaded)).identity == loaded.identity  # how spawned workers get it


def test_fingerprint_tells_tokenizers_apart():
    a, b = train_bpe(TEXT, vocab_size=300), train_bpe(TEXT[:2] * 10, vocab_size=280)
    assert a.fingerprint == train_bpe(TEXT, vocab_size=300).fingerprint
    assert a.fingerprint != b.fingerprint


def test_training_refuses_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(UserError, match="at least 258"):
        train_bpe(TEXT, vocab_size=100)


def test_hugging_face_directory_names_eos_and_pad_and_explicit_ids_win(tmp_path):
    tokenizer = train_bpe(TEXT, vocab_size=300)
    tokenizer.save(tmp_path / "tokenizer.json")
    pad_name = tokenizer.hf.id_to_token(200)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|pad|>", "pad_token": {"content": pad_name}}))
    from_dir = Tokenizer.from_file(tmp_path)
    assert (from_dir.eos_token_id, from_dir.pad_token_id) == (1, 200)
    assert Tokenizer.from_file(tmp_path, eos_token_id=5).eos_token_id == 5


def test_missing_tokenizer_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load tokenizer"):
        Tokenizer.from_file(tmp_path / "nope.json")


def test_cli_trains_a_tokenizer_that_loads(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT))
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "290", "--out", str(out)]) == 0
    loaded = Tokenizer.from_file(out)
    assert (loaded.vocab_size, loaded.eos_token_id, loaded.pad_token_id) == (290, 0, 1)
    assert main(["tokenizer", "info", str(out), "--text", "the cat"]) == 0
    assert "eos=0, pad=1" in capsys.readouterr().out
