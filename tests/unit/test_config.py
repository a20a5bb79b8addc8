"""Config: defaults, overrides parsed as YAML scalars, loud failure on unknown keys."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from models.recall import CHANNELS, channel_class, constructor_keys
from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.dataset


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(REPO / "configs/synthetic.yaml",
                      ["split.strategy=leave_last", "recall.budget=500", "seed=7"])
    assert (cfg.split.strategy, cfg.recall.budget, cfg.seed) == ("leave_last", 500, 7)


def test_unknown_key_names_its_location() -> None:
    with pytest.raises(ConfigError, match=r"recall\.budgett"):
        load_config(REPO / "configs/synthetic.yaml", ["recall.budgett=5"])


def test_time_split_needs_cutoffs() -> None:
    with pytest.raises(ConfigError, match="valid_start"):
        load_config(REPO / "configs/synthetic.yaml", ["split.strategy=time"])


def test_unknown_channel_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"unknown channel.*bogus"):
        load_config(REPO / "configs/synthetic.yaml", ["recall.channels={bogus: {quota: 3}}"])


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_one_channel_parameter_can_be_set_and_the_other_channels_stay() -> None:
    default = load_config(REPO / "configs/movielens-100k.yaml")
    cfg = load_config(REPO / "configs/movielens-100k.yaml",
                      ["recall.channels.sequence.params.patience=2"])
    assert list(cfg.recall.channels) == list(default.recall.channels)
    assert cfg.recall.channels["sequence"].params == {"patience": 2}
    assert cfg.recall.channels["sequence"].quota == default.recall.channels["sequence"].quota
    assert cfg.recall.channels["embedding"] == default.recall.channels["embedding"]
    assert cfg.recall.search_channels == default.recall.search_channels


def test_channel_settings_merge_key_by_key_and_null_drops_a_channel() -> None:
    cfg = load_config(REPO / "configs/synthetic.yaml", [
        "recall.channels.sequence.quota=5", "recall.channels.sequence.params.max_len=20",
        "recall.channels.text_embedding=null"])
    sequence = cfg.recall.channels["sequence"]
    assert (sequence.quota, sequence.params) == (5, {"patience": 2, "blocks": 1, "lr": 0.006,
                                                     "max_len": 20})
    assert "text_embedding" not in cfg.recall.channels
    assert "text_embedding" not in cfg.recall.search_channels  # its default goes with it
    assert "inverted_index" in cfg.recall.search_channels


def test_a_dumped_config_loads_back_the_same() -> None:
    cfg = load_config(REPO / "configs/synthetic-large.yaml")
    assert "sequence" not in cfg.recall.channels
    assert load_config(None, base=cfg.to_dict()) == cfg


def test_a_misspelled_channel_parameter_names_channel_key_and_accepted_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/synthetic.yaml",
                    ["recall.channels.cooccurrence.params.neighbors=50"])
    message = str(err.value)
    assert "recall.channels" in message and "'cooccurrence'" in message
    assert "neighbors" in message and "'neighbours'" in message and "'iuf'" in message


def test_a_search_channel_must_be_fitted() -> None:
    with pytest.raises(ConfigError, match="must also be listed under channels"):
        load_config(REPO / "configs/synthetic.yaml", [
            "recall.channels.popularity=null", "recall.search_channels.popularity.quota=5"])


@pytest.mark.parametrize("name", list(CHANNELS))
def test_channel_keys_read_from_source_match_the_constructor(name: str) -> None:
    parameters = inspect.signature(channel_class(name)).parameters
    assert constructor_keys(name) == list(parameters)


@pytest.mark.parametrize(("override", "where"), [
    ("recall.channels.sequense.params.patience=2", r"unknown channel.*sequense"),
    ("recall.channels.sequence.params=null", r"recall\.channels\.sequence\.params"),
    ("recall.search_channels.embedding.params={k: 1}", r"search_channels\.embedding\.params"),
])
def test_bad_channel_settings_are_config_errors(override: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_config(REPO / "configs/synthetic.yaml", [override])


def test_publish_and_gate_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"publish\.top_k \(400\) cannot exceed"):
        load_config(REPO / "configs/synthetic.yaml", ["publish.top_k=400"])
    with pytest.raises(ConfigError, match=r"evaluate\.ks: .*must include 10"):
        load_config(REPO / "configs/synthetic.yaml", ["evaluate.ks=[5, 20]"])
