"""Run configs: typed, validated, overridable from the command line, errors that say what to do."""

import pytest

from olmolab.cli.train import split_overrides
from olmolab.config import RunConfig, load_run_config
from olmolab.errors import UserError
from tests.conftest import REPO_ROOT


def test_dotted_overrides_win_over_the_file_and_are_typed(tiny_run):
    path, _ = tiny_run()
    config = load_run_config(path, ["optim.lr=3e-4", "trainer.max_steps=9", "optim.betas=[0.9, 0.99]"])
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.trainer.max_steps == 9
    assert config.optim.betas == (0.9, 0.99)


def test_unknown_key_lists_the_keys_that_exist(tiny_run):
    path, _ = tiny_run()
    with pytest.raises(UserError, match=r"optim: unknown key\(s\) \['learning_rate'\].*lr, betas, eps"):
        load_run_config(path, ["optim.learning_rate=1e-3"])


def test_wrong_type_says_what_was_expected(tiny_run):
    path, _ = tiny_run()
    with pytest.raises(UserError, match=r"trainer.max_steps: expected an integer, got 'many'"):
        load_run_config(path, ["trainer.max_steps=many"])


def test_batch_that_does_not_split_into_micro_batches_says_what_to_change(tiny_run):
    path, _ = tiny_run(global_batch_size=6, micro_batch_size=4)
    config = load_run_config(path)
    with pytest.raises(UserError, match=r"global_batch_size=6 is not divisible by micro_batch_size \(4\) x world "
                                        r"size \(2\) = 8; make it a multiple of 8"):
        config.trainer.check_batch(world_size=2)


def test_sequence_longer_than_the_model_context_is_refused(tiny_run):
    path, _ = tiny_run()
    with pytest.raises(UserError, match=r"data.seq_len=64 is longer than model.max_seq_len=32"):
        load_run_config(path, ["data.seq_len=64"])


def test_negative_z_loss_is_refused(tiny_run):
    path, _ = tiny_run()
    with pytest.raises(UserError, match=r"trainer.z_loss_multiplier=-0.001: must be 0 \(off\) or more"):
        load_run_config(path, ["trainer.z_loss_multiplier=-1e-3"])


def test_model_section_takes_a_preset_with_overrides(tiny_run):
    path, _ = tiny_run()
    config = load_run_config(path, ["model.n_layers=3"])
    assert config.model.name == "olmo2-tiny" and config.model.n_layers == 3


def test_resolved_config_round_trips(tiny_run):
    path, _ = tiny_run()
    config = load_run_config(path, ["optim.lr=1e-3"])
    again = RunConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_cli_flags_become_overrides():
    assert split_overrides(["--optim.lr=1e-3", "--load-path", "ckpt", "--reset-trainer-state"]) == [
        "optim.lr=1e-3", "trainer.load_path=ckpt", "trainer.reset_trainer_state=true"]
    with pytest.raises(UserError, match="overrides look like --section.key=value"):
        split_overrides(["--lr", "1e-3"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: olmo2-tiny\n data: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load_run_config(bad)


# (post-training recipes, *-sft / *-dpo / *-rlvr, are `olmolab sft` / `dpo` / `rlvr` configs: tests/posttrain)
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if not p.stem.endswith(("-sft", "-dpo", "-rlvr")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_validates(path):
    config = load_run_config(path)
    assert config.trainer.run_dir.startswith("runs/")


def test_official_recipes_carry_the_published_hyperparameters():
    olmo2 = load_run_config(REPO_ROOT / "configs/official/olmo2-7b-stage1.yaml")
    assert (olmo2.optim.lr, olmo2.optim.eps, olmo2.trainer.global_batch_size, olmo2.data.seq_len) == (3e-4, 1e-8, 1024, 4096)
    anneal = load_run_config(REPO_ROOT / "configs/official/olmo2-7b-stage2.yaml")
    assert (anneal.scheduler.name, anneal.scheduler.alpha_f, anneal.scheduler.units) == ("linear", 0.0, "tokens")
    assert anneal.trainer.reset_trainer_state and anneal.trainer.load_path.endswith("step928646-tokens3896B")


@pytest.mark.parametrize("override, message", [
    ("trainer.max_grad_norm=-1", r"trainer.max_grad_norm=-1.0: must be positive \(null turns clipping off\)"),
    ("trainer.max_grad_norm=0", r"trainer.max_grad_norm=0.0: must be positive"),
    ("optim.lr=.inf", r"optim.lr: expected a finite number, got inf"),
    ("optim.lr=.nan", r"optim.lr: expected a finite number, got nan"),
    ("optim.lr=-1e-3", r"optim.lr=-0.001: the learning rate must be a positive, finite number"),
    ("trainer.max_steps=0", r"trainer.max_steps=0: must be at least 1"),
    ("trainer.max_steps=-5", r"trainer.max_steps=-5: must be at least 1"),
    ("trainer.save_interval=-1", r"trainer.save_interval=-1: must be at least 1 \(or null: save only at the end\)"),
    ("trainer.eval_interval=0", r"trainer.eval_interval=0: must be at least 1"),
    ("trainer.max_consecutive_skipped_steps=0", r"trainer.max_consecutive_skipped_steps=0: must be at least 1"),
    ("trainer.spike_sigmas=0", r"trainer.spike_sigmas=0.0: must be positive"),
])
def test_impossible_values_are_refused_naming_the_key(tiny_run, override, message):
    path, _ = tiny_run()
    with pytest.raises(UserError, match=message):
        load_run_config(path, [override])


def test_a_refused_value_is_one_line_on_the_command_line(tiny_run, capsys):
    from olmolab.cli import main

    path, _ = tiny_run()
    assert main(["train", str(path), "--trainer.max_grad_norm=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainer.max_grad_norm=-1.0: must be positive" in err
