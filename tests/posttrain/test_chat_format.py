"""OLMo 2-Instruct's chat template: olmolab's rendering and ids against transformers' `apply_chat_template`."""

import pytest

from olmolab import ModelConfig, Transformer
from olmolab.cli import main
from olmolab.model_files import save_model
from olmolab.tokenizer import Tokenizer, render_chat, train_bpe

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime.\n(one)"},
        {"role": "assistant", "content": " 7"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "11 — ünïcödé ✓"},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "\n\nblank question"}],
]


def test_render_chat_is_the_tulu_template_with_bos():
    text, spans = render_chat(CONVERSATIONS[1][:4], bos="<s>", eos="</s>")
    assert text == "<s><|system|>\nYou are terse.\n<|user|>\nName a prime.\n(one)\n<|assistant|>\n 7</s>\n<|user|>\nAnother?\n"
    assert [text[a:b] for a, b in spans] == [" 7</s>\n"]
    prompt, _ = render_chat(CONVERSATIONS[0][:1], bos="<s>", eos="</s>", add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is 2 + 2?\n<|assistant|>\n"


def _hf_tokenizer(tmp_path, tokenizer: Tokenizer, vocab: int, eos: int, pad: int):
    """The tokenizer as `olmolab export hf` writes it beside a (tiny) model of that vocabulary."""
    config = ModelConfig.preset("olmo2-tiny", vocab_size=vocab, embedding_size=vocab, eos_token_id=eos, pad_token_id=pad)
    out = tmp_path / "hf"
    assert main(["export", "hf", str(save_model(Transformer(config), tmp_path / "ckpt", tokenizer=tokenizer)), str(out)]) == 0
    return transformers.AutoTokenizer.from_pretrained(out)


def _check_same_ids(ours: Tokenizer, theirs) -> None:
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            # transformers 5 returns a BatchEncoding (return_dict=True by default)
            expected = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)["input_ids"]
            assert ours.encode_chat(messages, add_generation_prompt=prompt) == expected


def test_apply_chat_template_gives_olmolabs_ids_for_olmo2s_tokenizer(tmp_path, shared_data):
    ours = Tokenizer.from_file(shared_data / "tokenizers" / "allenai_dolma2.json")
    assert (ours.eos_token_id, ours.pad_token_id) == (100257, 100277)
    theirs = _hf_tokenizer(tmp_path, ours, vocab=100352, eos=100257, pad=100277)
    assert theirs.bos_token == theirs.eos_token == "<|endoftext|>"
    _check_same_ids(ours, theirs)


def test_apply_chat_template_gives_olmolabs_ids_for_a_trained_bpe(tmp_path):
    texts = [m["content"] for conversation in CONVERSATIONS for m in conversation] * 30
    ours = train_bpe(texts + ["<|user|>\n<|assistant|>\n<|system|>\n"] * 30, vocab_size=300)
    _check_same_ids(ours, _hf_tokenizer(tmp_path, ours, vocab=300, eos=0, pad=1))


def test_trained_tokens_are_the_assistant_turns_through_eos_and_newline(shared_data):
    tok = Tokenizer.from_file(shared_data / "tokenizers" / "allenai_dolma2.json")
    ids, trained = tok.encode_chat_with_mask(CONVERSATIONS[1])
    pieces, piece = [], []
    for token, on in zip(ids, trained, strict=True):
        if on:
            piece.append(token)
        elif piece:
            pieces.append(tok.decode(piece))
            piece = []
    pieces.append(tok.decode(piece))
    assert pieces == [" 7<|endoftext|>\n", "11 — ünïcödé ✓<|endoftext|>"]
