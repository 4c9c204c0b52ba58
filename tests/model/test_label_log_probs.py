import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.model import loss as loss_module
from olmolab.model.label_log_probs import linear_label_log_probs


def plain_label_log_probs(hidden, weight, labels):
    return (hidden @ weight.T).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)


def test_label_log_probs_and_their_gradients_match_the_plain_formula(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 300)  # several uneven chunks
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 300, (40,))
    upstream = torch.randn(40, dtype=torch.float64)  # each token's own upstream gradient
    ref = plain_label_log_probs(hidden, weight, labels)
    ref.backward(upstream)
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    fused = linear_label_log_probs(hidden, weight, labels)
    fused.backward(upstream)
    exact = dict(rtol=1e-12, atol=1e-12)  # fp64 throughout
    torch.testing.assert_close(fused, ref, **exact)
    torch.testing.assert_close(hidden.grad, ref_grads[0], **exact)
    torch.testing.assert_close(weight.grad, ref_grads[1], **exact)


def test_label_log_probs_are_exact_for_labels_whose_probability_underflows():
    hidden = (torch.randn(24, 16, dtype=torch.float64) * 30).requires_grad_()
    weight = (torch.randn(200, 16, dtype=torch.float64) * 30).requires_grad_()
    labels = (hidden @ weight.T).argmin(dim=-1)  # the least likely: exp underflows to 0
    ref = plain_label_log_probs(hidden, weight, labels)
    assert ref.max() < -1000
    torch.testing.assert_close(linear_label_log_probs(hidden, weight, labels), ref, rtol=1e-12, atol=1e-12)


def test_label_log_probs_without_a_backward_are_the_same_values(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 5 * 300)  # one reused chunk buffer
    hidden, weight = torch.randn(23, 16), torch.randn(300, 16)
    labels = torch.randint(0, 300, (23,))
    with torch.no_grad():
        torch.testing.assert_close(linear_label_log_probs(hidden, weight, labels),
                                   plain_label_log_probs(hidden, weight, labels))


def test_label_log_probs_of_bf16_inputs_match_the_fp64_formula_to_bf16_rounding(monkeypatch):
    """Chunks of 300 rows, the last one short (on a CPU the input gradient's bf16 products go in
    pieces of 256 rows, the weight's gradient is summed by the matmul in bf16)."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 300 * 400)
    hidden = torch.randn(700, 32).bfloat16().requires_grad_()
    weight = torch.randn(400, 32).bfloat16().requires_grad_()
    labels = torch.randint(0, 400, (700,))
    upstream = torch.randn(700)
    fused = linear_label_log_probs(hidden, weight, labels)
    fused.backward(upstream)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = plain_label_log_probs(h64, w64, labels)
    ref.backward(upstream.double())
    assert fused.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused.double(), ref, rtol=0.02, atol=0.05)
    for got, want in ((hidden.grad, h64.grad), (weight.grad, w64.grad)):
        assert (got.double() - want).norm() < 4 * 2.0**-8 * want.norm()  # four of bf16's roundings


def test_a_second_backward_is_refused():
    hidden = torch.randn(4, 8, requires_grad=True)
    out = linear_label_log_probs(hidden, torch.randn(20, 8), torch.tensor([1, 2, 3, 4])).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        out.backward()


def test_model_label_log_probs_are_the_log_softmax_of_its_logits_at_the_labels():
    model = Transformer(ModelConfig.preset("olmo2-tiny")).double()  # fp64: the two paths agree to ~1e-12
    ids = torch.randint(0, 500, (2, 9))
    labels = torch.randint(0, 500, (2, 9))
    labels[0, :4] = labels[1, 7:] = -100
    expected = model(ids).log_softmax(-1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
    expected = expected.masked_fill(labels == -100, 0.0)
    got = model(ids, labels, label_log_probs=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    weights = torch.randn(2, 9, dtype=torch.float64)
    (got * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (expected * weights).sum().backward()
    for got_grad, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(got_grad, p.grad, rtol=1e-10, atol=1e-10)
