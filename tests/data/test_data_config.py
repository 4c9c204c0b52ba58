"""DataConfig: dict round trip, validation messages, and what it builds."""

from __future__ import annotations

import numpy as np
import pytest

from olmolab.data.config import DataConfig, SourceConfig, StageConfig
from olmolab.data.order import Stage
from olmolab.errors import UserError

from .data_helpers import write_tokens


def mixture_config(tmp_path) -> DataConfig:
    for name, size in (("web", 800), ("hq", 160)):
        (tmp_path / name).mkdir()
        write_tokens(tmp_path / name / "a.npy", np.arange(size))
    return DataConfig(
        sources=[
            SourceConfig("web", [str(tmp_path / "web")], weight=0.5),
            SourceConfig("hq", [str(tmp_path / "hq")], weight=0.5),
        ],
        stages=[StageConfig(start_step=4, weights={"hq": 1.0})],
        seq_len=16,
        seed=3,
        dtype="uint16",
    )


def test_config_round_trips_through_a_plain_dict(tmp_path):
    config = mixture_config(tmp_path)
    assert DataConfig.from_dict(config.to_dict()) == config


def test_a_mixture_config_builds_a_weighted_curriculum(tmp_path):
    data = mixture_config(tmp_path).build(global_batch_size=10)
    assert data.dataset.source_names == ["web", "hq"] and data.dataset.source_sizes == [50, 10]
    assert data.order.stages == [Stage(0, (0.5, 0.5)), Stage(4, (0.0, 1.0))]
    first_stage = np.concatenate([data.order.global_batch(b) for b in range(4)])
    assert 15 <= int((first_stage >= 50).sum()) <= 25  # about half from hq (ids 50..59)
    assert all(data.order.global_batch(b).min() >= 50 for b in range(4, 9))


def test_plain_paths_build_one_source_in_olmos_order(tmp_path):
    write_tokens(tmp_path / "a.npy", np.arange(320))
    data = DataConfig.from_dict({"paths": str(tmp_path / "a.npy"), "seq_len": 32, "seed": 9, "dtype": "uint16"}).build(2)
    assert data.dataset.source_names == ["data"] and len(data.dataset) == 10
    expected = np.arange(10, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(9)).shuffle(expected)
    assert data.order.global_batch(0).tolist() == expected[:2].tolist()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seq_len": 0}, r"data.seq_len: got 0; expected a positive number"),
        ({"paths": ["x.npy"]}, "either `paths`"),
        ({"dtype": "float32"}, "data.dtype: .*uint16"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"stages": [{"start_step": 5, "weights": {"books": 1.0}}]}, r"data.stages\[0\].weights: unknown sources \['books'\]"),
        ({"stages": [{"start_step": 5, "weights": {"hq": 0}}]}, "at least one above zero"),
        ({"stages": [{"start_step": 5, "weights": {"hq": 1}}, {"start_step": 5, "weights": {"hq": 1}}]}, r"stages\[1\].start_step"),
        ({"shuffle": True}, r"data: unknown key\(s\) \['shuffle'\]"),
    ],
)
def test_bad_values_are_explained_with_their_key(tmp_path, change, message):
    d = {**mixture_config(tmp_path).to_dict(), **change}
    with pytest.raises(UserError, match=message):
        DataConfig.from_dict(d)


def test_weights_on_some_sources_only_are_refused(tmp_path):
    d = mixture_config(tmp_path).to_dict()
    d["sources"][1]["weight"] = None
    with pytest.raises(UserError, match="every source or to none"):
        DataConfig.from_dict(d)
    del d["sources"][1]["paths"]
    with pytest.raises(UserError, match=r"sources\[1\]: missing key\(s\) \['paths'\]"):
        DataConfig.from_dict(d)
