"""Perplexity: every token scored once, with as much context as the window allows, on real files."""

import csv
import gzip
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from olmolab import ModelConfig, Transformer
from olmolab.errors import UserError
from olmolab.eval.perplexity import (
    Document,
    evaluate_documents,
    load_documents,
    read_token_file,
    split_token_stream,
    token_documents,
    windows,
)
from olmolab.tokenizer import Tokenizer
from tests.eval.conftest import SHARED_DATA, WIKITEXT


@pytest.mark.parametrize("n_tokens", [2, 3, 100, 256, 257, 1000])
@pytest.mark.parametrize("stride", [1, 50, 128, 256])
def test_sliding_windows_score_every_token_exactly_once_with_enough_context(n_tokens, stride):
    window = 256
    scored = []
    for begin, end, first in windows(n_tokens, window, stride):
        assert end - begin <= window and begin <= first < end
        assert first - begin >= min(first, window - stride)  # context before the first scored token
        scored.extend(range(first, end))
    assert scored == list(range(n_tokens - 1))


def direct_loss(model, tokens: np.ndarray) -> float:
    """Mean cross-entropy of one forward over the whole document (it fits the window)."""
    ids = torch.tensor(tokens)[None]
    with torch.no_grad():
        logits = model(ids[:, :-1])
    return F.cross_entropy(logits[0], ids[0, 1:]).item()


def test_a_document_that_fits_is_scored_like_one_forward(model):
    tokens = np.random.default_rng(0).integers(2, 512, 200)
    result = evaluate_documents(model, [Document(tokens, 1000)], stride=37)
    assert result.n_tokens == 199 and result.n_documents == 1
    assert result.loss == pytest.approx(direct_loss(model, tokens), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(result.loss * 199 / 1000 / math.log(2))


def summed_logprob(model, tokens: np.ndarray, n_scored: int) -> float:
    """Log-probability of the last `n_scored` tokens given everything before them (one forward)."""
    ids = torch.tensor(tokens)[None]
    with torch.no_grad():
        logprobs = model(ids[:, :-1])[0].log_softmax(-1)
    targets = ids[0, 1:]
    return float(logprobs[-n_scored:].gather(1, targets[-n_scored:, None]).sum())


def test_long_documents_slide_and_the_last_window_still_looks_back_a_full_window(model):
    tokens = np.random.default_rng(1).integers(2, 512, 600)
    result = evaluate_documents(model, [Document(tokens, None)], stride=256)
    expected = (
        summed_logprob(model, tokens[0:257], 256)  # tokens 1..256
        + summed_logprob(model, tokens[256:513], 256)  # tokens 257..512, fresh context (stride = window)
        + summed_logprob(model, tokens[343:600], 87)  # tokens 513..599 after 256 tokens of context
    )
    assert result.n_tokens == 599 and result.bits_per_byte is None
    assert result.loss == pytest.approx(-expected / 599, rel=1e-5)


def test_document_order_in_a_token_file_does_not_change_the_numbers(model):
    rng = np.random.default_rng(2)
    docs = [np.append(rng.integers(2, 512, n), 0) for n in (5, 300, 40, 700, 1)]  # EOS = 0 ends each
    forward = evaluate_documents(model, token_documents(np.concatenate(docs), eos=0), batch_size=3)
    backward = evaluate_documents(model, token_documents(np.concatenate(docs[::-1]), eos=0), batch_size=7)
    assert forward.n_documents == 5 and forward.n_tokens == sum(len(d) for d in docs)
    assert forward.loss == pytest.approx(backward.loss, rel=1e-6)


def test_text_file_is_one_document_scored_after_eos_with_its_exact_bytes(model, tokenizer, tmp_path):
    text = (WIKITEXT / "test.txt").read_text()[:5000]
    (tmp_path / "held_out.txt").write_text(text)
    [doc] = load_documents(tmp_path / "held_out.txt", tokenizer)
    assert doc.tokens[0] == tokenizer.eos_token_id and doc.tokens[1:].tolist() == tokenizer.encode(text)
    assert doc.n_bytes == len(text.encode("utf-8"))
    result = evaluate_documents(model, [doc])
    assert result.n_tokens == len(doc.tokens) - 1
    assert 0 < result.bits_per_byte < 20


def test_jsonl_documents_and_token_limit(tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in ["first document", "second one here", "third"])
    docs = load_documents(path, tokenizer)
    assert len(docs) == 3
    limited = load_documents(path, tokenizer, max_tokens=len(tokenizer.encode("first document")) + 2)
    assert len(limited) == 2 and len(limited[1].tokens) == 3


def test_dolma_token_file_is_split_at_eos_and_its_bytes_are_the_documents_text():
    shard = SHARED_DATA / "tokens" / "python-docs.dolma2" / "part-0-00000.npy"
    if not shard.is_file():
        pytest.skip(f"token files not found at {shard}")
    tokenizer = Tokenizer.from_file(SHARED_DATA / "tokenizers" / "allenai_dolma2.json")
    tokens = read_token_file(shard, "uint32")
    docs = token_documents(tokens, tokenizer.eos_token_id, tokenizer, max_tokens=20_000)
    index = sorted(csv.reader(gzip.open(next(shard.parent.glob("*.csv.gz")), "rt")), key=lambda r: int(r[0]))
    source = SHARED_DATA / "corpora" / "python-docs" / "python-3.11-docs.jsonl.gz"
    lines = gzip.open(source, "rt").read().splitlines()
    for doc, (start, end, _, _, line_number) in zip(docs[:-1], index, strict=False):
        assert len(doc.tokens) == 1 + int(end) - int(start)
        assert doc.n_bytes == len(json.loads(lines[int(line_number) - 1])["text"].strip().encode("utf-8"))
    assert sum(len(d.tokens) - 1 for d in docs) == 20_000
    # A small model with OLMo 2's vocabulary scores it (random weights: about ln(vocab) per token).
    model = Transformer(ModelConfig.preset("olmo2-tiny", vocab_size=100278, embedding_size=100352)).eval()
    result = evaluate_documents(model, [docs[2]])  # a 158-token document
    assert abs(result.loss - math.log(100352)) < 1.0


def test_token_file_errors_say_what_to_fix(tmp_path):
    (tmp_path / "odd.npy").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="not a multiple of 2 bytes"):
        read_token_file(tmp_path / "odd.npy", "uint16")
    with pytest.raises(UserError, match="not a numpy dtype"):
        read_token_file(tmp_path / "odd.npy", "uint17")
    assert [d.tolist() for d in split_token_stream(np.array([5, 0, 6, 7]), eos=0)] == [[5, 0], [6, 7]]
