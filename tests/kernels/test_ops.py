"""The registry's RMSNorm, RoPE and SwiGLU (hand-written backward passes where one will run)
equal autograd's composites, and its `linear` equals F.linear: values and gradients."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from olmolab.kernels import cpu_matmul, kernel
from olmolab.kernels.cpu_matmul import cpu_matmul_library, onednn_linear_works

linear, rms_norm, rotary, swiglu = (kernel(name) for name in ("linear", "rms_norm", "rotary", "swiglu"))


def composite_rotary(x, cos, sin):
    """transformers' form: x * [cos, cos] + rotate_half(x) * [sin, sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def values_and_grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [t.grad for t in inputs if t.requires_grad]


def test_rms_norm_matches_f_rms_norm_on_a_strided_view():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 5, 3 * 16, generator=g)
    weight = torch.rand(16, generator=g) + 0.5
    view_of = lambda fn: lambda t, w: fn(t[..., 16:32], w)  # noqa: E731  (like q out of a fused projection)
    ours = values_and_grads(view_of(lambda t, w: rms_norm(t, w, 1e-6)), qkv, weight)
    theirs = values_and_grads(view_of(lambda t, w: F.rms_norm(t, (16,), w, 1e-6)), qkv, weight)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_a_residual_is_the_residual_plus_the_norm(dtype):
    """OLMo 2's post-norm add in the norm's kernel: residual + norm(x), values and gradients (in
    bf16 rounded as the two steps round: the norm to bf16, then the sum)."""
    g = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(3, 5, 16, generator=g).to(dtype) for _ in range(2))
    weight = torch.rand(16, generator=g) + 0.5
    ours = values_and_grads(lambda t, w, r: rms_norm(t, w, 1e-6, r), x, weight, residual)
    theirs = values_and_grads(lambda t, w, r: r + F.rms_norm(t.float(), (16,), w, 1e-6).to(dtype), x, weight, residual)
    assert ours[0].dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rotary_matches_rotate_half_and_is_a_rotation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 8, generator=g)
    angles = torch.rand(7, 1, 4, generator=g) * 6
    cos, sin = angles.cos(), angles.sin()
    ours = values_and_grads(lambda t: rotary(t, cos, sin), x)
    theirs = values_and_grads(lambda t: composite_rotary(t, cos, sin), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # lengths kept


def test_swiglu_matches_silu_gate_times_up_and_writes_one_gradient_buffer():
    x = torch.randn(3, 5, 2 * 16, generator=torch.Generator().manual_seed(0)) * 3

    def composite(t):
        up, gate = t.chunk(2, dim=-1)
        return F.silu(gate) * up

    torch.testing.assert_close(values_and_grads(swiglu, x), values_and_grads(composite, x), rtol=1e-6, atol=1e-6)
    out = swiglu(x.requires_grad_())
    assert out.grad_fn.name() == "_SwiGLUBackward"  # not autograd's split-then-concatenate


def test_without_autograd_the_plain_formulas_give_the_same_values():
    x = torch.randn(4, 3, 2, 8, requires_grad=True)
    angles = torch.rand(3, 1, 4)
    weight = torch.rand(8, requires_grad=True)
    for fn in (lambda t: rms_norm(t, weight, 1e-6), lambda t: rotary(t, angles.cos(), angles.sin()), swiglu):
        with torch.no_grad():
            plain = fn(x)
        torch.testing.assert_close(plain, fn(x).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["rms_norm", "rotary"])
def test_bf16_inputs_are_computed_in_fp32_and_returned_in_bf16(op):
    x = torch.randn(4, 2, 8)
    if op == "rms_norm":
        fn = lambda t: rms_norm(t, torch.ones(8), 1e-6)  # noqa: E731
    else:
        angles = torch.rand(4, 1, 4)
        fn = lambda t: rotary(t, angles.cos(), angles.sin())  # noqa: E731
    low = fn(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), fn(x.bfloat16().float()).bfloat16().float())


