"""Provenance both ways: the documents of a step's batch, and the steps that saw a document."""

from __future__ import annotations

import json

import pytest
import yaml

from olmolab.cli import main
from olmolab.data.config import DataConfig
from olmolab.data.provenance import documents_at_step, read_run, steps_with_document
from olmolab.errors import UserError

from .data_helpers import make_texts


@pytest.fixture
def data(token_dir):
    return DataConfig(paths=[str(token_dir)], seq_len=32, seed=4).build(global_batch_size=4)


def test_the_documents_of_a_step_are_those_under_its_instances_tokens(data, tokenizer):
    texts = make_texts(120)
    instances = documents_at_step(data, 3)
    assert [i.instance_id for i in instances] == data.order.global_batch(2).tolist()  # step 3 = third batch
    for instance in instances:
        covered = sum(piece.end - piece.start for piece in instance.documents)
        assert covered == 32 and instance.end - instance.start == 32
        file = data.dataset.locate(instance.instance_id).file
        for piece in instance.documents:
            text = texts[int(piece.id[1:])].strip()
            whole = tokenizer.decode(file.read(piece.doc_start, piece.doc_end - 1))
            assert whole == text and piece.line == int(piece.id[1:]) + 1


def test_steps_with_a_document_are_exactly_the_steps_whose_batch_holds_it(data):
    until = 2 * data.order.batches_per_epoch(0)
    for doc_id in ("d0", "d57", "d119"):
        steps = steps_with_document(data, doc_id, until_step=until)
        expected = [s for s in range(1, until + 1) for i in documents_at_step(data, s) if doc_id in {p.id for p in i.documents}]
        assert steps == expected
        assert len(set(steps)) >= 2  # seen once in each epoch at least


def test_unknown_document_and_step_zero_are_user_errors(data):
    with pytest.raises(UserError, match="no document with id 'nope'"):
        steps_with_document(data, "nope")
    with pytest.raises(UserError, match="steps count from 1"):
        documents_at_step(data, 0)


def test_olmo_token_files_answer_through_their_dolma_index(shared_data):
    config = DataConfig(paths=[str(shared_data / "tokens/python-docs.dolma2")], seq_len=2048, seed=0, dtype="uint32")
    data = config.build(global_batch_size=16)
    (instance, *_) = documents_at_step(data, 1)
    assert instance.documents and all(p.source == "docs/python-3.11-docs.jsonl.gz" for p in instance.documents)
    doc = instance.documents[0].id
    assert 1 in steps_with_document(data, doc, until_step=5)


def write_run(tmp_path, token_dir, trainer=None):
    run = tmp_path / "run"
    run.mkdir()
    config = {"data": {"paths": [str(token_dir)], "seq_len": 32, "seed": 4}, "trainer": trainer or {}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_a_run_is_its_data_config_and_global_batch_size(tmp_path, token_dir):
    run = write_run(tmp_path, token_dir, {"global_batch_size": 4, "max_steps": 30})
    description = read_run(run)
    assert (description.global_batch_size, description.max_steps, description.config.seq_len) == (4, 30, 32)
    assert read_run(run / "config.yaml", global_batch_size=8, seq_len=16).global_batch_size == 8
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="global batch size .* unknown"):
        read_run(write_run(tmp_path / "other", token_dir))


def test_inspect_cli_answers_both_ways(tmp_path, token_dir, tokenizer, capsys, data):
    tokenizer.save(tmp_path / "tok.json")
    run = write_run(tmp_path, token_dir, {"global_batch_size": 4})
    assert main(["data", "inspect", str(run), "--step", "3", "--tokenizer", str(tmp_path / "tok.json")]) == 0
    out = capsys.readouterr().out
    first = documents_at_step(data, 3)[0]
    assert out.startswith("step 3: 4 instances of 32 tokens") and f"instance {first.instance_id}" in out
    assert main(["data", "inspect", str(run), "--step", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["instance_id"] == first.instance_id
    doc = first.documents[0].id
    assert main(["data", "inspect", str(run), "--document", doc, "--until-step", "20", "--json"]) == 0
    assert 3 in json.loads(capsys.readouterr().out)["steps"]
