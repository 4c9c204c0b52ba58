"""The decoder's behaviour: causality, the fused loss, z-loss, the KV cache."""

import pytest
import torch

from olmolab import KVCache, ModelConfig, Transformer
from olmolab.model import StaticKVCache, cross_entropy_loss, linear_cross_entropy
from olmolab.model import loss as loss_module


def tiny(name="olmo2-tiny", **overrides):
    return Transformer(ModelConfig.preset(name, **overrides)).eval()


@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny"])
def test_logits_have_shape_batch_seq_padded_vocab(name):
    model = tiny(name)
    logits = model(torch.randint(0, 500, (3, 17)))
    assert logits.shape == (3, 17, model.config.embedding_size)


def test_every_projection_runs_through_its_linear_module():
    """Decoding multiplies each module's weight from its own copy (`kernels.decode_linear`, found
    by the weight the module passes): a projection computed another way would silently miss that."""
    model = tiny()
    calls = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, args, out: calls.append(m))
    with torch.no_grad():
        model(torch.randint(0, 500, (1, 4)))
    assert sorted(map(id, calls)) == sorted(id(m) for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny"])
def test_a_token_never_sees_the_future(name):
    model = tiny(name)
    ids = torch.randint(0, 500, (1, 20))
    changed = ids.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 500
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_olmo1_layernorm_has_no_parameters_and_olmo2_rmsnorm_has_weights():
    names_1 = {n for n, _ in tiny("olmo-tiny").named_parameters()}
    names_2 = {n for n, _ in tiny("olmo2-tiny").named_parameters()}
    assert not any("norm" in n for n in names_1)
    assert {"blocks.0.attention.q_norm.weight", "blocks.0.attention_norm.weight", "norm.weight"} <= names_2


def test_olmo2_init_is_truncated_normal_with_std_002():
    model = Transformer(ModelConfig.preset("olmo2-tiny", d_model=256, n_heads=4, mlp_hidden_size=1024))
    w = model.blocks[0].feed_forward.w_in.weight
    assert abs(w.std().item() - 0.02 * 0.9866) < 0.0003  # truncating at ±3σ leaves a std of 0.9866σ
    assert w.abs().max() <= 0.06 + 1e-6


def test_clip_qkv_bounds_the_projections():
    model = tiny("olmo-tiny", clip_qkv=1e-3)
    unclipped = tiny("olmo-tiny")
    unclipped.load_state_dict(model.state_dict())
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        assert not torch.allclose(model(ids), unclipped(ids))


def test_a_batch_with_nothing_labelled_has_a_zero_loss_zero_gradients_and_zero_log_probs():
    """Post-training's model leaves the unlabelled rows out before its last block: here all of them."""
    model = tiny()
    ids = torch.randint(0, 500, (2, 8))
    nothing = torch.full_like(ids, -100)
    out = model(ids, nothing, loss_div_factor=1.0)  # as trainers pass it (their token count, at least 1)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.zero_grad()
    log_probs = model(ids, nothing, label_log_probs=True)
    log_probs.sum().backward()
    assert not log_probs.any()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_loss_chunks_are_as_even_as_their_bound_allows():
    cpu, vocab = torch.device("cpu"), 16384
    bound = loss_module.CHUNK_ELEMENTS // vocab  # 1024 rows
    assert loss_module.chunk_rows(2056, vocab, cpu) == 1028  # two chunks, not 1024 + 1024 + 8
    assert loss_module.chunk_rows(3000, vocab, cpu) == 1000
    assert loss_module.chunk_rows(bound * 3 // 2 - 1, vocab, cpu) == bound * 3 // 2 - 1  # one, under 1.5x the bound
    assert loss_module.chunk_rows(bound * 5 // 2 + 2, vocab, cpu) == bound * 5 // 6 + 1  # three, not two too large
    assert loss_module.chunk_rows(5, vocab, cpu) == 5
    assert loss_module.chunk_rows(3, 1 << 30, cpu) == 1  # a vocabulary over the bound: a row at a time


@pytest.mark.parametrize("z", [0.0, 1e-4])
def test_fused_loss_matches_the_reference_loss_and_its_gradients(z, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 300)  # several uneven chunks
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 300, (40,))
    labels[::5] = -100
    ref = cross_entropy_loss(hidden @ weight.T, labels, z_loss_multiplier=z)
    ref.loss.backward()
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    fused = linear_cross_entropy(hidden, weight, labels, z_loss_multiplier=z)
    (2.0 * fused.loss).backward()  # the upstream gradient must be honoured too
    # fp64 in, fp64 throughout: agreement far beyond fp32's ~1e-7
    exact = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.loss, ref.loss, **exact)
    torch.testing.assert_close(fused.z_loss, ref.z_loss, **exact)
    torch.testing.assert_close(hidden.grad, 2 * ref_grads[0], **exact)
    torch.testing.assert_close(weight.grad, 2 * ref_grads[1], **exact)


def test_fused_loss_is_exact_for_extreme_logits():
    """Logit gaps of thousands underflow most probabilities to zero (the label's too, from which
    the fused loss takes its log-normaliser): the loss and its gradients must not."""
    hidden = (torch.randn(24, 16, dtype=torch.float64) * 30).requires_grad_()
    weight = (torch.randn(200, 16, dtype=torch.float64) * 30).requires_grad_()
    labels = torch.randint(0, 200, (24,))
    labels[0] = (hidden[0] @ weight.T).argmax()  # one confident and right: its label is sure
    ref = cross_entropy_loss(hidden @ weight.T, labels, z_loss_multiplier=1e-4)
    ref.loss.backward()
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    fused = linear_cross_entropy(hidden, weight, labels, z_loss_multiplier=1e-4)
    fused.loss.backward()
    assert ref.ce_loss > 1000  # confidently wrong on most tokens (even fp64 underflows)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.z_loss, ref.z_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, ref_grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, ref_grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-way", "gpu-way"])
def test_log_normaliser_from_the_softmax_equals_logsumexp(sync_free):
    """Both ways the fused loss recovers logsumexp from an in-place softmax, on rows whose label
    is likely, unlikely, and underflowed to probability zero."""
    h = torch.randn(6, 8, dtype=torch.float64) * torch.tensor([0.1, 1, 5, 20, 100, 1000], dtype=torch.float64)[:, None]
    w = torch.randn(50, 8, dtype=torch.float64)
    logits = h @ w.T
    labels = logits.argmin(dim=-1, keepdim=True)  # the least likely label of each row
    ok = torch.ones(6, dtype=torch.bool)
    probs = torch.softmax(logits, dim=-1)
    assert probs.gather(1, labels)[-1] == 0  # underflowed
    lse = loss_module._logsumexp_from_softmax(
        probs, logits.gather(1, labels).squeeze(1), labels, ok, logits.amax(dim=-1) if sync_free else None, h, w
    )
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_loss_of_bf16_inputs_matches_the_fp64_reference_to_bf16_rounding(compiled, monkeypatch):
    """bf16 matmuls, fp32 softmax (eager: of an fp32 copy; compiled: one kernel over the bf16
    chunk) in chunks of 300 rows (the input gradient's products in pieces of 256), the last one
    short; one row's logits thousands apart, its label's probability underflowing to zero."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 300 * 500)
    hidden = torch.randn(700, 32).bfloat16()
    hidden[5] *= 300
    hidden.requires_grad_()
    weight = torch.randn(500, 32).bfloat16().requires_grad_()
    labels = torch.randint(0, 500, (700,))
    labels[5] = (hidden[5].double() @ weight.double().T).argmin()
    labels[::7] = -100
    ref = cross_entropy_loss(hidden.double() @ weight.double().T, labels, z_loss_multiplier=1e-4)
    ref.loss.backward()
    ref_grads = hidden.grad.double(), weight.grad.double()
    hidden.grad = weight.grad = None
    fused = linear_cross_entropy(hidden, weight, labels, z_loss_multiplier=1e-4, compiled=compiled)
    fused.loss.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    assert abs(fused.loss.item() - ref.loss.item()) < 1e-3 * ref.loss.item()
    for got, want in zip((hidden.grad, weight.grad), ref_grads, strict=True):
        assert (got.double() - want).norm() < 4 * 2.0**-8 * want.norm()  # four of bf16's roundings


def test_fused_loss_refuses_a_negative_z_loss():
    with pytest.raises(ValueError, match="z_loss_multiplier=-0.1: must be 0"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long), z_loss_multiplier=-0.1)


def test_z_loss_is_mean_squared_log_normaliser_times_multiplier():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    out = cross_entropy_loss(logits, labels, z_loss_multiplier=1e-2)
    expected = 1e-2 * torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(out.z_loss, expected)
    torch.testing.assert_close(out.loss, out.ce_loss + out.z_loss)


def test_div_factor_lets_micro_batches_sum_to_the_global_mean():
    logits = torch.randn(4, 6, 13)
    labels = torch.randint(0, 13, (4, 6))
    whole = cross_entropy_loss(logits, labels).ce_loss
    halves = sum(cross_entropy_loss(logits[i:i + 2], labels[i:i + 2], div_factor=24).ce_loss for i in (0, 2))
    torch.testing.assert_close(halves, whole)


def test_model_loss_equals_loss_of_its_logits():
    model = tiny()
    ids = torch.randint(0, 500, (2, 12))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    with torch.no_grad():
        from_logits = cross_entropy_loss(model(ids), labels, z_loss_multiplier=1e-5)
        fused = model(ids, labels, z_loss_multiplier=1e-5)
    torch.testing.assert_close(fused.loss, from_logits.loss)


@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny"])
def test_outputs_at_some_positions_are_the_whole_outputs_there_values_and_gradients(name):
    """In fp64 through the plain formulas (the fast kernels compute in fp32): a wrong gradient
    shows, rounding does not."""
    from contextlib import ExitStack

    from olmolab.kernels import plain
    from olmolab.kernels.registry import using

    model = tiny(name).double()
    ids = torch.randint(0, 500, (2, 12))
    wanted = torch.tensor([3, 4, 11, 12, 20])  # flat positions, some in each row

    def values_and_grads(outputs):
        model.zero_grad()
        out = outputs()
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]  # not the LM head

    with ExitStack() as formulas:
        for op in ("linear", "rms_norm", "rotary", "swiglu", "causal_attention"):
            formulas.enter_context(using(op, getattr(plain, op)))
        whole = values_and_grads(lambda: model.trunk(ids).flatten(0, 1)[wanted])
        pruned = values_and_grads(lambda: model.trunk(ids, outputs_at=wanted))
    assert pruned[0].shape == (5, model.config.d_model)
    torch.testing.assert_close(pruned, whole, atol=1e-12, rtol=1e-10)


def test_a_loss_on_a_few_labelled_positions_runs_the_last_block_on_those_alone():
    """Post-training labels the answers only: the last block's MLP skips the prompt (same loss)."""
    model = tiny()
    ids = torch.randint(0, 500, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 10:15] = ids[:, 11:]
    rows_seen = []
    hook = model.blocks[-1].feed_forward.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[:-1]))
    with torch.no_grad():
        fused = model(ids, labels)
        reference = cross_entropy_loss(model(ids), labels)
    hook.remove()
    assert rows_seen[0] == (10,) and rows_seen[1] == (2, 16)  # the loss's call, then the logits'
    torch.testing.assert_close(fused.loss, reference.loss)


