"""The whole DAG on a tiny synthetic data set in a temp dir."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from features.search_features import SEARCH_FEATURES
from models.fm_trainer import load_model
from pipeline.catalogue import STAGE_NAMES, STAGES, artifact_path, get_stage, stage_dir
from pipeline.cli import main
from pipeline.dependencies import stage_code
from pipeline.io import MANIFEST, read_table, write_table
from pipeline.make import makefile_rules, write_stamps
from pipeline.runner import MissingInputError, run_stage, run_until
from pipeline.splitting import tied_held_out
from tests.conftest import REPO, only_channels, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_config(tmp_path_factory.mktemp("run"))
    run_until(cfg)
    return cfg


def test_every_stage_writes_its_manifest(finished) -> None:
    for name in STAGE_NAMES:
        manifest = json.loads((stage_dir(finished, name) / MANIFEST).read_text())
        assert manifest["stage"] == name and manifest["config"]["dataset"] == "tiny"


def test_features_label_valid_rows_only_and_cover_every_candidate(finished) -> None:
    folder = stage_dir(finished, "features")
    columns = json.loads((folder / "features.json").read_text())["columns"]["recommendation"]
    valid = read_table(folder / "valid" / "recommendation.parquet")
    test = read_table(folder / "test" / "recommendation.parquet")
    for phase, rows in (("valid", valid), ("test", test)):
        assert len(rows) == len(read_table(artifact_path(finished, "scored_candidates",
                                                         phase=phase)))
    assert "label" not in test.columns and "label" not in columns
    assert {"fm_score", "sequence_model_score", "item_popularity", "tag_affinity"} <= set(columns)
    search = json.loads((folder / "features.json").read_text())["columns"]["search"]
    assert set(SEARCH_FEATURES) <= set(search) and not set(SEARCH_FEATURES) & set(columns)
    searched = read_table(folder / "valid" / "search.parquet")
    assert searched["bm25_text"].notna().all() and (searched["query_frequency"] >= 0).all()
    clicked = read_table(stage_dir(finished, "split") / "valid.parquet")
    clicked = clicked[clicked["query"].isna()][["user_id", "item_id"]].drop_duplicates()
    hits = valid[valid["label"] == 1][["user_id", "item_id"]]
    assert len(hits) == len(hits.merge(clicked)) and 0 < len(hits) <= len(clicked)


def test_rankers_are_lightgbm_text_models_and_every_system_is_evaluated(finished) -> None:
    models = stage_dir(finished, "train-rank")
    for kind in ("recommendation", "search"):
        for objective in [finished.rank.objective, *finished.rank.compare]:
            # the folds chose the rounds; one refit on every valid request ranks the test
            folder = models / "test" / kind / objective
            assert [p.name for p in folder.iterdir() if p.is_dir()] == ["fold-0"]
            assert (folder / "fold-0" / "model.txt").read_text().startswith("tree")
        assert json.loads((models / kind / "blend.json").read_text())["weights"]
    metrics = json.loads((stage_dir(finished, "evaluate") / "metrics.json").read_text())
    systems = metrics["systems"]
    for name in ("final", "blend", "ltr:lambdarank", "ltr:binary", "merged (merge order)",
                 "search:final", "search:ltr:lambdarank", "fm (reranks candidates)"):
        low, high = systems[name]["ndcg@10_ci"]
        assert low <= systems[name]["ndcg@10"] <= high, name
    assert systems["final"] == systems["blend"]  # rank.blend is on by default
    lift = metrics["lift_ndcg@10"]["recommendation"]
    assert lift["system"] == "final" and lift["baseline"].startswith(("channel:", "f"))
    assert metrics["importance"]["recommendation"]["lambdarank"]
    search = metrics["search"]  # zero-result rate and head / tail NDCG per search system
    assert sum(search["cases"].values()) == systems["search:final"]["users"]
    assert set(search["zero_result_rate"]) == {n for n in systems if n.startswith("search:")}
    assert search["zero_result_rate"]["search:final"] == 0.0
    for segment in ("head", "tail"):
        if search["cases"][segment]:
            mean, low, high = search["ndcg@10"][segment]["search:final"]
            assert 0 <= low <= mean <= high <= 1
    report = (stage_dir(finished, "report") / "index.html").read_text()
    assert "Search: head and tail queries" in report


def test_recommendations_are_top_k_unseen_items_for_every_test_user(finished) -> None:
    recs = read_table(artifact_path(finished, "ranking", phase="test", kind="recommendation"))
    split = stage_dir(finished, "split")
    test = read_table(split / "test.parquet")
    fitted = pd.concat([read_table(split / f"{p}.parquet") for p in ("train", "valid")])
    assert set(recs["user_id"]) == set(test["user_id"])
    per_user = recs.groupby("user_id")["rank"].agg(["min", "max", "size", "nunique"])
    assert (per_user["min"] == 1).all() and (per_user["size"] == per_user["nunique"]).all()
    assert per_user["size"].max() <= finished.rank.top_k
    leaked = recs.merge(fitted[["user_id", "item_id"]], on=["user_id", "item_id"])
    assert leaked.empty


def test_metrics_cover_every_k_and_structure_beats_popularity(finished) -> None:
    metrics = json.loads((stage_dir(finished, "evaluate") / "metrics.json").read_text())
    for k in finished.evaluate.ks:
        for name in ("ndcg", "recall", "hit_rate", "precision", "mrr", "map", "coverage"):
            assert 0.0 <= metrics["systems"]["final"][f"{name}@{k}"] <= 1.0
    co = metrics["systems"]["channel:cooccurrence"]["ndcg@10"]
    pop = metrics["systems"]["channel:popularity"]["ndcg@10"]
    assert co > 1.3 * pop, (co, pop)
    assert (stage_dir(finished, "report") / "index.html").stat().st_size > 10_000


def test_the_split_says_how_many_held_out_events_the_seed_placed(finished) -> None:
    split = json.loads((stage_dir(finished, "split") / MANIFEST).read_text())
    parts = {name: read_table(artifact_path(finished, "split", part=name))
             for name in ("train", "valid", "test")}
    assert split["tied_held_out"] == tied_held_out(parts)
    report = (stage_dir(finished, "report") / "index.html").read_text()
    assert ("placed them by its seeded order" in report) == (
        split["tied_held_out"]["test"] >= 0.01)


def test_same_seed_gives_identical_outputs(finished, tmp_path: Path) -> None:
    again = tiny_config(tmp_path)
    run_until(again, "recall")
    for rel in ("split/test.parquet", "recall/valid/recommendation/candidates.parquet",
                "recall/test/recommendation/candidates.parquet", "recall/test/search/"
                "candidates.parquet"):
        pd.testing.assert_frame_equal(read_table(finished.root / rel), read_table(again.root / rel))


def test_a_stage_without_its_input_says_what_to_run(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    with pytest.raises(MissingInputError, match="make ingest"):
        run_stage(cfg, "split")


def test_cli_reports_bad_config_without_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nsource: {kind: synthetic}\nsplit: {strategy: nope}\n")
    assert main(["ingest", "--config", str(bad)]) == 2
    assert "split.strategy" in capsys.readouterr().err


def test_makefile_rules_follow_the_stage_table() -> None:
    rules = makefile_rules()
    run = [name for name in re.findall(r"\$\(RUN\) (\S+) --config", rules) if name != "stamps"]
    assert run == list(STAGE_NAMES)
    for stage in STAGES:
        target = f"$(D)/{stage.folder}/manifest.json"
        needs = re.search(rf"^{re.escape(target)}: (.*)$", rules, re.M).group(1).split()
        for upstream in stage.inputs:
            assert f"$(D)/{get_stage(upstream).folder}/manifest.json" in needs
        assert f"$(D)/.stamps/{stage.name}.json" in needs
        assert f"pipeline/stages/{stage.module}.py" in needs
        assert re.search(rf"^{stage.name}: {re.escape(target)}$", rules, re.M)
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"\.PHONY:(.*?)\n\n", makefile, re.S).group(1)
    for name in STAGE_NAMES:
        assert re.search(rf"\b{name}\b", phony), name
        assert re.search(rf"^## {name}: ", makefile, re.M), name


def test_a_stage_depends_on_its_own_code_only() -> None:
    ranker, recall = "models/ranker.py", "models/recall/sequence.py"
    code = {s.name: {str(p) for p in stage_code(s)} for s in STAGES}
    assert ranker in code["train-rank"] and ranker in code["rank"]
    assert not any(ranker in code[s] for s in ("ingest", "split", "recall", "train-fm"))
    assert recall in code["recall"] and recall in code["features"]
    assert recall not in code["ingest"] and recall not in code["train-rank"]
    registry = "models/recall/__init__.py"  # a new channel reruns what reads channels only
    assert registry in code["recall"] and registry not in code["ingest"]


def test_manifest_records_config_sections_and_code(finished) -> None:
    manifest = json.loads((stage_dir(finished, "train-rank") / MANIFEST).read_text())
    assert set(manifest["depends"]["config"]) == {"rank", "recall", "features", "seed", "threads",
                                                  "dask"}  # rank.engine: dask trains there
    assert "models/ranker.py" in manifest["depends"]["code"]
    assert "models/recall/sequence.py" not in manifest["depends"]["code"]


def test_config_stamps_change_only_for_stages_reading_the_changed_section(tmp_path) -> None:
    cfg = tiny_config(tmp_path)
    assert write_stamps(cfg) == list(STAGE_NAMES)
    assert write_stamps(cfg) == []
    changed = tiny_config(tmp_path, rank={"params": {"rounds": 41}})
    # the report shows the config's difference from the defaults: every section is its input
    assert write_stamps(changed) == ["train-rank", "rank", "evaluate", "report", "publish"]
    fewer = tiny_config(tmp_path, rank={"params": {"rounds": 41}}, publish={"active_days": 7})
    assert write_stamps(fewer) == ["recall", "features", "rank", "report", "publish"]


def test_train_fm_is_roll_forward_and_scores_every_candidate(finished) -> None:
    folder = stage_dir(finished, "train-fm")
    metrics = json.loads((folder / "metrics.json").read_text())
    for kind in ("fm", "ffm"):
        valid = metrics["valid"][kind]
        assert 0.5 < valid["valid_auc"] <= 1.0 and valid["samples_per_second"] > 0
        # the refit on train + valid trains exactly the epochs chosen on valid
        assert len(metrics["test"][kind]["epochs"]) == valid["best_epoch"] + 1
        model, extra = load_model(folder / "test" / kind)  # weights_only load
        assert extra["fields"][:2] == ["user_id", "item_id"]
    for phase in ("valid", "test"):
        scored = read_table(artifact_path(finished, "scored_candidates", phase=phase))
        recalled = read_table(artifact_path(finished, "candidates", phase=phase,
                                            kind="recommendation"))
        assert len(scored) == len(recalled)
        assert scored[["fm_score", "ffm_score"]].notna().all().all()
        assert scored["fm_score"].between(0, 1).all()
    systems = json.loads((stage_dir(finished, "evaluate") / "metrics.json").read_text())["systems"]
    assert "ffm (reranks candidates)" in systems


def test_a_search_only_channel_serves_search_and_not_recommendation(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, publish={"top_k": 50}, recall={"budget": 50, **only_channels(
        {"cooccurrence": {"quota": 30}, "popularity": {"quota": 20},
         "text_embedding": {"quota": 0, "recommend": False}},
        {"text_embedding": {"quota": 40}, "popularity": {"quota": 10}})})
    run_until(cfg, "recall")
    test = stage_dir(cfg, "recall") / "test"
    listed = test / "recommendation" / "channels"
    assert sorted(p.stem for p in listed.iterdir()) == ["cooccurrence", "popularity"]
    assert artifact_path(cfg, "channel_list", phase="test", kind="search",
                         channel="text_embedding").exists()
    candidates = artifact_path(cfg, "candidates", phase="test", kind="recommendation")
    assert "text_embedding_rank" not in read_table(candidates).columns


def test_per_user_values_average_to_the_reported_metrics(finished) -> None:
    metrics = json.loads((stage_dir(finished, "evaluate") / "metrics.json").read_text())
    per_user = read_table(stage_dir(finished, "evaluate") / "per_user.parquet")
    assert set(per_user["system"]) == set(metrics["systems"])
    means = per_user.groupby("system")[["ndcg@10", "recall@10", "mrr@10"]].mean()
    for system, row in metrics["systems"].items():
        for metric in ("ndcg@10", "recall@10", "mrr@10"):
            assert means.loc[system, metric] == pytest.approx(row[metric], abs=1e-12)
    rec = per_user[per_user["kind"] == "recommendation"]
    assert rec["fitted_events"].notna().all() and (rec["fitted_events"] >= 0).all()
    segments = metrics["segments"]
    assert sum(segments["users"]["counts"].values()) == metrics["users"]
    assert sum(segments["item_popularity"]["relevant"].values()) > 0


def test_a_planted_future_interaction_changes_nothing_computed_before_it(
        finished, tmp_path: Path) -> None:
    """Every artifact up to the final ranking is built from data before the test window:
    adding a test-window click must leave candidates, features, model scores, rankers and
    the ranking itself byte-for-byte as they were."""
    again = tiny_config(tmp_path)
    for folder in ("raw", "split"):
        shutil.copytree(finished.root / folder, again.root / folder)
    test = read_table(again.root / "split" / "test.parquet")
    seen = pd.concat([read_table(again.root / "split" / f"{p}.parquet")
                      for p in ("train", "valid", "test")])
    user = test["user_id"].iloc[0]
    new_item = sorted(set(read_table(again.root / "raw" / "items.parquet")["item_id"])
                      - set(seen.loc[seen["user_id"] == user, "item_id"]))[0]
    planted = test.iloc[[0]].assign(item_id=new_item, ts=test["ts"].max() + pd.Timedelta("1D"))
    write_table(pd.concat([test, planted], ignore_index=True), again.root / "split" /
                "test.parquet")
    for name in ("recall", "train-fm", "features", "train-rank", "rank"):
        run_stage(again, name)
    published = read_table(artifact_path(again, "ranking", phase="publish",
                                         kind="recommendation"))
    assert not ((published["user_id"] == user) & (published["item_id"] == new_item)).any()
    compared = 0
    for path in sorted(finished.root.rglob("*")):
        rel = path.relative_to(finished.root)
        if rel.parts[0] in ("raw", "split", "eval", "report", "publication") \
                or "publish" in rel.parts or path.name == MANIFEST:
            continue  # the published phase fits on everything up to the as-of, test too
        if path.suffix == ".parquet":
            pd.testing.assert_frame_equal(read_table(path), read_table(again.root / rel),
                                          obj=str(rel))
            compared += 1
        elif path.suffix in (".txt", ".npy") or path.name in ("blend.json", "tuned.json"):
            assert path.read_bytes() == (again.root / rel).read_bytes(), rel
            compared += 1
    assert compared > 40


def test_the_publication_lists_unseen_items_for_every_user(finished) -> None:
    recs = read_table(artifact_path(finished, "recommendations"))
    users = read_table(artifact_path(finished, "users"))
    everything = pd.concat([read_table(artifact_path(finished, "split", part=p))
                            for p in ("train", "valid", "test")])
    assert set(recs["user_id"]) == set(users["user_id"])
    per_user = recs.groupby("user_id")["rank"].agg(["min", "max", "size"])
    assert (per_user["min"] == 1).all() and (per_user["size"] == per_user["max"]).all()
    catalogue = len(read_table(artifact_path(finished, "items")))
    seen = everything.drop_duplicates(["user_id", "item_id"]).groupby("user_id").size()
    room = (catalogue - seen.reindex(per_user.index, fill_value=0)).clip(upper=100)
    assert (per_user["size"] == room).all()  # top_k, fewer only where the catalogue is
    assert recs.merge(everything[["user_id", "item_id"]]).empty
    channels = {*finished.recall.channels, "popularity-fill"}
    assert recs["channels"].str.split(",").map(lambda c: set(c) <= channels and c != [""]).all()
    assert not recs.duplicated(["user_id", "item_id"]).any()
    cold = read_table(artifact_path(finished, "cold_start"))
    assert {"*"} < set(cold["region"]) and (cold.groupby("region")["rank"].max() <= 100).all()
    served = stage_dir(finished, "publish")
    for name in ("channels/sequence/params.json", "fm/fm/encoder", "rankers/lambdarank",
                 "blend.json", "items.parquet"):
        assert (served / name).exists(), name
