"""Causal attention on CPU, computed in tiles by olmolab's C++ kernel or in halves (fp32), or with its
scores kept (bf16 training), equals SDPA's causal attention, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from olmolab.kernels import kernel, native
from olmolab.kernels.causal_attention import (
    halved_causal_attention,
    halves_pay,
    kept_scores_causal_attention,
    kept_scores_pay,
    tiled_causal_attention,
    tiled_pays,
)

causal_attention = kernel("causal_attention")


def qkv(T, heads=4, kv_heads=4, batch=2, head_dim=16, seed=0):
    """Queries, keys and values laid out as the model makes them: (B, T, heads, hd) transposed."""
    g = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, T, h, head_dim, generator=g).transpose(1, 2)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads)


def values_and_grads(attention, q, k, v):
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [t.grad for t in inputs]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


@pytest.mark.parametrize(("T", "kv_heads"), [(384, 4), (512, 4), (512, 2), (448, 1)])
def test_halves_give_sdpas_values_and_gradients(T, kv_heads):
    q, k, v = qkv(T, kv_heads=kv_heads)
    assert halves_pay(q)  # where they are the registry's path (no C++ kernel, or torch.compile)
    torch.testing.assert_close(values_and_grads(halved_causal_attention, q, k, v), values_and_grads(sdpa, q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_halves_take_any_layout():
    """The model's q, k, v are transposed views of (B, T, heads, hd); a KV cache's are (B, heads, T, hd)."""
    q, k, v = (t.contiguous() for t in qkv(384, kv_heads=2))
    assert halves_pay(q)
    torch.testing.assert_close(values_and_grads(halved_causal_attention, q, k, v), values_and_grads(sdpa, q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_without_autograd_the_halves_give_the_same_values():
    q, k, v = qkv(512)
    with torch.no_grad():
        torch.testing.assert_close(halved_causal_attention(q, k, v), sdpa(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 256, 383, 513, 1024])
def test_halves_pay_from_384_to_512_tokens_only(T):
    assert not halves_pay(qkv(T)[0])


def test_bf16_is_not_halved():
    assert not halves_pay(qkv(512)[0].bfloat16())


@pytest.mark.parametrize(("T", "kv_heads"), [(2, 4), (37, 4), (300, 2), (512, 1)])
def test_kept_scores_give_sdpas_values_and_gradients(T, kv_heads):
    """The formula, checked in fp64 where rounding does not hide a wrong mask, scale or gradient."""
    q, k, v = (t.double() for t in qkv(T, kv_heads=kv_heads))
    torch.testing.assert_close(values_and_grads(kept_scores_causal_attention, q, k, v),
                               values_and_grads(sdpa, q, k, v), rtol=1e-10, atol=1e-10)


def test_kept_scores_take_any_layout():
    q, k, v = (t.double().contiguous() for t in qkv(64, kv_heads=2))
    torch.testing.assert_close(values_and_grads(kept_scores_causal_attention, q, k, v),
                               values_and_grads(sdpa, q, k, v), rtol=1e-10, atol=1e-10)


def test_scores_are_kept_in_bf16_training_up_to_512_tokens_only():
    def pays(T, dtype=torch.bfloat16, grad=True):
        q, k, v = (t.to(dtype).requires_grad_(grad) for t in qkv(T))
        return kept_scores_pay(q, k, v)

    assert pays(2) and pays(512)
    assert not pays(1), "one query: nothing to batch"
    assert not pays(513), "longer: the flash kernel skips masked blocks, and the scores would grow as T^2"
    assert not pays(512, grad=False), "without a backward the flash kernel's forward is the faster"
    assert not pays(512, dtype=torch.float32), "fp32 has its own path (halves)"
    big_batch = [torch.empty(64, 32, 512, 16, dtype=torch.bfloat16, requires_grad=True)] * 3
    assert not kept_scores_pay(*big_batch), "2^29 scores: their memory would outgrow the layer's activations"
    q, k, v = (t.bfloat16().requires_grad_() for t in qkv(128))
    assert causal_attention(q, k, v).grad_fn.name() == "_KeptScoresCausalAttentionBackward"


def test_compiled_halves_give_sdpas_values_and_gradients():
    q, k, v = qkv(384, kv_heads=2)
    compiled = torch.compile(causal_attention, fullgraph=True)  # no graph break around the kernels
    torch.testing.assert_close(values_and_grads(compiled, q, k, v), values_and_grads(sdpa, q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_compiled_kept_scores_give_sdpas_values_and_gradients():
    """bf16 blocks compiled for training take this path too (inductor has no attention of its own)."""
    q, k, v = (t.double() for t in qkv(300, kv_heads=2))
    compiled = torch.compile(kept_scores_causal_attention, fullgraph=True)
    torch.testing.assert_close(values_and_grads(compiled, q, k, v), values_and_grads(sdpa, q, k, v),
                               rtol=1e-10, atol=1e-10)


def packed_documents(T, lengths_per_row):
    """A packed batch's mask as SFT builds it: causal, within each document, padding on its own."""
    from olmolab.posttrain.sft import document_attention_mask

    doc_ids = []
    for lengths in lengths_per_row:
        ids = [d for d, n in enumerate(lengths) for _ in range(n)]
        doc_ids.append(ids + [-1] * (T - len(ids)))
    return document_attention_mask(torch.tensor(doc_ids))


