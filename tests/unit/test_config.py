"""Config: defaults, overrides parsed as YAML scalars, loud failure on unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.dataset


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(REPO / "configs/synthetic.yaml",
                      ["split.strategy=leave_last", "recall.budget=50", "seed=7"])
    assert (cfg.split.strategy, cfg.recall.budget, cfg.seed) == ("leave_last", 50, 7)


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