def test_compiled_blocks_train_like_eager_ones():
    """Under torch.compile the ops take their plain formulas (for inductor to fuse): same loss, same gradients."""
    from olmolab import ModelConfig, Transformer

    torch.manual_seed(0)
    eager = Transformer(ModelConfig.preset("olmo2-tiny"))
    compiled = Transformer(ModelConfig.preset("olmo2-tiny"))
    compiled.load_state_dict(eager.state_dict())
    for block in compiled.blocks:
        block.compile()
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    for model in (eager, compiled):
        model(ids, ids.roll(-1, dims=1), z_loss_multiplier=1e-4).loss.backward()
    torch.testing.assert_close(
        {n: p.grad for n, p in compiled.named_parameters()}, {n: p.grad for n, p in eager.named_parameters()},
        rtol=1e-4, atol=1e-6,
    )


@pytest.fixture
def matmul_library(monkeypatch):
    """Sets the CPU matmul library for one test (the choice is cached per process)."""
    def choose(library: str | None = None, vendor: str | None = None):
        monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: vendor)
        if library is None:
            monkeypatch.delenv(cpu_matmul.CPU_MATMUL_ENV, raising=False)
        else:
            monkeypatch.setenv(cpu_matmul.CPU_MATMUL_ENV, library)
        cpu_matmul_library.cache_clear()
    yield choose
    cpu_matmul_library.cache_clear()


@pytest.mark.skipif(not onednn_linear_works(), reason="this torch build has no oneDNN linear")
def test_linear_by_onednn_gives_f_linears_values_and_gradients(matmul_library):
    matmul_library("onednn")
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(3, 5, 16, generator=g), torch.randn(24, 16, generator=g) / 4
    out = linear(x.requires_grad_(), weight)
    assert out.grad_fn.name() == "_OneDNNLinearBackward"  # the oneDNN path, not F.linear
    torch.testing.assert_close(values_and_grads(linear, x, weight), values_and_grads(F.linear, x, weight),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not onednn_linear_works(), reason="this torch build has no oneDNN linear")
def test_matmul_library_is_onednn_on_amd_and_mkl_on_intel(matmul_library):
    matmul_library(vendor="AuthenticAMD")
    assert cpu_matmul_library() == "onednn"
    matmul_library(vendor="GenuineIntel")
    assert cpu_matmul_library() == "mkl"
    x = torch.randn(4, 16, requires_grad=True)
    assert linear(x, torch.randn(8, 16)).grad_fn.name() != "_OneDNNLinearBackward"
    matmul_library(vendor=None)  # no /proc/cpuinfo (macOS, Windows): what F.linear does
    assert cpu_matmul_library() == "mkl"


@pytest.mark.skipif("avx2" not in cpu_matmul.cpu_flags() or not onednn_linear_works(),
                    reason="needs an x86 CPU with AVX2 and a torch build with oneDNN")
def test_an_avx2_cpu_keeps_onednn_for_fp32_without_its_bf16_packing():
    """An AMD EPYC of the Zen 2 or 3 generation has AVX2 and no AVX-512: oneDNN multiplies fp32
    there but cannot pack bf16 weights. oneDNN held to AVX2 here stands for that CPU (it must be
    set before oneDNN starts, hence a fresh process)."""
    script = (
        "import torch\n"
        "from olmolab.kernels import cpu_matmul\n"
        "from olmolab.kernels.decode import decode_layout\n"
        "cpu_matmul.cpu_vendor = lambda: 'AuthenticAMD'\n"
        "print(cpu_matmul.onednn_linear_works(torch.float32), cpu_matmul.onednn_linear_works(torch.bfloat16),\n"
        "      cpu_matmul.cpu_matmul_library(), decode_layout(8, torch.float32), decode_layout(8, torch.bfloat16))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop(cpu_matmul.CPU_MATMUL_ENV, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "onednn", "onednn", "None"]


def test_matmul_library_can_be_set_and_a_bad_setting_says_what_is_allowed(matmul_library):
    matmul_library("mkl", vendor="AuthenticAMD")
    assert cpu_matmul_library() == "mkl"
    matmul_library("openblas")
    with pytest.raises(ValueError, match="OLMOLAB_CPU_MATMUL='openblas': expected 'onednn' or 'mkl'"):
        cpu_matmul_library()


def test_linear_keeps_f_linear_for_bf16():
    x, weight = torch.randn(3, 16).bfloat16(), torch.randn(24, 16).bfloat16()
    assert torch.equal(linear(x, weight), F.linear(x, weight))
