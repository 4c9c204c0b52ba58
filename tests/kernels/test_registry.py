"""The registry: every fast path computes its op's plain formula where its test says it applies,
values and gradients; `using` scopes an implementation; decoding's matmuls equal F.linear."""

import pytest
import torch
import torch.nn.functional as F

from olmolab.kernels import KERNELS, decode_linear, kernel, using
from olmolab.kernels.cpu_matmul import onednn_linear_works
from olmolab.kernels.decode import DecodeLinear, decode_layout, one_row_linear


def inputs_for(name: str) -> tuple:
    """Inputs on which the op's fast paths apply on this machine (fp32 CPU, lengths that pay)."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if name == "linear":
        return rand(3, 5, 16), rand(24, 16) / 4
    if name == "rms_norm":
        return rand(3, 5, 16), rand(16).abs() + 0.5, 1e-6
    if name == "rotary":
        angles = torch.rand(5, 1, 4, generator=g) * 6
        return rand(2, 5, 3, 8), angles.cos(), angles.sin()
    if name == "swiglu":
        return (rand(3, 5, 32) * 3,)
    return tuple(rand(2, 384, 4, 16).transpose(1, 2) for _ in range(3))  # causal_attention


def with_grad(name: str, args: tuple) -> list:
    """Copies of the inputs, the differentiable ones requiring grad (RoPE's angle tables are not)."""
    differentiable = 1 if name == "rotary" else len(args)
    return [a.detach().clone().requires_grad_(i < differentiable) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)]


def values_and_grads(fn, args):
    out = fn(*args)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [a.grad for a in args if isinstance(a, torch.Tensor) and a.grad is not None]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_every_path_that_applies_computes_the_plain_formula(name):
    op, args = KERNELS[name], inputs_for(name)
    tried = 0
    expected = values_and_grads(op.plain, with_grad(name, args))
    for applies, implementation in op.paths:
        if not applies(*with_grad(name, args)):  # e.g. oneDNN on an Intel CPU, one row outside torch.compile
            continue
        tried += 1
        torch.testing.assert_close(values_and_grads(implementation, with_grad(name, args)), expected,
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values_and_grads(op, with_grad(name, args)), expected, rtol=1e-5, atol=1e-5)
    if name != "linear":  # the matmul library depends on the CPU's vendor
        assert tried, f"no fast path of {name} applies to the test's inputs"


def test_one_row_linear_is_f_linear():
    x, weight = torch.randn(1, 1, 16), torch.randn(24, 16)
    torch.testing.assert_close(one_row_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_using_scopes_an_implementation_and_restores_the_registrys():
    calls = []

    def recorded(x, weight):
        calls.append(x.shape)
        return F.linear(x, weight)

    with using("linear", recorded):
        assert kernel("linear") is recorded
        kernel("linear")(torch.randn(2, 4), torch.randn(3, 4))
        with using("linear", None):  # None keeps what is there
            assert kernel("linear") is recorded
    assert kernel("linear") is KERNELS["linear"] and calls == [(2, 4)]


def test_under_torch_compile_the_registrys_kernel_is_used_whatever_the_scope():
    weight = torch.randn(24, 16)
    step = torch.compile(lambda x: kernel("linear")(x, weight), fullgraph=True)
    with using("linear", lambda x, w: torch.zeros(())):
        torch.testing.assert_close(step(torch.randn(1, 16)).shape, torch.Size([1, 24]))


@pytest.mark.parametrize("layout", ["transposed", "onednn"])
def test_decode_linear_equals_f_linear_and_follows_in_place_updates(layout):
    if layout == "onednn" and not onednn_linear_works():
        pytest.skip("this torch build has no oneDNN linear")
    weight, other = torch.randn(24, 16), torch.randn(8, 16)
    x = torch.randn(2, 1, 16)
    decode = DecodeLinear([weight], layout, fallback=F.linear)
    torch.testing.assert_close(decode(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert torch.equal(decode(x[..., :16], other), F.linear(x, other))  # not prepared: the fallback
    with torch.no_grad():
        weight.mul_(2)  # an optimizer step between two generate calls
    torch.testing.assert_close(DecodeLinear([weight], layout, F.linear)(x, weight), F.linear(x, weight),
                               rtol=1e-5, atol=1e-5)


def test_one_bf16_row_on_one_thread_is_multiplied_by_the_packed_weight(monkeypatch):
    if not onednn_linear_works(torch.bfloat16):
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert decode_layout(1, torch.float32) == "transposed"
    assert decode_layout(1, torch.bfloat16) == "onednn"
    assert decode_layout(8, torch.bfloat16) == "onednn"


def test_decode_linear_leaves_other_devices_and_dtypes_to_the_registry():
    assert decode_linear([torch.randn(8, 4, dtype=torch.float64)], batch_size=1) is None
