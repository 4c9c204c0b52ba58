"""Token-level generation: identical to transformers' greedy `generate`, and the sampling rules."""

import copy

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.convert import hf
from olmolab.errors import UserError
from olmolab.generation import GenerationConfig, decode_step, generate, next_token
from olmolab.model.kv_cache import KVCache, StaticKVCache
from olmolab.train.optim import OptimConfig, build_optimizer

transformers = pytest.importorskip("transformers")

PAD = 1


def hf_generate(hf_model, prompts, max_new_tokens, eos_token_id=None):
    """transformers' greedy generate on left-padded prompts; the new tokens of each row, EOS kept."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    out = hf_model.generate(
        ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos_token_id, pad_token_id=PAD,
    )
    rows = []
    for new in out[:, width:].tolist():
        if eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        rows.append(new)
    return rows


@pytest.fixture(params=["olmo2-tiny", "olmo-tiny"])
def model_pair(request, tmp_path, make_model):
    ours = make_model(request.param)
    hf.export(ours, tmp_path)
    return ours, transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()


def random_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 512, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])  # the CPU kernels differ by thread count
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_greedy_matches_transformers_token_for_token(model_pair, threads):
    ours, theirs = model_pair
    for prompt in random_prompts([9, 1]):
        expected = hf_generate(theirs, [prompt], max_new_tokens=40)
        assert generate(ours, [prompt], GenerationConfig(max_new_tokens=40, stop_at_eos=False)) == expected


def test_left_padded_batch_matches_transformers_and_each_prompt_alone(model_pair):
    ours, theirs = model_pair
    prompts = random_prompts([7, 3, 12, 1])
    config = GenerationConfig(max_new_tokens=25, stop_at_eos=False)
    batched = generate(ours, prompts, config)
    assert batched == hf_generate(theirs, prompts, max_new_tokens=25)
    assert batched == [generate(ours, [p], config)[0] for p in prompts]


def test_rows_end_at_eos_at_different_steps_as_in_transformers(model_pair):
    ours, theirs = model_pair
    prompts = random_prompts([5, 11, 2])
    free = generate(ours, prompts, GenerationConfig(max_new_tokens=20, stop_at_eos=False))
    eos = free[0][4]  # a token the first row produces: it must stop there
    got = generate(ours, prompts, GenerationConfig(max_new_tokens=20, eos_token_id=eos))
    assert got[0] == free[0][: free[0].index(eos) + 1]
    assert got == hf_generate(theirs, prompts, max_new_tokens=20, eos_token_id=eos)


def test_stop_token_ids_end_a_row_and_are_kept(make_model):
    model = make_model()
    prompt = random_prompts([6])[0]
    free = generate(model, [prompt], GenerationConfig(max_new_tokens=20, stop_at_eos=False))[0]
    stop = free[7]
    got = generate(model, [prompt], GenerationConfig(max_new_tokens=20, stop_at_eos=False, stop_token_ids=[stop]))[0]
    assert got == free[: free.index(stop) + 1]


def test_max_new_tokens_and_the_context_window_bound_the_output(make_model):
    model = make_model(max_seq_len=32)
    no_eos = GenerationConfig(max_new_tokens=5, stop_at_eos=False)
    assert len(generate(model, random_prompts([4]), no_eos)[0]) == 5
    # 30 prompt tokens leave room to feed 2 more; the third new token needs no slot.
    long = GenerationConfig(max_new_tokens=50, stop_at_eos=False)
    assert len(generate(model, random_prompts([30]), long)[0]) == 3
    assert len(generate(model, random_prompts([32]), long)[0]) == 1


def test_a_prompt_longer_than_the_context_window_is_a_user_error(make_model):
    model = make_model(max_seq_len=32)
    with pytest.raises(UserError, match=r"prompt 1 has 33 tokens, longer than the model's context window of 32"):
        generate(model, random_prompts([3, 33]))


def test_empty_prompts_and_out_of_vocabulary_ids_are_user_errors(make_model):
    model = make_model()
    with pytest.raises(UserError, match=r"prompt 0 is empty"):
        generate(model, [[]])
    with pytest.raises(UserError, match=r"token id 600, outside the model's vocabulary \[0, 512\)"):
        generate(model, [[5, 600]])


def test_the_same_seed_gives_the_same_samples_and_another_seed_differs(make_model):
    model = make_model()
    prompts = random_prompts([4, 8])
    sample = lambda seed: generate(  # noqa: E731
        model, prompts, GenerationConfig(max_new_tokens=30, temperature=1.5, seed=seed, stop_at_eos=False))
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_k_of_one_and_a_tiny_top_p_are_greedy(make_model):
    model = make_model()
    prompts = random_prompts([4, 8])
    greedy = generate(model, prompts, GenerationConfig(max_new_tokens=15, stop_at_eos=False))
    for extra in (dict(top_k=1), dict(top_p=1e-6)):
        config = GenerationConfig(max_new_tokens=15, temperature=2.0, seed=3, stop_at_eos=False, **extra)
        assert generate(model, prompts, config) == greedy


def test_top_k_and_top_p_sample_only_from_the_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    top_k = next_token(logits, GenerationConfig(temperature=1.0, top_k=3), g)
    assert set(top_k.tolist()) == {0, 1, 2}
    # softmax: 0.64, 0.23, 0.087, ...: the first two reach 0.87, so top_p=0.8 keeps exactly those.
    top_p = next_token(logits, GenerationConfig(temperature=1.0, top_p=0.8), g)
    assert set(top_p.tolist()) == {0, 1}
    everything = next_token(logits, GenerationConfig(temperature=1.0), g)
    assert set(everything.tolist()) == set(range(6))


def test_padding_rows_of_the_embedding_are_never_generated(make_model):
    model = make_model(vocab_size=500)  # embedding_size stays 512
    with torch.no_grad():
        model.lm_head.weight[500:] = 100.0  # the padding rows would win every argmax
    out = generate(model, random_prompts([5]), GenerationConfig(max_new_tokens=10, stop_at_eos=False))[0]
    assert max(out) < 500


def test_on_token_sees_every_token_and_can_end_a_row(make_model):
    model = make_model()
    prompts = random_prompts([3, 6])
    seen = []

    def on_token(row, token):
        seen.append((row, token))
        return row == 0 and len([r for r, _ in seen if r == 0]) == 4

    out = generate(model, prompts, GenerationConfig(max_new_tokens=10, stop_at_eos=False), on_token=on_token)
    assert len(out[0]) == 4 and len(out[1]) == 10
    assert [t for r, t in seen if r == 1] == out[1]


def test_finished_rows_leave_the_batch_and_the_rest_decode_as_alone(make_model):
    model = make_model()
    prompts = random_prompts([3, 6, 5])
    config = GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    alone = [generate(model, [p], config)[0] for p in prompts]
    batch_sizes = []
    # every step starts at the embeddings (decoding calls model.trunk, not forward)
    hook = model.embeddings.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        out = generate(model, prompts, config, on_token=lambda row, token: row == 1)  # row 1 ends at once
    finally:
        hook.remove()
    assert out[0] == alone[0] and out[2] == alone[2] and out[1] == alone[1][:1]
    assert batch_sizes == [3] + [2] * 7  # the prompt, then 7 decode steps without row 1


@pytest.mark.parametrize("preset", ["olmo2-tiny", "olmo-tiny"])  # olmo-tiny ties the LM head to the embeddings
def test_generate_leaves_the_model_unchanged_and_trainable(make_model, preset):
    model = make_model(preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, random_prompts([5, 2]), GenerationConfig(max_new_tokens=4))
    for key, tensor in model.state_dict().items():
        assert tensor.is_contiguous() and torch.equal(tensor, before[key]), key
    ids = torch.randint(0, 512, (2, 8))
    model(ids, ids).loss.backward()  # no inference tensors were left behind
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("batch", [1, 3])  # the two CPU kernels: one row, a few rows
@pytest.mark.parametrize("assign", [False, True])
def test_generation_follows_weights_changed_after_an_earlier_call(make_model, batch, assign):
    model, other = make_model(seed=0), make_model(seed=1)
    prompts = random_prompts([4] * batch)
    config = GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    before = generate(model, prompts, config)
    model.load_state_dict(other.state_dict(), assign=assign)  # in place, or new tensors
    after = generate(model, prompts, config)
    assert after == generate(other, prompts, config) and after != before


def test_a_static_cache_step_gives_the_logits_of_the_growing_cache(make_model):
    """The compiled decoder's step, run eagerly: a tensor fill level, the whole buffer attended
    to with the unwritten slots masked, equals the ordinary step on the filled prefix."""
    model = make_model("olmo2-tiny")
    prompt = torch.tensor(random_prompts([7])[0])[None]
    growing, prefilled = (KVCache.allocate(model.config, 1, 32) for _ in range(2))
    with torch.no_grad():
        model.trunk(prompt, cache=growing), model.trunk(prompt, cache=prefilled)
        static = StaticKVCache.continuing(prefilled)
        key_mask = torch.ones(1, 1, 1, 32, dtype=torch.bool)
        for token in (5, 17, 300):
            tokens = torch.tensor([[token]])
            expected = model.logits(model.trunk(tokens, cache=growing), at="last")
            got = decode_step(model, tokens, static.filled.view(1, 1).clone(), key_mask, static)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert int(static.filled) == growing.length == 10


def test_compiled_decoding_matches_transformers_token_for_token(model_pair):
    ours, theirs = model_pair
    prompt = random_prompts([9])[0]
    config = GenerationConfig(max_new_tokens=30, stop_at_eos=False, compile=True)
    assert generate(ours, [prompt], config) == hf_generate(theirs, [prompt], max_new_tokens=30)


def test_generation_after_a_fused_adamw_step_uses_the_new_weights():
    """The fused AdamW step leaves the weights' version counters alone: the decode kernels'
    weight layouts must not outlive a generate call (RLVR samples after every step)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny"))
    prompts, config = [[5, 6, 7], [8, 9, 10]], GenerationConfig(max_new_tokens=4, stop_at_eos=False)
    generate(model, prompts, config)  # lays out the initial weights for decoding
    optimizer = build_optimizer(model, OptimConfig(lr=0.5))
    model(torch.tensor(prompts)).float().logsumexp(-1).mean().backward()
    optimizer.step()
    assert generate(model, prompts, config) == generate(copy.deepcopy(model), prompts, config)
