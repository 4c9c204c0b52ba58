"""Reading token files (OLMo / Dolma raw arrays and ours), document indexes, label masks, instances."""

from __future__ import annotations

import numpy as np
import pytest

from olmolab.data.instances import TokenDataset
from olmolab.data.shards import TokenFile, open_token_files
from olmolab.errors import UserError

from .data_helpers import write_tokens

DOLMA2 = "tokens/python-docs.dolma2/part-0-00000.npy"


def test_dolma_token_file_reads_with_its_dtype_and_provenance_index(shared_data):
    file = TokenFile(shared_data / DOLMA2, dtype="uint32")
    assert file.num_tokens == 2_640_608
    index = file.documents
    assert len(index) == 497
    assert index.starts[0] == 0 and index.ends[-1] == file.num_tokens  # sorted, covering the file
    assert np.all(index.starts[1:] == index.ends[:-1])
    (position,) = index.find("python-3.11-docs/installing/index.rst.txt")
    assert (index.sources[position], index.lines[position]) == ("docs/python-3.11-docs.jsonl.gz", 122)
    assert file.read(int(index.ends[position]) - 1, int(index.ends[position]))[0] == 100257
    assert file.memmap()[: 5].tolist() == file.read(0, 5).tolist()


def test_raw_file_without_dtype_is_refused_with_advice(shared_data):
    with pytest.raises(UserError, match="dtype is unknown.*OLMo 2 files uint32"):
        TokenFile(shared_data / DOLMA2)


def test_our_shards_carry_their_dtype_and_a_conflicting_one_is_refused(token_dir):
    file = TokenFile(token_dir / "part-00000.npy")
    assert file.dtype == np.uint16 and file.tokenizer.eos_token_id == 0
    with pytest.raises(UserError, match="sidecar says uint16"):
        TokenFile(token_dir / "part-00000.npy", dtype="uint32")


def test_a_file_that_is_not_whole_tokens_is_refused(tmp_path):
    (tmp_path / "odd.npy").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="not a whole number of uint16"):
        TokenFile(tmp_path / "odd.npy", dtype="uint16")


def test_label_mask_must_have_one_entry_per_token(tmp_path):
    tokens = write_tokens(tmp_path / "t.npy", range(10))
    np.ones(9, dtype=np.bool_).tofile(tmp_path / "m.npy")
    with pytest.raises(UserError, match="label mask .* has 9 entries but .* has 10 tokens"):
        TokenFile(tokens, "uint16", tmp_path / "m.npy")
    np.ones(10, dtype=np.bool_).tofile(tmp_path / "m2.npy")
    with pytest.raises(UserError, match="one mask per token file"):
        open_token_files([tokens], dtype="uint16", label_mask_paths=[tmp_path / "m.npy", tmp_path / "m2.npy"])


def test_instances_chunk_each_file_and_drop_its_tail_as_olmo_does(tmp_path):
    a = write_tokens(tmp_path / "a.npy", range(0, 10))  # 3 instances of 3, tail of 1 dropped
    b = write_tokens(tmp_path / "b.npy", range(100, 108))  # 2 instances, tail of 2 dropped
    dataset = TokenDataset(open_token_files([a, b], dtype="uint16"), seq_len=3)
    assert len(dataset) == 5
    assert [dataset.instance(i)["input_ids"].tolist() for i in range(5)] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8], [100, 101, 102], [103, 104, 105]
    ]
    assert dataset.instance(0)["input_ids"].dtype == np.int64 and "label_mask" not in dataset.instance(0)
    assert dataset.instances_overlapping(0, 8, 10) == range(2, 3)  # token 9 is in the dropped tail
    assert dataset.instances_overlapping(1, 5, 8) == range(4, 5)
    with pytest.raises(UserError, match="no instances"):
        TokenDataset(open_token_files([a], dtype="uint16"), seq_len=11)


def test_label_masks_ride_along_and_sources_without_masks_count_every_token(tmp_path):
    tokens = write_tokens(tmp_path / "t.npy", range(6))
    np.array([0, 1, 1, 0, 1, 1], dtype=np.bool_).tofile(tmp_path / "t.mask.npy")
    plain = write_tokens(tmp_path / "p.npy", range(6))
    dataset = TokenDataset(
        {
            "sft": open_token_files([tokens], dtype="uint16", label_mask_paths=[tmp_path / "t.mask.npy"]),
            "web": open_token_files([plain], dtype="uint16"),
        },
        seq_len=3,
    )
    assert dataset.source_sizes == [2, 2]
    assert dataset.read([1, 0])["label_mask"].tolist() == [[False, True, True], [False, True, True]]
    assert dataset.instance(2)["label_mask"].tolist() == [True, True, True]
    assert dataset.locate(3).source == "web"


def test_directories_and_globs_expand_to_their_token_files_in_order(token_dir):
    files = open_token_files([token_dir])
    assert [f.path.name for f in files] == sorted(p.name for p in token_dir.glob("*.npy"))
    assert open_token_files([str(token_dir / "*")])[0].path == files[0].path  # sidecars are not token files
    with pytest.raises(UserError, match="matches no token files"):
        open_token_files([str(token_dir / "*.nothing")])
