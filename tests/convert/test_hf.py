"""`olmolab export hf` / `olmolab import hf` and `olmolab.load` on both formats."""

import pytest
import torch

import olmolab
from olmolab import ModelConfig
from olmolab.cli import main
from olmolab.convert import hf
from olmolab.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

SAMPLES = ["To be, or not to be", "  the heart-ache\nand the thousand natural shocks", "ünïcödé ✓ 'tis", ""]


def test_export_hf_writes_a_model_and_tokenizer_transformers_loads(checkpoint, tmp_path, tokenizer):
    out = tmp_path / "hf"
    assert main(["export", "hf", str(checkpoint), str(out)]) == 0
    ours, _ = olmolab.load(checkpoint)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 400, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)

    auto = transformers.AutoTokenizer.from_pretrained(out)
    for text in SAMPLES:
        assert auto(text)["input_ids"] == tokenizer.encode(text)
        assert auto.decode(tokenizer.encode(text)) == text
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == ours.config.eos_token_id == 0
    assert auto.pad_token == "<|pad|>" and auto.pad_token_id == ours.config.pad_token_id == 1


def test_load_returns_model_and_tokenizer_from_either_format(checkpoint, tmp_path, tokenizer):
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert main(["export", "hf", str(checkpoint), str(hf_dir)]) == 0
    assert main(["import", "hf", str(hf_dir), str(back)]) == 0
    ids = torch.randint(0, 400, (1, 12))
    reference, _ = olmolab.load(checkpoint)
    for path in (checkpoint, hf_dir, back):
        model, tok = olmolab.load(path)
        with torch.no_grad():
            torch.testing.assert_close(model(ids), reference(ids), atol=0, rtol=0)
        assert tok.encode(SAMPLES[1]) == tokenizer.encode(SAMPLES[1])
        assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    auto = transformers.AutoTokenizer.from_pretrained(back)  # the import keeps the HF tokenizer files
    assert (auto.eos_token_id, auto.pad_token_id) == (0, 1)


def test_import_of_a_directory_saved_by_transformers_generates_like_it(tmp_path, tokenizer, capsys):
    config = transformers.Olmo2Config(
        vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=128, rope_theta=500000.0, rms_norm_eps=1e-6,
        pad_token_id=1, eos_token_id=0,
    )
    theirs = transformers.Olmo2ForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0

    prompt = tokenizer.encode("To sleep, perchance")
    expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                               pad_token_id=1)[0, len(prompt):].tolist()
    for source in ("hf", "ours"):  # the transformers directory itself, and its import
        capsys.readouterr()
        assert main(["generate", str(tmp_path / source), "--prompt", "To sleep, perchance", "--ignore-eos",
                     "--max-new-tokens", "12", "--completion-only"]) == 0
        assert capsys.readouterr().out == tokenizer.decode(expected) + "\n"


def test_export_refuses_to_overwrite_a_non_empty_directory(checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "hf", str(checkpoint), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", "hf", str(checkpoint), str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("preset, official, tokenizer_file, eos, pad", [
    ("olmo2-tiny", "olmo2-1b", "allenai_dolma2.json", ("<|endoftext|>", 100257), ("<|pad|>", 100277)),
    ("olmo-tiny", "olmo-1b", "allenai_gpt-neox-olmo-dolma-v1_5.json", ("<|endoftext|>", 50279), ("<|padding|>", 1)),
])
def test_real_olmo_tokenizers_export_with_their_special_tokens(shared_data, tmp_path, make_model, preset, official,
                                                               tokenizer_file, eos, pad):
    tokenizer = Tokenizer.from_file(shared_data / "tokenizers" / tokenizer_file)
    official = ModelConfig.preset(official)  # the real vocabulary sizes and special ids
    ids = dict(vocab_size=official.vocab_size, embedding_size=official.embedding_size,
               eos_token_id=official.eos_token_id, pad_token_id=official.pad_token_id)
    hf.export(make_model(preset, d_model=32, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, **ids), tmp_path,
              tokenizer=tokenizer)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES:
        assert auto(text)["input_ids"] == tokenizer.encode(text)
    assert (auto.eos_token, auto.eos_token_id) == eos and (auto.pad_token, auto.pad_token_id) == pad
    model, reloaded = olmolab.load(tmp_path)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (eos[1], pad[1]) == (
        model.config.eos_token_id, model.config.pad_token_id)
