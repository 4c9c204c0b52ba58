"""Parity with transformers: our export loads natively and all three models agree in fp32."""

import json

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.convert import hf
from olmolab.errors import UserError

transformers = pytest.importorskip("transformers")

CASES = {
    "olmo2": dict(name="olmo2-tiny", n_kv_heads=4),
    "olmo2-gqa": dict(name="olmo2-tiny", n_kv_heads=2),
    "olmo2-mqa": dict(name="olmo2-tiny", n_kv_heads=1),
    "olmo1-tied": dict(name="olmo-tiny", n_kv_heads=4, weight_tying=True),
    "olmo1-gqa-untied-clip": dict(name="olmo-tiny", n_kv_heads=2, weight_tying=False, clip_qkv=0.05),
}


def random_model(name, **overrides):
    model = Transformer(ModelConfig.preset(name, **overrides)).eval()
    with torch.no_grad():  # norms away from 1, so a mis-mapped norm weight cannot hide
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_on_the_export_and_after_reimport(case, tmp_path):
    overrides = dict(CASES[case])
    model = random_model(overrides.pop("name"), **overrides)
    hf.export(model, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected_class = "Olmo2ForCausalLM" if model.config.family == "olmo2" else "OlmoForCausalLM"
    assert type(theirs).__name__ == expected_class
    reimported = hf.load(tmp_path).eval()

    ids = torch.randint(0, model.config.vocab_size, (2, 33))
    with torch.no_grad():
        ours, hf_logits, again = model(ids), theirs(ids).logits, reimported(ids)
    torch.testing.assert_close(hf_logits, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, ours, atol=0, rtol=0)
    assert reimported.config == model.config.replace(vocab_size=model.config.embedding_size)


def test_exported_config_carries_olmo2_hyperparameters(tmp_path):
    hf.export(random_model("olmo2-tiny", rope_theta=123456.0), tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "olmo2"
    assert config.rope_parameters["rope_theta"] == 123456.0
    assert config.rms_norm_eps == 1e-6 and config.tie_word_embeddings is False


def test_a_checkpoint_saved_by_transformers_loads_and_matches(tmp_path):
    # What a real OLMo 2 directory on disk looks like: written by transformers' own save_pretrained.
    config = transformers.Olmo2Config(
        vocab_size=384, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=128, rope_theta=500000.0, rms_norm_eps=1e-6,
        pad_token_id=1, eos_token_id=0,
    )
    theirs = transformers.Olmo2ForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = hf.load(tmp_path).eval()
    ids = torch.randint(0, 384, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


def test_olmo1_checkpoint_in_sharded_safetensors_loads(tmp_path):
    config = transformers.OlmoConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        clip_qkv=8.0, tie_word_embeddings=False, pad_token_id=1, eos_token_id=0,
    )
    theirs = transformers.OlmoForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = hf.load(tmp_path).eval()
    assert ours.config.clip_qkv == 8.0
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


def test_a_missing_tensor_is_an_error_not_a_random_weight(tmp_path):
    hf.export(random_model("olmo2-tiny"), tmp_path)
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.self_attn.k_norm.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"missing tensor 'model.layers.1.self_attn.k_norm.weight'"):
        hf.load(tmp_path)


def test_a_non_olmo_directory_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match=r"model_type 'llama' is not an OLMo model"):
        hf.load(tmp_path)
