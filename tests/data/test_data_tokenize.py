"""Tokenizing documents into shards: formats, layout, determinism, resume, bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from olmolab.cli import main
from olmolab.data.documents import BadInputError
from olmolab.data.shards import TokenFile, open_token_files
from olmolab.data.tokenize import tokenize_files
from olmolab.errors import UserError
from olmolab.tokenizer import Tokenizer

from .data_helpers import make_texts, write_jsonl


def all_tokens(out_dir) -> np.ndarray:
    return np.concatenate([f.read(0, f.num_tokens) for f in open_token_files([out_dir])])


def expected_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    return [t for text in texts if text.strip() for t in tokenizer.encode(text.strip(), add_eos=True)]


def output_bytes(out_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def test_each_document_is_its_stripped_text_then_eos_with_an_index_row(tmp_path, tokenizer):
    texts = make_texts(20)
    source = write_jsonl(tmp_path / "docs.jsonl", texts)
    summary = tokenize_files([source], tokenizer, tmp_path / "out")
    assert (summary.documents, summary.tokens) == (20, len(expected_tokens(tokenizer, texts)))
    (file,) = open_token_files([tmp_path / "out"])
    assert file.read(0, file.num_tokens).tolist() == expected_tokens(tokenizer, texts)
    index = file.documents
    assert index.ids == [f"d{i}" for i in range(20)] and index.lines.tolist() == list(range(1, 21))
    assert set(index.sources) == {str(source)}
    third = file.read(int(index.starts[3]), int(index.ends[3]))
    assert tokenizer.decode(third[:-1]) == texts[3].strip() and third[-1] == tokenizer.eos_token_id


def test_jsonl_gz_zst_parquet_and_txt_paragraphs_give_the_same_tokens(tmp_path, tokenizer):
    texts = [t.replace("\n", " ") for t in make_texts(12)]
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": texts}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("\n\n".join(texts) + "\n")
    want = expected_tokens(tokenizer, texts)
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet", "e.txt"):
        tokenize_files([tmp_path / name], tokenizer, tmp_path / f"out-{name}", txt_split="paragraph")
        assert all_tokens(tmp_path / f"out-{name}").tolist() == want, name


def test_txt_is_one_document_per_file_or_one_per_paragraph(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\n\nsecond one\n  \nthird\n")
    tokenize_files([path], tokenizer, tmp_path / "whole")
    tokenize_files([path], tokenizer, tmp_path / "paras", txt_split="paragraph")
    whole, paras = TokenFile(tmp_path / "whole/part-00000.npy"), TokenFile(tmp_path / "paras/part-00000.npy")
    assert whole.documents.ids == [str(path)]
    assert paras.documents.ids == [f"{path}:1", f"{path}:5", f"{path}:7"]
    assert paras.documents.lines.tolist() == [1, 5, 7]
    assert tokenizer.decode(paras.read(0, int(paras.documents.ends[0]) - 1)) == "first paragraph\nstill first"


def test_inputs_expand_directories_and_globs_in_sorted_order(tmp_path, tokenizer):
    (tmp_path / "in/sub").mkdir(parents=True)
    write_jsonl(tmp_path / "in/sub/b.jsonl", ["bee"])
    write_jsonl(tmp_path / "in/a.jsonl", ["ay"])
    (tmp_path / "in/ignored.md").write_text("not an input")
    tokenize_files([tmp_path / "in", str(tmp_path / "in/*.jsonl")], tokenizer, tmp_path / "out")
    index = TokenFile(tmp_path / "out/part-00000.npy").documents
    assert index.sources == [str(tmp_path / "in/a.jsonl"), str(tmp_path / "in/sub/b.jsonl")]


def test_output_is_byte_identical_for_any_number_of_workers(tmp_path, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", make_texts(150, seed=2))
    write_jsonl(tmp_path / "b.jsonl", make_texts(150, seed=3) + ["   "])
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    outputs = []
    for workers in (1, 2, 3):
        tokenize_files(inputs, tokenizer, tmp_path / f"w{workers}", workers=workers, max_shard_bytes=4000)
        outputs.append(output_bytes(tmp_path / f"w{workers}"))
    assert len(outputs[0]) > 6  # several shards, so the shard boundaries are compared too
    assert outputs[0] == outputs[1] == outputs[2]


def test_shards_are_bounded_and_hold_whole_documents(tmp_path, tokenizer):
    texts = make_texts(80)
    tokenize_files([write_jsonl(tmp_path / "d.jsonl", texts)], tokenizer, tmp_path / "out", max_shard_bytes=1000)
    files = open_token_files([tmp_path / "out"])
    assert len(files) > 3
    assert all(f.num_tokens * 2 <= 1000 for f in files)
    assert all(f.read(f.num_tokens - 1, f.num_tokens)[0] == tokenizer.eos_token_id for f in files)
    assert [i for f in files for i in f.documents.ids] == [f"d{i}" for i in range(80)]


def test_dtype_is_uint16_when_the_vocabulary_fits_else_uint32(tmp_path, tokenizer, shared_data):
    source = write_jsonl(tmp_path / "d.jsonl", ["hello world"])
    dolma2 = Tokenizer.from_file(shared_data / "tokenizers/allenai_dolma2.json")
    tokenize_files([source], tokenizer, tmp_path / "small")
    tokenize_files([source], dolma2, tmp_path / "large")
    assert TokenFile(tmp_path / "small/part-00000.npy").dtype == np.uint16
    large = TokenFile(tmp_path / "large/part-00000.npy")
    assert large.dtype == np.uint32
    assert large.read(0, large.num_tokens).tolist() == dolma2.encode("hello world") + [100257]
    assert large.tokenizer == dolma2.identity


def test_rerun_keeps_finished_shards_and_writes_only_the_rest(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", make_texts(100))
    tokenize_files([source], tokenizer, tmp_path / "full", max_shard_bytes=2000)
    out = tmp_path / "cut"
    tokenize_files([source], tokenizer, out, max_shard_bytes=2000)
    shards = sorted(out.glob("*.npy"))
    for npy in shards[2:]:  # as if the run had stopped while writing the third shard
        npy.unlink()
    kept = {p: p.stat().st_mtime_ns for p in shards[:2]}
    summary = tokenize_files([source], tokenizer, out, max_shard_bytes=2000)
    assert summary.shards_reused == 2 and summary.shards_written == len(shards) - 2
    assert summary.documents == 100
    assert {p: p.stat().st_mtime_ns for p in shards[:2]} == kept
    assert output_bytes(out) == output_bytes(tmp_path / "full")
    again = tokenize_files([source], tokenizer, out, max_shard_bytes=2000)
    assert again.shards_written == 0 and again.shards_reused == len(shards)


def test_a_run_stopped_by_a_bad_line_resumes_after_the_fix_to_the_same_output(tmp_path, tokenizer):
    texts = make_texts(60)
    good = [write_jsonl(tmp_path / "1.jsonl", texts[:30]), write_jsonl(tmp_path / "2.jsonl", texts[30:])]
    tokenize_files(good, tokenizer, tmp_path / "clean", max_shard_bytes=1000)
    rows = good[1].read_text().splitlines()
    good[1].write_text("\n".join(rows[:20] + ["{broken"] + rows[20:]) + "\n")
    with pytest.raises(BadInputError, match=r"2\.jsonl:21: malformed JSON"):
        tokenize_files(good, tokenizer, tmp_path / "out", max_shard_bytes=1000)
    assert not list((tmp_path / "out").glob("*.tmp"))  # no half-written leftovers
    assert len(list((tmp_path / "out").glob("*.npy"))) > 1
    write_jsonl(good[1], texts[30:])
    summary = tokenize_files(good, tokenizer, tmp_path / "out", max_shard_bytes=1000)
    assert summary.shards_reused > 1
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "clean")


def test_shards_of_another_run_are_not_mixed_in(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", make_texts(5))
    tokenize_files([source], tokenizer, tmp_path / "out")
    with pytest.raises(UserError, match="different tokenize run"):
        tokenize_files([source], tokenizer, tmp_path / "out", max_shard_bytes=10_000)


BAD_LINES = {
    "malformed JSON": (b'{"text": "no end"\n', "malformed JSON"),
    "missing text": (b'{"id": "x", "body": "hi"}\n', "no field 'text'"),
    "text not a string": (b'{"text": 42}\n', "field 'text' is int; expected a string"),
    "invalid UTF-8": (b'{"text": "caf\xe9"}\n', "invalid UTF-8"),
    "lone surrogate": (b'{"text": "bad \\udc80 escape"}\n', "unpaired surrogate"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_document_stops_the_run_naming_file_line_and_expectation(tmp_path, tokenizer, case):
    line, message = BAD_LINES[case]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n' + line + b'{"text": "after"}\n')
    with pytest.raises(BadInputError, match=f"d.jsonl:3: .*{message}") as error:
        tokenize_files([path], tokenizer, tmp_path / "out")
    assert "--skip-bad" in str(error.value)
    assert not list((tmp_path / "out").glob("*.npy"))  # nothing half-written looks complete


def test_a_string_cut_off_at_the_end_of_the_file_reads_as_one_sentence(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "cut off')  # json says "Unterminated string starting at"
    with pytest.raises(BadInputError, match=r"d.jsonl:2: malformed JSON \(Unterminated string starting at column 10\)"):
        tokenize_files([path], tokenizer, tmp_path / "out")


def unreadable_files(tmp_path):
    lines = b"".join(b'{"text": "line %d"}\n' % i for i in range(2000))
    (tmp_path / "corrupt.jsonl.gz").write_bytes(gzip.compress(lines)[:-100])
    (tmp_path / "cut.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines)[:-30])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "notext.parquet")
    return [tmp_path / "corrupt.jsonl.gz", tmp_path / "cut.jsonl.zst", tmp_path / "notext.parquet"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_an_unreadable_file_stops_the_run_naming_it(tmp_path, tokenizer, index):
    path = unreadable_files(tmp_path)[index]
    with pytest.raises(BadInputError, match=f"{path.name}: (cannot read the file|no column 'text')"):
        tokenize_files([path], tokenizer, tmp_path / "out")


def test_skip_bad_skips_and_counts_bad_documents_and_files_and_empty_ones(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(line for line, _ in BAD_LINES.values()) + b'{"text": "kept"}\n{"text": " \\n "}\n')
    inputs = [path, *unreadable_files(tmp_path)]
    summary = tokenize_files(inputs, tokenizer, tmp_path / "out", skip_bad=True)
    assert summary.documents == 1
    assert summary.empty_skipped == 1
    assert summary.bad_skipped == len(BAD_LINES) + 3
    assert any("d.jsonl:4: invalid UTF-8" in example for example in summary.bad_examples)
    sidecar = json.loads((tmp_path / "out/part-00000.json").read_text())
    assert sidecar["skipped"] == {"empty": 1, "bad": len(BAD_LINES) + 3}


def test_no_documents_at_all_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", ["", "  \n\t"])
    with pytest.raises(UserError, match=r"no documents .*2 empty"):
        tokenize_files([path], tokenizer, tmp_path / "out")


def test_missing_input_and_unsupported_format_are_user_errors(tmp_path, tokenizer):
    with pytest.raises(UserError, match="no such file"):
        tokenize_files([tmp_path / "nope.jsonl"], tokenizer, tmp_path / "out")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported input format"):
        tokenize_files([tmp_path / "x.csv"], tokenizer, tmp_path / "out")


def test_cli_tokenizes_and_reports_bad_input_as_one_line(tmp_path, tokenizer, capsys):
    tokenizer.save(tmp_path / "tok.json")
    source = write_jsonl(tmp_path / "d.jsonl", make_texts(10))
    args = ["data", "tokenize", str(source), "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "out")]
    assert main([*args, "--workers", "2", "--quiet", "--max-shard-size", "1K"]) == 0
    assert "10 documents" in capsys.readouterr().out
    with open(source, "a") as f:
        f.write("not json\n")
    assert main([*args[:-1], str(tmp_path / "out2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d.jsonl:11: malformed JSON" in err


def test_our_shards_hold_the_same_tokens_as_dolmas_for_the_same_documents(tmp_path, shared_data):
    """End to end against AI2's own tool: each document's tokens equal those in Dolma's token file."""
    with gzip.open(shared_data / "corpora/python-docs/python-3.11-docs.jsonl.gz", "rt") as f:
        lines = [line for _, line in zip(range(25), f, strict=False)]
    (tmp_path / "docs.jsonl").write_text("".join(lines))
    tokenizer = Tokenizer.from_file(shared_data / "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json")
    tokenize_files([tmp_path / "docs.jsonl"], tokenizer, tmp_path / "out", workers=2)
    ours = TokenFile(tmp_path / "out/part-00000.npy")
    dolma = TokenFile(shared_data / "tokens/python-docs.gpt-neox-olmo-dolma-v1_5/part-0-00000.npy", dtype="uint16")
    assert ours.dtype == dolma.dtype == np.uint16
    for i, doc_id in enumerate(ours.documents.ids):
        (j,) = dolma.documents.find(doc_id)
        mine = ours.read(int(ours.documents.starts[i]), int(ours.documents.ends[i]))
        theirs = dolma.read(int(dolma.documents.starts[j]), int(dolma.documents.ends[j]))
        assert np.array_equal(mine, theirs), doc_id
        assert ours.documents.lines[i] == dolma.documents.lines[j]
    assert len(ours.documents) == 25
