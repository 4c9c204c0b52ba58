"""The model commands (`generate`, `export`, `import`, `soup`): `generate`'s output, `--help` of every
command, and one clear line (exit 2) per user mistake."""

import json

import pytest
from tokenizers import AddedToken

import olmolab
from olmolab.cli import main
from olmolab.generation import GenerationConfig, generate_text
from olmolab.model_files import save_model
from olmolab.tokenizer import Tokenizer
from tests.conftest import assert_one_line_error, run_cli


def test_generate_streams_the_greedy_continuation_of_one_prompt(checkpoint, tokenizer, capsys):
    code, out, _ = run_cli(capsys, "generate", checkpoint, "--prompt", "To be", "--max-new-tokens", 12)
    model, _ = olmolab.load(checkpoint)
    expected = generate_text(model, tokenizer, ["To be"], GenerationConfig(max_new_tokens=12))[0]
    assert code == 0 and out == "To be" + expected + "\n"
    compiled = run_cli(capsys, "generate", checkpoint, "--prompt", "To be", "--max-new-tokens", 12, "--compile")
    assert compiled == (0, out, "")


def test_generate_from_a_prompts_file_writes_one_json_line_per_prompt(checkpoint, tokenizer, tmp_path, capsys):
    prompts = ["To be, or not", "", "The slings and arrows of", "Or to take"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    code, out, _ = run_cli(capsys, "generate", checkpoint, "--prompts-file", tmp_path / "prompts.txt",
                           "--max-new-tokens", 10, "--batch-size", 2, "--temperature", 0.9, "--seed", 4)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in prompts if p]  # blank lines skipped
    again = run_cli(capsys, "generate", checkpoint, "--prompts-file", tmp_path / "prompts.txt",
                    "--max-new-tokens", 10, "--batch-size", 2, "--temperature", 0.9, "--seed", 4)[1]
    assert again == out  # the seed makes sampling reproducible


def test_generate_reads_a_revision_directory_and_stops_at_a_stop_string(tmp_path, make_model, tokenizer, capsys):
    run = tmp_path / "run"
    model = make_model()
    save_model(make_model(seed=5), run / "step10-tokens1K", tokenizer=tokenizer)
    save_model(model, run / "step20-tokens2K", tokenizer=tokenizer)  # the latest revision
    full = generate_text(model, tokenizer, ["Devoutly"], GenerationConfig(max_new_tokens=30, stop_at_eos=False))[0]
    stop = next(full[i : i + 2] for i in range(5, len(full)) if "\ufffd" not in full[i : i + 2] and full[i] != "\\")
    code, out, _ = run_cli(capsys, "generate", run, "--prompt", "Devoutly", "--completion-only", "--ignore-eos",
                           "--max-new-tokens", 30, "--stop", stop)
    assert code == 0 and out == full[: full.index(stop)] + "\n"


@pytest.mark.parametrize("command", [
    ["generate"], ["export"], ["export", "hf"], ["import"], ["import", "hf"], ["soup"],
])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and "olmolab " in out.split("examples:")[1]


# ---------------------------------------------------------------------- user mistakes


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", tmp_path / "nope", "--prompt", "hi")
    assert_one_line_error(code, err, "no such checkpoint")


def test_corrupt_weights_are_one_line(checkpoint, capsys):
    (checkpoint / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(capsys, "generate", checkpoint, "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors", "missing or corrupt")


def test_a_corrupt_config_is_one_line_with_its_line_number(checkpoint, capsys):
    (checkpoint / "config.json").write_text('{"model": {\n  "d_model": 64,,\n}')
    code, _, err = run_cli(capsys, "export", "hf", checkpoint, checkpoint.parent / "out")
    assert_one_line_error(code, err, "config.json:2", "corrupt")


def test_a_corrupt_hf_directory_is_one_line(checkpoint, tmp_path, capsys):
    assert main(["export", "hf", str(checkpoint), str(tmp_path / "hf")]) == 0
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not safetensors")
    code, _, err = run_cli(capsys, "import", "hf", tmp_path / "hf", tmp_path / "out")
    assert_one_line_error(code, err, "cannot read the weights")


def test_a_tokenizer_larger_than_the_embedding_is_refused(checkpoint, tokenizer, tmp_path, capsys):
    bigger = Tokenizer.from_file(checkpoint / "tokenizer.json")
    bigger.hf.add_tokens([AddedToken(f"<extra_{i}>") for i in range(200)])  # 600 tokens, 512 embeddings
    bigger.save(tmp_path / "big.json")
    for argv in (["generate", checkpoint, "--prompt", "hi", "--tokenizer", tmp_path / "big.json"],
                 ["export", "hf", checkpoint, tmp_path / "hf", "--tokenizer", tmp_path / "big.json"]):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "600 tokens", "512 rows", "does not belong to this model")
    bigger.save(checkpoint / "tokenizer.json")  # the checkpoint's own tokenizer is checked too
    code, _, err = run_cli(capsys, "generate", checkpoint, "--prompt", "hi")
    assert_one_line_error(code, err, "600 tokens")


def test_a_model_eos_outside_the_tokenizer_is_refused(tmp_path, make_model, tokenizer, capsys):
    ckpt = save_model(make_model(eos_token_id=450), tmp_path / "ckpt", tokenizer=tokenizer)  # 400 tokens
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", "hi")
    assert_one_line_error(code, err, "eos_token_id 450 is not a token of the tokenizer")


def test_a_prompt_longer_than_the_context_window_is_one_line(tmp_path, make_model, tokenizer, capsys):
    ckpt = save_model(make_model(max_seq_len=16), tmp_path / "ckpt", tokenizer=tokenizer)
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", "To be, or not to be, that is the question " * 3)
    assert_one_line_error(code, err, "longer than the model's context window of 16 tokens")


def test_a_checkpoint_without_tokenizer_asks_for_one(tmp_path, make_model, capsys):
    ckpt = save_model(make_model(), tmp_path / "ckpt")
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", "hi")
    assert_one_line_error(code, err, "pass --tokenizer")


def test_bad_sampling_settings_are_one_line(checkpoint, capsys):
    code, _, err = run_cli(capsys, "generate", checkpoint, "--prompt", "hi", "--top-p", "0")
    assert_one_line_error(code, err, "top_p=0.0 must be in (0, 1]")


def test_generate_says_when_the_context_window_will_cut_the_completion(tmp_path, make_model, tokenizer, capsys):
    ckpt = save_model(make_model(max_seq_len=16), tmp_path / "ckpt", tokenizer=tokenizer)
    prompt = "To be, or not"
    room = 16 - len(tokenizer.encode(prompt)) + 1
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", prompt, "--max-new-tokens", 40, "--ignore-eos")
    assert code == 0
    assert f"in the model's 16-token context window (prompt 1: room for {room} new tokens)" in err
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", prompt, "--max-new-tokens", room)
    assert code == 0 and "context window" not in err
