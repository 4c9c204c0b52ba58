"""ModelConfig: official presets have the published sizes; bad configs say what to change."""

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.errors import UserError

# Parameter counts of the released checkpoints (their Hugging Face model pages / safetensors).
PUBLISHED_PARAMS = {
    "olmo-1b": 1_176_764_416,     # allenai/OLMo-1B-hf (tied embeddings)
    "olmo-7b": 6_888_095_744,     # allenai/OLMo-7B-hf
    "olmo2-1b": 1_484_916_736,    # allenai/OLMo-2-0425-1B
    "olmo2-7b": 7_298_617_344,    # allenai/OLMo-2-1124-7B
    "olmo2-13b": 13_716_198_400,  # allenai/OLMo-2-1124-13B
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_official_preset_has_the_published_parameter_count(name):
    config = ModelConfig.preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    assert model.num_params() == PUBLISHED_PARAMS[name]
    assert config.num_params() == PUBLISHED_PARAMS[name]


def test_official_presets_carry_the_published_dimensions():
    olmo2_7b = ModelConfig.preset("olmo2-7b")
    assert (olmo2_7b.d_model, olmo2_7b.n_layers, olmo2_7b.n_heads, olmo2_7b.mlp_hidden_size) == (4096, 32, 32, 11008)
    assert (olmo2_7b.embedding_size, olmo2_7b.rope_theta, olmo2_7b.norm_eps) == (100352, 500_000.0, 1e-6)
    assert (olmo2_7b.eos_token_id, olmo2_7b.pad_token_id) == (100257, 100277)
    olmo_1b = ModelConfig.preset("olmo-1b")
    assert olmo_1b.weight_tying and olmo_1b.norm == "layernorm" and olmo_1b.norm_placement == "pre"
    assert (olmo_1b.embedding_size, olmo_1b.rope_theta, olmo_1b.eos_token_id) == (50304, 10_000.0, 50279)


@pytest.mark.parametrize("name", ["olmo-tiny", "olmo2-tiny", "olmo2-20m", "olmo2-60m"])
def test_small_presets_count_what_the_model_holds(name):
    config = ModelConfig.preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    assert model.num_params() == config.num_params()
    assert model.num_params(include_embedding=False) == config.num_non_embedding_params()


def test_cpu_sizes_are_about_20m_and_60m():
    assert 15e6 < ModelConfig.preset("olmo2-20m").num_params() < 25e6
    assert 50e6 < ModelConfig.preset("olmo2-60m").num_params() < 70e6


def test_flops_per_token_counts_matmuls_lm_head_and_attention():
    c = ModelConfig.preset("olmo2-7b")
    matmul_params = c.num_non_embedding_params() + c.embedding_size * c.d_model
    assert c.flops_per_token(4096) == 6 * matmul_params + 12 * c.n_layers * c.d_model * 4096
    # The tied LM head is still a matmul.
    tied = ModelConfig.preset("olmo-1b")
    assert tied.flops_per_token(2048) > 6 * tied.num_params()


def test_heads_must_divide_d_model():
    with pytest.raises(UserError, match=r"d_model=100 is not divisible by n_heads=3.*choose n_heads among"):
        ModelConfig.preset("olmo2-tiny", d_model=100, n_heads=3)


def test_kv_heads_must_divide_heads():
    with pytest.raises(UserError, match=r"n_heads=4 is not divisible by n_kv_heads=3.*\[1, 2, 4\]"):
        ModelConfig.preset("olmo2-tiny", n_kv_heads=3)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(UserError, match=r"unknown model preset 'olmo3-7b'.*olmo2-7b"):
        ModelConfig.preset("olmo3-7b")


def test_unknown_config_key_lists_the_known_ones():
    with pytest.raises(UserError, match=r"model: unknown key\(s\) \['dmodel'\].*d_model"):
        ModelConfig.from_dict({"dmodel": 64})


def test_config_round_trips_through_a_dict():
    config = ModelConfig.preset("olmo-tiny", clip_qkv=8.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
