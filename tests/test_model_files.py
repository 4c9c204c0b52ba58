"""Reading and writing model files: only tensors are unpickled, files take the umask's mode, and a
run whose latest revision is damaged falls back to an intact one."""

import os
import stat

import torch
from safetensors.torch import load_file

import olmolab
from olmolab.cli import main
from olmolab.model_files import save_model
from tests.conftest import assert_one_line_error, run_cli


class RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pytorch_model_bin_holding_code_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    assert main(["export", "hf", str(checkpoint), str(tmp_path / "hf")]) == 0
    (tmp_path / "hf" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": RunsACommand(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    code, _, err = run_cli(capsys, "generate", tmp_path / "hf", "--prompt", "hi")
    assert_one_line_error(code, err, f"{tmp_path / 'hf' / 'pytorch_model.bin'}: refused: it holds objects other "
                                     "than tensors")
    assert "weights_only=False" not in err and not marker.exists()


def test_a_pytorch_model_bin_of_tensors_loads(checkpoint, tmp_path):
    assert main(["export", "hf", str(checkpoint), str(tmp_path / "hf")]) == 0
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(weights, tmp_path / "hf" / "pytorch_model.bin")
    model, _ = olmolab.load(tmp_path / "hf")
    original, _ = olmolab.load(checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values(),
                                                 strict=True))


def test_weights_files_take_their_mode_from_the_umask(make_model, tmp_path):
    previous = os.umask(0o022)
    try:
        ckpt = save_model(make_model(), tmp_path / "ckpt")
        assert main(["export", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((ckpt / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "hf" / "model.safetensors").stat().st_mode) == 0o644


def test_generate_from_a_run_skips_a_revision_whose_weights_are_damaged(tmp_path, make_model, tokenizer, capsys):
    run = tmp_path / "run"
    save_model(make_model(seed=1), run / "step2-tokens256", tokenizer=tokenizer)
    save_model(make_model(seed=2), run / "step4-tokens512", tokenizer=tokenizer)
    (run / "step4-tokens512" / "model.safetensors").write_bytes(b"cut off")
    model, _ = olmolab.load(run)
    intact, _ = olmolab.load(run / "step2-tokens256")
    assert torch.equal(model.lm_head.weight, intact.lm_head.weight)
    assert f"skipping damaged revision {run / 'step4-tokens512'}: model.safetensors is not readable" in \
        capsys.readouterr().err
