"""trainer.precision: what auto chooses where, and bf16 training with fp32 master weights that
tracks fp32 training."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from olmolab.config import load_run_config
from olmolab.errors import UserError
from olmolab.kernels import cpu_matmul
from olmolab.precision import resolve_precision
from olmolab.revisions import list_revisions
from olmolab.train.trainer import Trainer

AMX = {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}
AVX512_BF16 = {"avx512_bf16", "avx512f"}


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has these feature flags (and lift the suite's pinning of auto to fp32)."""

    def pretend(flags):
        monkeypatch.delenv(cpu_matmul.CPU_BF16_ENV, raising=False)
        monkeypatch.setattr(cpu_matmul, "cpu_flags", lambda: frozenset(flags))

    return pretend


def test_auto_is_bf16_on_a_cpu_with_a_bf16_unit_and_fp32_elsewhere_saying_why(cpu_with):
    cpu_with(AMX)
    chosen = resolve_precision("auto", "cpu")
    assert (chosen.name, chosen.dtype, chosen.reason) == ("bf16", torch.bfloat16, "auto: this CPU has AMX")
    cpu_with(AVX512_BF16)
    assert resolve_precision("auto", "cpu").reason == "auto: this CPU has AVX512-BF16"
    cpu_with({"avx2", "fma"})
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "fp32" and "no bf16 unit" in chosen.reason and "slower than fp32" in chosen.reason


def test_asking_for_bf16_or_fp32_is_obeyed_and_bf16_without_a_unit_says_so(cpu_with):
    cpu_with({"avx2"})
    assert resolve_precision("fp32", "cpu").name == "fp32"
    chosen = resolve_precision("bf16", "cpu")
    assert chosen.name == "bf16" and chosen.reason.startswith("asked for, though this CPU has no bf16 unit")
    with pytest.raises(UserError, match=r"trainer.precision='fp16': expected one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu", key="trainer.precision")


def test_the_suite_pins_auto_to_fp32_so_results_do_not_depend_on_the_machine():
    assert resolve_precision("auto", "cpu").name == "fp32"


def test_bf16_training_computes_in_bf16_on_fp32_master_weights(tiny_run, tmp_path, capsys):
    path, _ = tiny_run(max_steps=2, precision="bf16", progress=True)
    trainer = Trainer(load_run_config(path))
    seen = []
    trainer.raw_model.blocks[0].register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    trainer.fit()

    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}, "activations flow in bf16 between blocks"
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert p.dtype == torch.float32, "the optimizer updates fp32 master weights"
            assert {t.dtype for t in trainer.optimizer.state[p].values() if t.dim()} == {torch.float32}
    saved = load_file(list_revisions(tmp_path / "run")[-1].path / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}, "revisions hold the fp32 master weights"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trainer"]["precision"] == "bf16"
    assert "computing in bf16 (asked for" in capsys.readouterr().err


def test_auto_precision_is_written_as_what_it_chose(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=1)  # auto, pinned to fp32 in the suite
    Trainer(load_run_config(path)).fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trainer"]["precision"] == "fp32"


def markov_tokens(path, n_tokens, seed, vocab=64, choices=2):
    """A token stream with structure to learn: each token is followed by one of `choices` tokens of
    its own (fixed by the vocabulary seed, 0), picked at random (by `seed`)."""
    successors = np.random.default_rng(0).integers(2, vocab, (vocab, choices))
    picks = np.random.default_rng(seed).integers(0, choices, n_tokens)
    tokens = np.empty(n_tokens, dtype=np.uint16)
    tokens[0] = 2
    for i in range(1, n_tokens):
        tokens[i] = successors[tokens[i - 1], picks[i]]
    tokens.tofile(path)
    return str(path)