def test_labelled_positions_rounded_up_to_a_multiple_change_no_loss_gradient_or_log_prob(monkeypatch):
    """bf16 on a CPU rounds the labelled rows up to 64 (`olmolab.kernels.token_multiple`) by
    repeating the last: the repeats must count for nothing."""
    from olmolab.model import transformer as transformer_module

    model = tiny()
    ids = torch.randint(0, 500, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 10:15] = ids[:, 11:]

    def results():
        model.zero_grad()
        loss = model(ids, labels)
        loss.loss.backward()
        with torch.no_grad():
            log_probs = model(ids, labels, label_log_probs=True)
        return loss.loss.detach(), [p.grad.clone() for p in model.parameters()], log_probs

    exact = results()
    monkeypatch.setattr(transformer_module, "token_multiple", lambda dtype, device: 64)
    rows_seen = []
    hook = model.blocks[-1].feed_forward.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[0]))
    rounded = results()
    hook.remove()
    assert rows_seen == [64, 64]  # 10 labelled, 54 repeats
    torch.testing.assert_close(rounded, exact)


FILLED = {KVCache: lambda cache: cache.length, StaticKVCache: lambda cache: int(cache.filled)}


@pytest.mark.parametrize("kind", [KVCache, StaticKVCache])
@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny"])
def test_decoding_with_kv_cache_matches_a_full_forward(name, kind):
    """A static cache's attention reads the whole fixed-size buffer, zeros included: only the
    cache's own mask keeps the unwritten slots (and, within a chunk, later tokens) out."""
    model = tiny(name)
    ids = torch.randint(0, 500, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = kind.allocate(model.config, batch_size=2, max_len=32)
        decode = lambda chunk: model.logits(model.trunk(chunk, cache=cache))  # noqa: E731
        steps = [decode(ids[:, :5])]  # prefill
        steps += [decode(ids[:, 5:8])]  # a chunk continuing the cache: causal within it
        steps += [decode(ids[:, t:t + 1]) for t in range(8, 14)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert FILLED[kind](cache) == 14


def test_a_prompt_in_halved_attention_range_gives_the_same_logits_through_the_cache():
    model = tiny(max_seq_len=512)  # GQA: 4 heads, 2 kv heads
    ids = torch.randint(0, 500, (1, 400))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.allocate(model.config, batch_size=1, max_len=512)
        prefill = model.logits(model.trunk(ids[:, :384], cache=cache))  # keys come from the cache buffer's layout
        rest = model.logits(model.trunk(ids[:, 384:], cache=cache))
    torch.testing.assert_close(torch.cat([prefill, rest], dim=1), full, atol=1e-4, rtol=1e-4)


def test_logits_at_runs_the_head_on_just_the_chosen_positions():
    model = tiny()
    ids = torch.randint(0, 500, (3, 10))
    rows, positions = torch.tensor([0, 2, 2]), torch.tensor([9, 0, 4])
    with torch.no_grad():
        hidden = model.trunk(ids)
        torch.testing.assert_close(model.logits(hidden, at=(rows, positions)), model(ids)[rows, positions])
        torch.testing.assert_close(model.logits(hidden, at="last"), model(ids)[:, -1:])


def test_forward_is_trunk_then_logits_or_loss():
    model = tiny()
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model.logits(model.trunk(ids)))
        torch.testing.assert_close(model(ids, ids, z_loss_multiplier=1e-4),
                                   model.loss(model.trunk(ids), ids, z_loss_multiplier=1e-4))


def test_sequence_longer_than_the_context_window_is_refused():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match="longer than the model's context window"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("labelled", ["none", "some", "all"])
def test_fused_loss_and_gradients_are_right_however_many_rows_are_labelled(labelled):
    """Ignored rows count for nothing; with none labelled the loss and gradients are 0."""
    hidden = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (12,))
    labels[: {"none": 12, "some": 7, "all": 0}[labelled]] = -100
    ref = cross_entropy_loss(hidden @ weight.T, labels, div_factor=3.0)
    ref.loss.backward()
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    fused = linear_cross_entropy(hidden, weight, labels, div_factor=3.0)
    fused.loss.backward()
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, ref_grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, ref_grads[1], rtol=1e-12, atol=1e-12)


