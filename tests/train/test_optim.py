"""AdamW parameter groups and LR schedules, as OLMo defines them."""

import math

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.train.optim import (
    OptimConfig,
    SchedulerConfig,
    build_optimizer,
    clipped_step,
    gradient_norm,
    lr_at,
    param_groups,
)


def test_embeddings_are_never_decayed_and_norms_follow_the_flag():
    model = Transformer(ModelConfig.preset("olmo2-tiny"))

    def ids(group):
        return {id(p) for p in group["params"]}

    decay, no_decay = param_groups(model, OptimConfig(decay_norm_and_bias=True))
    assert id(model.embeddings.weight) in ids(no_decay) and no_decay["weight_decay"] == 0
    assert {id(model.norm.weight), id(model.lm_head.weight)} <= ids(decay)
    _, no_decay_olmo1 = param_groups(model, OptimConfig(decay_norm_and_bias=False))
    assert id(model.norm.weight) in ids(no_decay_olmo1)


def test_tied_weights_are_optimised_once():
    model = Transformer(ModelConfig.preset("olmo-tiny", weight_tying=True))
    groups = param_groups(model, OptimConfig())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})


def stepped_twice(fused: bool, max_norm: float, ours: bool) -> list[torch.Tensor]:
    """A tiny model's weights after two AdamW steps on the same gradients, clipped to `max_norm`
    by `clipped_step` (ours) or by torch's clip_grad_norm_ then step."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny"))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, fused=fused))
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    parameters = list(model.parameters())
    for _ in range(2):
        model(ids, ids.roll(-1, dims=1)).loss.backward()
        if ours:
            clipped_step(optimizer, parameters, max_norm, gradient_norm(parameters))
        else:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
            optimizer.step()
        assert not hasattr(optimizer, "grad_scale")  # the fused kernel's factor is this step's only
        optimizer.zero_grad(set_to_none=True)
    return [p.detach() for p in parameters]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.1, math.inf])
def test_a_clipped_step_is_torchs_clip_grad_norm_then_step(fused, max_norm):
    """In a fused AdamW the clipping factor is applied inside the kernel (`grad_scale`), an
    unfused one scales the gradients first: either way the weights of clip_grad_norm_ + step."""
    torch.testing.assert_close(stepped_twice(fused, max_norm, ours=True), stepped_twice(fused, max_norm, ours=False),
                               rtol=1e-5, atol=1e-6)  # lr 1e-2: updates equal to ~1e-4 of a step
    assert stepped_twice(fused, 0.1, ours=True)[0].ne(stepped_twice(fused, math.inf, ours=True)[0]).any()


def test_warmup_is_linear_from_warmup_min_lr():
    sc = SchedulerConfig(name="cosine", t_warmup=10, warmup_min_lr=0.0)
    assert lr_at(0, 1.0, sc, 100) == 0.0
    assert lr_at(5, 1.0, sc, 100) == pytest.approx(0.5)


def test_cosine_decays_to_alpha_f_times_peak():
    sc = SchedulerConfig(name="cosine", t_warmup=10, alpha_f=0.1)
    assert lr_at(10, 1.0, sc, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, sc, 110) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert lr_at(110, 1.0, sc, 110) == pytest.approx(0.1)
    assert lr_at(500, 1.0, sc, 110) == pytest.approx(0.1)


def test_annealing_is_linear_to_zero_over_the_token_budget():
    # OLMo 2 stage 2: from the stage-1 LR to zero, linearly, over e.g. 50B tokens.
    sc = SchedulerConfig(name="linear", units="tokens", t_warmup=0, alpha_f=0.0)
    budget = 50e9
    assert lr_at(0, 6.1499e-5, sc, budget) == pytest.approx(6.1499e-5)
    assert lr_at(budget / 2, 6.1499e-5, sc, budget) == pytest.approx(6.1499e-5 / 2)
    assert lr_at(budget, 6.1499e-5, sc, budget) == 0.0


def test_wsd_holds_then_decays_over_the_last_fraction():
    sc = SchedulerConfig(name="wsd", t_warmup=0, alpha_f=0.0, decay_fraction=0.2)
    assert lr_at(79, 1.0, sc, 100) == 1.0
    assert lr_at(90, 1.0, sc, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, sc, 100) == 0.0


def test_constant_stays_at_peak_after_warmup():
    assert lr_at(10_000, 3e-4, SchedulerConfig(name="constant", t_warmup=5), 10) == 3e-4