def test_a_bf16_run_ends_within_one_percent_of_the_fp32_runs_validation_loss(tiny_run, tmp_path):
    """The issue's quality bar, on a task where the loss falls far (from log 400 towards log 2);
    bench/bf16_quality.py runs the same comparison on the quickstart config for 300 steps.

    At a step size of 3e-3 the runs are not chaotic: at 1e-2 two bf16 attention kernels of the
    same accuracy (tests/kernels/test_bf16.py) ended 1.2% apart, either side of fp32, so there
    the bar would test which rounding a kernel happens to make, not whether bf16 tracks fp32."""
    final = {}
    for precision in ("fp32", "bf16"):
        path, raw = tiny_run(f"{precision}.yaml", run_dir=str(tmp_path / precision), precision=precision,
                             max_steps=60, save_interval=None, global_batch_size=8, micro_batch_size=8)
        raw["optim"]["lr"] = 3e-3
        raw["data"]["paths"] = [markov_tokens(tmp_path / "train.npy", 64 * 32 * 8, seed=1)]
        raw["data"]["validation_paths"] = [markov_tokens(tmp_path / "valid.npy", 16 * 32, seed=2)]
        path.write_text(yaml.safe_dump(raw))
        final[precision] = Trainer(load_run_config(path)).fit()["eval/validation/CrossEntropyLoss"]
    assert final["fp32"] < 2.0, "the run learned the structure (log 64 = 4.2 knows the vocabulary only)"
    assert abs(final["bf16"] - final["fp32"]) < 0.01 * final["fp32"], final


def test_a_lone_process_gets_the_fp32_gradients_that_an_fp32_reduction_would_give():
    """Alone, FSDP2's gradient "reduction" is a copy: the bf16 gradients cast to fp32 after it
    (cheaper, what `parallelize` sets up for one process) are those cast before it (what several
    processes do, to sum in fp32), bit for bit."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from olmolab import ModelConfig, Transformer
    from olmolab.train import distributed as dist_utils

    was_distributed = dist_utils.is_distributed()
    try:
        model = Transformer(ModelConfig.preset("olmo2-tiny"))
        ours = dist_utils.parallelize(copy.deepcopy(model), strategy="ddp", device=torch.device("cpu"), bf16=True,
                                      compile_blocks=False, activation_checkpointing=False)
        fp32_reduced = copy.deepcopy(model)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for module in [*fp32_reduced.blocks, fp32_reduced]:
            fully_shard(module, mp_policy=policy, reshard_after_forward=False)
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        for m in (ours, fp32_reduced):
            m(ids[:, :-1], ids[:, 1:]).loss.backward()
        for (name, a), (_, b) in zip(ours.named_parameters(), fp32_reduced.named_parameters(), strict=True):
            assert a.grad.dtype == torch.float32, name
            assert torch.equal(a.grad.to_local(), b.grad.to_local()), name
    finally:
        if not was_distributed:
            dist.destroy_process_group()


def test_compiled_training_runs_the_losss_bf16_softmax_by_its_compiled_kernel_and_eager_does_not(monkeypatch):
    """`trainer.compile` compiles the blocks (`parallelize`) and lets the loss use its compiled
    kernel over each chunk's bf16 logits; an eager model keeps the eager softmax."""
    from olmolab import ModelConfig, Transformer
    from olmolab.model import loss as loss_module
    from olmolab.train import distributed as dist_utils

    calls = []
    real_kernel = loss_module.compiled_softmax_rows_
    monkeypatch.setattr(loss_module, "compiled_softmax_rows_", lambda logits: calls.append(logits.shape) or real_kernel(logits))
    config = ModelConfig.preset("olmo2-tiny")
    hidden = torch.randn(2, 16, config.d_model, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    bf16_model, losses = Transformer(config).bfloat16(), {}
    for compiled in (False, True):
        model = dist_utils.parallelize(copy.deepcopy(bf16_model), strategy="ddp", device=torch.device("cpu"), bf16=False,
                                       compile_blocks=compiled, activation_checkpointing=False)
        assert model.compiled_loss is compiled
        losses[compiled] = model.loss(hidden, labels).loss
        assert len(calls) == compiled, calls  # the blocks are compiled lazily: not run here
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=0)
