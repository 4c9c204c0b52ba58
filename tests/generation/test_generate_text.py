"""Text-level generation: stop strings, EOS, and streaming."""

from olmolab.generation import GenerationConfig, generate, generate_text

FREE = GenerationConfig(max_new_tokens=40, stop_at_eos=False)


def a_stop_string_from(text: str) -> str:
    """Three characters from the second half of `text`, none of them a half-decoded byte."""
    return next(text[i : i + 3] for i in range(len(text) // 2, len(text)) if "\ufffd" not in text[i : i + 3])


def test_text_is_the_decoded_new_tokens(make_model, tokenizer):
    model = make_model(vocab_size=400, embedding_size=512)
    prompt = "To be, or not"
    tokens = generate(model, [tokenizer.encode(prompt)], FREE)[0]
    assert generate_text(model, tokenizer, [prompt], FREE) == [tokenizer.decode(tokens)]


def test_a_stop_string_cuts_the_text_before_it(make_model, tokenizer):
    model = make_model(vocab_size=400, embedding_size=512)
    full = generate_text(model, tokenizer, ["The heart"], FREE)[0]
    stop = a_stop_string_from(full)
    cut = generate_text(model, tokenizer, ["The heart"], FREE, stop_strings=[stop, "never appears"])[0]
    assert cut == full[: full.index(stop)]


def test_eos_ends_the_text_and_is_not_part_of_it(make_model, tokenizer):
    model = make_model(vocab_size=400, embedding_size=512)
    tokens = generate(model, [tokenizer.encode("sleep")], FREE)[0]
    eos = tokens[5]
    text = generate_text(model, tokenizer, ["sleep"], GenerationConfig(max_new_tokens=40, eos_token_id=eos))[0]
    assert text == tokenizer.decode(tokens[: tokens.index(eos)])


def test_streamed_pieces_join_to_the_result_and_never_show_a_stop_string(make_model, tokenizer):
    model = make_model(vocab_size=400, embedding_size=512)
    prompts = ["To die", "Whether 'tis nobler in the mind"]
    full = generate_text(model, tokenizer, prompts, FREE)
    stop = a_stop_string_from(full[1])
    pieces = {0: [], 1: []}
    got = generate_text(model, tokenizer, prompts, FREE, stop_strings=[stop],
                        on_text=lambda row, piece: pieces[row].append(piece))
    assert got[1] == full[1][: full[1].index(stop)]
    for row in (0, 1):
        assert "".join(pieces[row]) == got[row]
    assert len(pieces[0]) > 1  # it streamed, not one piece at the end


def test_an_empty_prompt_starts_from_the_document_separator(make_model, tokenizer):
    model = make_model(vocab_size=400, embedding_size=512)
    eos = model.config.eos_token_id
    tokens = generate(model, [[eos]], FREE)[0]
    assert generate_text(model, tokenizer, [""], FREE) == [tokenizer.decode(tokens)]
