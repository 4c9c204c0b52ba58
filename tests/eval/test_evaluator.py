"""In-loop evaluation: the config section, the evaluators the trainer calls, their metric names."""

import re

import pytest

from olmolab.errors import UserError
from olmolab.eval import EvalConfig, PerplexitySetConfig, build_evaluators
from tests.eval.conftest import WIKITEXT


def test_eval_config_round_trips_through_a_plain_dict():
    config = EvalConfig(
        tasks=["piqa", "arc_easy:mc:5shot"], limit=50, num_fewshot=0, batch_size=8,
        perplexity=[PerplexitySetConfig("wikitext", "test.txt", max_tokens=1000)],
    )  # fmt: skip
    data = config.to_dict()
    assert data["perplexity"] == [
        {"label": "wikitext", "path": "test.txt", "dtype": None, "max_tokens": 1000}
    ]
    assert EvalConfig.from_dict(data) == config
    assert EvalConfig.from_dict({"tasks": "piqa, hellaswag"}).tasks == ["piqa", "hellaswag"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"taks": ["piqa"]}, "unknown key"),
        ({"limit": 0}, "eval.limit: 0 must be positive"),
        ({"batch_size": "big"}, "expected an integer"),
        ({"tasks": ["piqa:9"]}, "unknown option '9'"),
        ({"tasks": ["nope"]}, "unknown task 'nope'"),
        ({"tasks": ["piqa", "piqa:rc"]}, "label(s) piqa appear twice"),
        ({"perplexity": [{"label": "x", "path": "p", "dtype": "float"}]}, "use uint16 or uint32"),
        ({"perplexity": [{"label": "x"}]}, "eval.perplexity[0]: missing key(s) ['path']"),
    ],
)
def test_eval_config_rejects_mistakes_with_the_key_and_the_fix(section, message):
    with pytest.raises(UserError, match=re.escape(message)):
        EvalConfig.from_dict(section)


def test_evaluators_report_olmo_metric_names(model, tokenizer, eval_data):
    config = EvalConfig(
        tasks=["piqa", "winogrande:mc:2shot"], limit=8, data_dir=str(eval_data),
        perplexity=[PerplexitySetConfig("wikitext", str(WIKITEXT / "test.txt"), max_tokens=600)],
    )  # fmt: skip
    metrics = {}
    for evaluator in build_evaluators(config, tokenizer):
        metrics.update(evaluator.evaluate(model))
    assert {k for k in metrics if k.startswith("eval/downstream/piqa_")} == {
        f"eval/downstream/piqa_{m}"
        for m in ("acc", "acc_norm", "acc_per_char", "acc_per_token", "acc_pmi", "bpb")
    }
    assert {"eval/downstream/winogrande_mc_2shot_acc", "eval/downstream/winogrande_mc_2shot_bpb"} <= set(
        metrics
    )
    assert {"eval/wikitext/CrossEntropyLoss", "eval/wikitext/Perplexity", "eval/wikitext/BitsPerByte"} <= set(
        metrics
    )
    assert all(isinstance(v, float) for v in metrics.values())


def test_evaluate_gives_the_model_back_in_training_mode_with_the_same_numbers(model, tokenizer, eval_data):
    [evaluator] = build_evaluators(EvalConfig(tasks=["copa"], limit=10, data_dir=str(eval_data)), tokenizer)
    model.train()
    first = evaluator.evaluate(model)
    assert model.training
    assert evaluator.evaluate(model) == first


def test_missing_data_fails_when_evaluators_are_built_not_mid_run(tokenizer, tmp_path):
    with pytest.raises(UserError, match="piqa: no data at"):
        build_evaluators(EvalConfig(tasks=["piqa"], data_dir=str(tmp_path)), tokenizer)
    with pytest.raises(UserError, match="no such file"):
        build_evaluators(
            EvalConfig(perplexity=[PerplexitySetConfig("x", str(tmp_path / "x.txt"))]), tokenizer
        )