def _autograd_nodes(tensor):
    """The names of the autograd nodes behind `tensor`."""
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_a_packed_bf16_training_batch_attends_through_the_kept_scores_as_sdpa_would():
    """SFT's packed batches pass their documents' mask: in bf16 training it takes the kept-scores
    path (kernels/causal_attention.py), with SDPA's values under the mask."""
    from olmolab.kernels import plain
    from olmolab.kernels.registry import using
    from olmolab.posttrain.sft import document_attention_mask

    model = tiny().bfloat16()
    ids = torch.randint(0, 500, (2, 40))
    doc_ids = torch.tensor([[0] * 15 + [1] * 25, [0] * 30 + [-1] * 10])  # -1: padding
    positions = torch.tensor([list(range(15)) + list(range(25)), list(range(30)) + list(range(10))])
    mask = document_attention_mask(doc_ids)
    logits = model(ids, positions=positions, attn_mask=mask)
    assert "_KeptScoresCausalAttentionBackward" in _autograd_nodes(logits)
    with using("causal_attention", plain.causal_attention):
        expected = model(ids, positions=positions, attn_mask=mask)
    assert "_KeptScoresCausalAttentionBackward" not in _autograd_nodes(expected)
    torch.testing.assert_close(logits.float(), expected.float(), atol=0.05, rtol=0.05)  # bf16 rounding; a leak: ~0.9