@pytest.mark.parametrize(("T", "kv_heads"), [(37, 4), (300, 2)])
def test_kept_scores_under_a_packed_batchs_mask_give_sdpas_values_and_gradients(T, kv_heads):
    """Documents that cross the query bands, and padding, checked in fp64 against SDPA under the mask."""
    q, k, v = (t.double() for t in qkv(T, kv_heads=kv_heads))
    mask = packed_documents(T, [[T // 3, T // 2], [5, T // 2 - 5, 1, 2]])
    masked_sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
    torch.testing.assert_close(values_and_grads(lambda q, k, v: kept_scores_causal_attention(q, k, v, mask), q, k, v),
                               values_and_grads(masked_sdpa, q, k, v), rtol=1e-10, atol=1e-10)


def test_scores_are_kept_under_a_mask_only_where_it_is_a_packed_batchs():
    T = 64
    q, k, v = (t.bfloat16().requires_grad_() for t in qkv(T))
    packed = packed_documents(T, [[20, 30], [64]])
    assert kept_scores_pay(q, k, v, packed)
    assert causal_attention(q, k, v, packed).grad_fn.name() == "_KeptScoresCausalAttentionBackward"
    above_the_diagonal = packed.clone()
    above_the_diagonal[0, 0, 3, 10] = True
    assert not kept_scores_pay(q, k, v, above_the_diagonal), "the bands skip keys after the band"
    without_itself = packed.clone()
    without_itself[1, 0, 7, 7] = False
    assert not kept_scores_pay(q, k, v, without_itself), "every query must see itself (no empty row)"
    assert not kept_scores_pay(q, k, v, torch.zeros(2, 1, T, T)), "an additive float mask is not a packed batch's"
    assert not kept_scores_pay(q, k, v, packed[:1]), "one mask broadcast over the batch: SDPA's business"
    with torch.no_grad():
        torch.testing.assert_close(causal_attention(q, k, v, above_the_diagonal),
                                   F.scaled_dot_product_attention(q, k, v, attn_mask=above_the_diagonal))


needs_native = pytest.mark.skipif(native.native_kernels() is None,
                                  reason=f"olmolab's C++ kernels are not built here: {native.why_not()}")


def sdpa_in_fp64(q, k, v):
    """SDPA computed in fp64 and rounded to fp32: the exact answer, for a kernel that computes in fp32."""
    return sdpa(q.double(), k.double(), v.double()).float()


@needs_native
@pytest.mark.parametrize(("T", "kv_heads", "head_dim"),
                         [(2, 4, 16), (7, 4, 16), (48, 4, 16), (49, 2, 16), (97, 1, 24), (332, 4, 64), (513, 2, 16)])
def test_tiles_give_sdpas_values_and_gradients(T, kv_heads, head_dim):
    """Lengths below, at and past one tile (48 queries) and past 512 keys, grouped queries, a head
    dimension that is not a multiple of the kernel's 8 lanes; against SDPA in fp64, to fp32 rounding."""
    q, k, v = qkv(T, kv_heads=kv_heads, head_dim=head_dim, batch=3)
    assert tiled_pays(q)
    torch.testing.assert_close(values_and_grads(tiled_causal_attention, q, k, v),
                               values_and_grads(sdpa_in_fp64, q, k, v), rtol=2e-5, atol=2e-5)


@needs_native
def test_tiles_take_any_layout():
    """The model's q, k, v are transposed views of (B, T, heads, hd) (above); a cache's are (B, heads, T, hd)."""
    q, k, v = (t.contiguous() for t in qkv(100, kv_heads=2))
    torch.testing.assert_close(values_and_grads(tiled_causal_attention, q, k, v),
                               values_and_grads(sdpa_in_fp64, q, k, v), rtol=2e-5, atol=2e-5)


@needs_native
def test_tiled_gradients_come_back_in_the_models_layout():
    """(B, heads, T, hd) views of (B, T, heads, hd) memory: what RoPE's backward and the qkv
    projection's read without a copy."""
    q, k, v = (t.requires_grad_() for t in qkv(64))
    out = tiled_causal_attention(q, k, v)
    out.sum().backward()
    for t in (out, q.grad, k.grad, v.grad):
        assert t.transpose(1, 2).is_contiguous()


@needs_native
def test_fp32_attention_takes_the_tiles_in_training_and_evaluation():
    q, k, v = (t.requires_grad_() for t in qkv(64))
    assert causal_attention(q, k, v).grad_fn.name() == "_TiledCausalAttentionBackward"
    with torch.no_grad():
        torch.testing.assert_close(causal_attention(q, k, v), sdpa_in_fp64(q, k, v), rtol=2e-5, atol=2e-5)


def test_the_tiles_take_plain_causal_fp32_attention_only():
    q = qkv(64)[0]
    assert not tiled_pays(q.bfloat16()), "bf16 has its own path (kept scores)"
    assert not tiled_pays(q, mask=torch.ones(2, 1, 64, 64, dtype=torch.bool)), "a mask: SDPA"
    assert not tiled_pays(q[:, :, :1]), "one query (a decode step)"
    assert tiled_pays(qkv(1024)[0]) == (native.native_kernels() is not None)
    assert not tiled_pays(qkv(1025)[0]), "longer: the flash kernel skips whole blocks of 512 keys, and is faster"


def test_without_the_cpp_kernels_fp32_attention_keeps_pytorchs(monkeypatch):
    """OLMOLAB_NATIVE_KERNELS=0, or no compiler: the registry's next paths, and why is said."""
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    native._build.cache_clear()
    try:
        assert native.native_kernels() is None and native.why_not() == f"{native.NATIVE_ENV}=0"
        q, k, v = (t.requires_grad_() for t in qkv(384))
        assert causal_attention(q, k, v).grad_fn.name() == "_HalvedCausalAttentionBackward"
    finally:
        monkeypatch.undo()
        native._build.cache_clear()
