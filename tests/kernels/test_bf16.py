"""The kernels' bf16 paths (what `precision: bf16` trains with) against fp64 references.

Each op gets bf16 inputs and a bf16 output gradient, as in a bf16 training step, and must come
within bf16's rounding of the formula computed in fp64 from the same (bf16-representable)
values: values and every gradient. "Within rounding" is measured against the error of
autograd's composite run in bf16, which is what the op would cost without the hand-written
kernel: ours may not be worse than that by more than a little.
"""

import pytest
import torch
import torch.nn.functional as F

from olmolab.kernels import autograd, kernel, plain
from olmolab.kernels.causal_attention import halved_causal_attention, kept_scores_causal_attention
from olmolab.model.loss import cross_entropy_loss, linear_cross_entropy

BF16_EPS = 2.0**-8  # bf16's unit roundoff: 8 significant bits


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def values_and_grads(fn, inputs, grad_out_seed=1):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed))
    out.backward(grad_out.to(out.dtype))
    return [out.detach(), *(t.grad for t in inputs if t.requires_grad)]


def errors(fn, inputs, reference):
    """Relative errors of `fn` (values, then gradients) on bf16 inputs, against `reference` in fp64."""
    low = values_and_grads(fn, [t.bfloat16() if t.is_floating_point() else t for t in inputs])
    high = values_and_grads(reference, [t.bfloat16().double() if t.is_floating_point() else t for t in inputs])
    assert all(t.dtype == torch.bfloat16 for t in low[:1] + low[1:2]), "a bf16 path returns bf16"
    return [rel_error(a, b) for a, b in zip(low, high, strict=True)]


def rms_inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 33, 96, generator=g) * 3, torch.rand(96, generator=g) + 0.5]


def rotary_inputs():
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(33, 1, 16, generator=g) * 6
    return [torch.randn(4, 33, 3, 32, generator=g)], angles


def rotate_half_in_input_dtype(x, cos, sin):
    """transformers' RoPE, computed in x's dtype: x * [cos, cos] + rotate_half(x) * [sin, sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = (torch.cat([t, t], dim=-1).to(x.dtype) for t in (cos, sin))
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@pytest.mark.parametrize("op", ["rms_norm", "rotary", "swiglu"])
def test_hand_written_ops_in_bf16_are_as_accurate_as_the_bf16_composites(op):
    if op == "rms_norm":
        inputs = rms_inputs()
        ours = lambda x, w: autograd.rms_norm(x, w, 1e-6)  # noqa: E731
        composite = lambda x, w: F.rms_norm(x, (96,), w.to(x.dtype), 1e-6)  # noqa: E731
    elif op == "rotary":
        inputs, angles = rotary_inputs()
        cos, sin = angles.cos(), angles.sin()
        ours = lambda x: autograd.rotary(x, cos, sin)  # noqa: E731
        composite = lambda x: rotate_half_in_input_dtype(x, cos, sin)  # noqa: E731
    else:
        inputs = [torch.randn(4, 33, 2 * 64, generator=torch.Generator().manual_seed(0)) * 3]
        ours = autograd.swiglu
        composite = plain.swiglu
    reference = composite  # the formula, evaluated in fp64
    ours_errors = errors(ours, inputs, reference)
    composite_errors = errors(composite, inputs, reference)
    for name, mine, theirs in zip(["value", *[f"grad {i}" for i in range(len(inputs))]], ours_errors,
                                  composite_errors, strict=True):
        assert mine < 4 * BF16_EPS, f"{op} {name}: relative error {mine:.2e} is beyond bf16 rounding"
        assert mine <= 1.25 * theirs + BF16_EPS / 4, f"{op} {name}: {mine:.2e} vs the composite's {theirs:.2e}"


def test_the_registry_routes_bf16_training_ops_to_the_hand_written_backwards():
    x, w = (t.bfloat16() for t in rms_inputs())
    assert kernel("rms_norm")(x.requires_grad_(), w, 1e-6).grad_fn.name() == "_RMSNormBackward"
    assert kernel("swiglu")(torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)).grad_fn.name() == "_SwiGLUBackward"


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_halved_causal_attention_in_bf16_matches_fp64_attention(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 64, 16, generator=g)
    k, v = (torch.randn(2, kv_heads, 64, 16, generator=g) for _ in range(2))

    def reference(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads)

    ours = errors(halved_causal_attention, [q, k, v], reference)
    sdpa = errors(reference, [q, k, v], reference)
    for mine, theirs in zip(ours, sdpa, strict=True):
        assert mine < 4 * BF16_EPS
        assert mine <= 1.5 * theirs + BF16_EPS / 4


@pytest.mark.parametrize("logit_scale", [1.0, 4.0])
@pytest.mark.parametrize("T", [64, 300])  # one band of queries, and five (key and value gradients summed over them)
def test_kept_scores_attention_in_bf16_is_as_accurate_as_the_flash_kernel(logit_scale, T):
    """Scores in fp32, probabilities kept in bf16: about the flash kernel's errors (within half
    again), also with logits four times as large (scores rounded to bf16 before the softmax would
    cost four times the flash kernel's error there)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, T, 64, generator=g) for _ in range(3))
    q, k = q * logit_scale**0.5, k * logit_scale**0.5

    def reference(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    ours = errors(kept_scores_causal_attention, [q, k, v], reference)
    flash = errors(reference, [q, k, v], reference)
    for name, mine, theirs in zip(["value", "grad q", "grad k", "grad v"], ours, flash, strict=True):
        assert mine < 4 * BF16_EPS, f"{name}: relative error {mine:.2e}"
        assert mine <= 1.5 * theirs, f"{name}: {mine:.2e} vs the flash kernel's {theirs:.2e}"


def test_fused_loss_in_bf16_matches_the_fp64_loss_and_gradients():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 32, generator=g), torch.randn(300, 32, generator=g) * 0.3
    labels = torch.randint(0, 300, (40,), generator=g)
    labels[::7] = -100

    def fused(h, w):
        return linear_cross_entropy(h, w, labels, z_loss_multiplier=1e-4).loss

    def reference(h, w):
        return cross_entropy_loss(h @ w.T, labels, z_loss_multiplier=1e-4).loss

    low = values_and_grads(fused, [hidden.bfloat16(), weight.bfloat16()])
    high = values_and_grads(reference, [hidden.bfloat16().double(), weight.bfloat16().double()])
    assert low[0].dtype == torch.float32, "the loss is accumulated and returned in fp32"
    assert low[1].dtype == low[2].dtype == torch.bfloat16
    assert abs(low[0].item() - high[0].item()) < 4 * BF16_EPS * abs(high[0].item())
    for got, want in zip(low[1:], high[1:], strict=True):
        assert rel_error(got, want) < 4 * BF16_EPS
