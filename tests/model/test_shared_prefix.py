"""Prefix sharing: conversations laid out as one stream, their shared beginning computed once,
give every token the output and every weight the gradient of the conversations computed alone."""

import numpy as np
import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.model.shared_prefix import SharedPrefix, layout, stream


def streams_of(groups, prefixes, pad_id=1):
    """A batch of stream rows (ids, positions, SharedPrefix) of conversation groups, and where
    each conversation's tokens sit in its stream row."""
    streams = [stream(P, group) for P, group in zip(prefixes, groups, strict=True)]
    T = max(len(s) for s in streams) + 2  # some padding too
    S = max(len(c) for group in groups for c in group) + 1
    arrays = [layout(P, [len(c) for c in group], T, S) for P, group in zip(prefixes, groups, strict=True)]
    ids = torch.tensor(np.stack([np.pad(s, (0, T - len(s)), constant_values=pad_id) for s in streams]))
    positions, rows, outputs = (torch.tensor(np.stack([a[i] for a in arrays])) for i in range(3))
    places = []  # per group, per conversation: its tokens' stream positions, in order
    for P, group in zip(prefixes, groups, strict=True):
        at, mine = P, []
        for c in group:
            mine.append(list(range(P)) + list(range(at, at + len(c) - P)))
            at += len(c) - P
        places.append(mine)
    return ids, positions, SharedPrefix(rows, outputs), places


@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny"])
def test_a_stream_computes_each_conversation_as_it_would_be_alone(name):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(name)).double()
    tokens = lambda n, seed: np.random.default_rng(seed).integers(2, 500, n)  # noqa: E731
    prompt = tokens(6, 0)
    groups = [[np.concatenate([prompt, tokens(n, seed)]) for n, seed in ((5, 1), (9, 2), (1, 3))],  # one prompt
              [tokens(4, 4), tokens(7, 5), tokens(3, 6)]]  # nothing shared
    prefixes = [6, 0]
    ids, positions, shared, places = streams_of(groups, prefixes)

    hidden = model.trunk(ids, positions=positions, shared_prefix=shared)
    weights = torch.randn_like(hidden)  # a loss on every real stream token
    for b in range(len(groups)):
        weights[b, max(max(p) for p in places[b]) + 1 :] = 0  # none on padding
    (hidden * weights).sum().backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # the trunk's
    model.zero_grad()

    total = 0
    for b, group in enumerate(groups):
        for k, conversation in enumerate(group):
            alone = model.trunk(torch.tensor(conversation)[None])[0]
            torch.testing.assert_close(hidden[b, places[b][k]], alone, rtol=0, atol=1e-12)
            mine = weights[b, places[b][k]].clone()
            if k > 0:  # the prefix's stream tokens are conversation 0's: their loss counts once
                mine[: prefixes[b]] = 0
            total = total + (alone * mine).sum()
    total.backward()
    alone_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert shared_grads.keys() == alone_grads.keys()
    for n, grad in alone_grads.items():
        # the norms and RoPE compute in fp32 inside, and sum a weight's gradient in another order
        torch.testing.assert_close(shared_grads[n], grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()))


def test_shared_prefix_refuses_a_mask_a_cache_or_missing_positions():
    model = Transformer(ModelConfig.preset("olmo2-tiny"))
    ids, positions, shared, _ = streams_of([[np.arange(2, 6), np.arange(2, 8)]], prefixes=[3])
    with pytest.raises(ValueError, match="shared_prefix takes the conversations' positions"):
        model.trunk(ids, shared_prefix=shared)
    with pytest.raises(ValueError, match="no attn_mask"):
        model.trunk(ids, positions=positions, shared_prefix=shared,
                    attn_mask=torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool))


def test_a_layout_that_does_not_fit_its_rows_is_an_error():
    with pytest.raises(ValueError, match="do not fit"):
        layout(3, [5, 8], T=9, S=8)  # a stream of 3 + 2 + 5 tokens
