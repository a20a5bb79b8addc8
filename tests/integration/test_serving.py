"""One request answered from the live publication gives the batch's published list."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.io import read_table
from pipeline.release import PUBLISH, current
from pipeline.schedule import schedule
from pipeline.serving import COLD_START, Recommender, response
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_config(tmp_path_factory.mktemp("serve"))
    assert schedule(cfg, force=True) == 0
    folder = cfg.root / PUBLISH / current(cfg)
    return cfg, folder, Recommender.load(folder)


def test_a_served_list_is_the_published_list(live) -> None:
    cfg, folder, recommender = live
    published = read_table(folder / "recommendations.parquet")
    users = published["user_id"].unique()
    for user in users[:: max(1, len(users) // 40)]:  # every 7th or so: 40 users
        want = published[published["user_id"] == user].reset_index(drop=True)
        got = recommender.recommend(user)
        assert got["item_id"].tolist() == want["item_id"].tolist(), user
        assert got["channels"].tolist() == want["channels"].tolist(), user
        np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    assert (published.groupby("user_id").size() == cfg.publish.top_k).all()


def test_k_cuts_the_list_and_is_bounded(live) -> None:
    cfg, _, recommender = live
    user = recommender.models.data.user_index.ids[0]
    full = recommender.recommend(user)
    assert recommender.recommend(user, 5).equals(full.head(5))
    with pytest.raises(ValueError, match="publish.top_k"):
        recommender.recommend(user, cfg.publish.top_k + 1)


def test_an_unknown_user_gets_the_global_cold_start_list(live) -> None:
    _, folder, recommender = live
    cold = read_table(folder / "cold_start.parquet")
    got = recommender.recommend(-12345, 7)
    expected = cold[cold["region"] == "*"].head(7)
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    assert set(got["channels"]) == {COLD_START}


def test_the_cli_answers_from_the_live_publication(live, capsys) -> None:
    cfg, folder, recommender = live
    user = recommender.models.data.user_index.ids[3]
    config = folder.parent / "serve.yaml"  # the run's config, as a user would keep it
    config.write_text(json.dumps(cfg.to_dict()))  # YAML reads JSON
    assert main(["recommend", "--config", str(config), "--user", str(user), "-k", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["publication"] == current(cfg)
    assert printed["items"] == response(recommender.recommend(user, 4))
    assert main(["recommend", "--config", str(config), "--user", str(user), "-k", "0"]) == 2
    assert all(isinstance(item["channels"], list) for item in printed["items"])
