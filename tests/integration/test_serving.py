"""One request, answered from the live publication by the API, the CLI or the HTTP
service, gives the batch's published list; the service validates and swaps."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import uvicorn

from features.candidate_features import FeatureContext
from features.recall_data import build_recall_data
from pipeline.catalogue import artifact_path
from pipeline.cli import main
from pipeline.io import read_table
from pipeline.release import PUBLISH, current
from pipeline.schedule import schedule
from pipeline.service import (
    Batcher,
    ComputeProcess,
    Live,
    RecommendRequest,
    answer,
    create_app,
)
from pipeline.serving import COLD_START, Ask, Published, Recommender, response, together
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_config(tmp_path_factory.mktemp("serve"))
    assert schedule(cfg, force=True) == 0
    folder = cfg.root / PUBLISH / current(cfg)
    return cfg, folder, Recommender.load(folder)


def test_a_computed_list_is_the_published_list(live) -> None:
    cfg, folder, recommender = live
    published = read_table(folder / "recommendations.parquet")
    users = published["user_id"].unique()
    for user in users[:: max(1, len(users) // 40)]:  # every 7th or so: 40 users
        want = published[published["user_id"] == user].reset_index(drop=True)
        got = recommender.compute(user)
        assert got["item_id"].tolist() == want["item_id"].tolist(), user
        assert got["channels"].tolist() == want["channels"].tolist(), user
        np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    assert (published.groupby("user_id").size() == cfg.publish.top_k).all()
    rankers = [ranker for kind in recommender.models.kinds.values()
               for ensemble in kind.rankers.values() for ranker in ensemble.rankers]
    assert rankers and all(ranker.threads == 1 for ranker in rankers)  # a few hundred rows


def test_a_plain_request_is_looked_up_and_equals_the_computed_answer(live, monkeypatch
                                                                     ) -> None:
    _, _, recommender = live
    published = recommender.models.published
    users = published.users[:: max(1, len(published.users) // 40)]
    computed = {(user, k): recommender.compute(user, k) for user in users for k in (3, None)}
    unknown_only = pd.DataFrame({"item_id": [-7]})  # ignored: still a plain request

    def not_computed(*args: object) -> None:
        raise AssertionError("a plain request was computed")

    monkeypatch.setattr(recommender, "computed", not_computed)
    for (user, k), want in computed.items():
        pd.testing.assert_frame_equal(recommender.recommend(user, k), want)
        pd.testing.assert_frame_equal(recommender.recommend(user, k, unknown_only), want)


def test_a_known_user_without_a_published_list_is_computed(live) -> None:
    _, folder, recommender = live
    lists = read_table(folder / "recommendations.parquet")
    user = lists["user_id"].iloc[0]
    unlisted = Recommender(replace(recommender.models, published=Published.of(
        lists[lists["user_id"] != user])))  # as a user active too long ago to be listed
    pd.testing.assert_frame_equal(unlisted.recommend(user), recommender.compute(user))


def test_the_test_phase_served_by_the_same_code_gives_the_batchs_test_lists(live) -> None:
    cfg, _, _ = live
    tested = Recommender.from_stages(cfg)
    batch = read_table(artifact_path(cfg, "ranking", phase="test", kind="recommendation"))
    for user in batch["user_id"].unique()[:15]:
        want = batch[batch["user_id"] == user].reset_index(drop=True)
        got = tested.recommend(user).head(len(want))
        assert got["item_id"].tolist() == want["item_id"].tolist(), user
        np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    searched = read_table(artifact_path(cfg, "ranking", phase="test", kind="search"))
    cases = read_table(artifact_path(cfg, "cases", phase="test")).set_index("case_id")
    for case in searched["case_id"].unique()[:15]:
        want = searched[searched["case_id"] == case].reset_index(drop=True)
        got = tested.search(cases.loc[case, "user_id"], cases.loc[case, "query"],
                            case=int(case)).head(len(want))
        assert got["item_id"].tolist() == want["item_id"].tolist(), case
        np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())


def test_the_publication_answers_search_with_its_search_rankers(live) -> None:
    _, folder, recommender = live
    assert (folder / "search" / "blend.json").is_file()
    cases = read_table(artifact_path(live[0], "cases", phase="test"))
    user, query = cases.loc[0, "user_id"], cases.loc[0, "query"]
    got = recommender.search(user, query, 5)
    assert len(got) == 5 and got["rank"].tolist() == [1, 2, 3, 4, 5]
    assert got["case_id"].eq(0).all() and got["user_id"].eq(user).all()
    with pytest.raises(ValueError, match="known users"):
        recommender.search("nobody", query, 5)


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


def test_a_click_changes_the_next_answer_and_unknown_items_are_reported(live) -> None:
    _, _, recommender = live
    changed = 0
    for user in recommender.models.data.user_index.ids[10:20]:
        before = recommender.recommend(user, 20)
        clicked = before["item_id"].iloc[0]
        recent = pd.DataFrame({"item_id": [clicked, -7]})
        after = recommender.recommend(user, 20, recent)
        assert clicked not in after["item_id"].tolist()  # now seen: never shown again
        rest = before["item_id"].tolist()[1:]
        changed += after["item_id"].tolist()[: len(rest)] != rest
        assert recommender.known_events(recent)[2] == [-7]
        pending = recommender.prepared(Ask(user, 10, recent=recent))
        assert pending.ignored == [-7]  # reported without parsing the events again
        assert pending.ask.recent is None  # the codes travel, not the frame (pickled)
        served, ignored = answer(recommender, RecommendRequest(
            user_id=int(user), k=20, recent=[{"item_id": int(clicked)}, {"item_id": -7}]))
        assert ignored == [-7]
        pd.testing.assert_frame_equal(served, after)
    # beyond the clicked item leaving: co-occurrence, the sequence and the features read it
    assert changed >= 5


def test_a_click_is_answered_as_data_rebuilt_with_it_answers(live) -> None:
    """A click's served answer (the log, history and statistics spliced for its user:
    ``with_events``) is the one computed from the fitting data rebuilt with the click
    appended and the statistics refitted on it, for clicks on held and new items,
    with and without a time, search included."""
    _, folder, recommender = live
    m = recommender.models
    log = m.data.log
    fit = pd.DataFrame({"user_id": m.data.user_index.decode(log["user"].to_numpy()),
                        "item_id": m.data.item_index.decode(log["item"].to_numpy()),
                        "ts": pd.to_datetime(log["ts"].to_numpy(), unit="s"),
                        "weight": log["weight"].to_numpy(), "query": log["query"]})
    cases = read_table(artifact_path(live[0], "cases", phase="test"))
    for n, user in enumerate(m.data.user_index.ids[30:36]):
        code = int(m.data.user_index.encode(np.array([user]))[0])
        held = m.data.history[code].indices
        items = m.data.item_index.ids[[held[0] if n % 2 and len(held) else (n * 37) % 200,
                                       (n * 11 + 5) % 200]]
        ts = [None, None] if n % 3 else [pd.Timestamp(m.data.now, unit="s"),
                                         pd.Timestamp(m.data.now - 5000, unit="s")]
        recent = pd.DataFrame({"item_id": items, "ts": ts})
        codes, seconds, _ = recommender.known_events(recent)
        clicked = pd.DataFrame({"user_id": user, "item_id": items, "weight": np.float32(1.0),
                                "ts": pd.to_datetime(seconds, unit="s")})
        data = build_recall_data(pd.concat([fit, clicked], ignore_index=True), m.data.items,
                                 m.data.users, m.data.user_index.ids)
        rebuilt = Recommender(replace(m, data=data, context=FeatureContext(
            data, m.cfg.features.recent_share)))
        pd.testing.assert_frame_equal(recommender.recommend(user, recent=recent),
                                      rebuilt.compute(user), check_exact=True)
        query = cases["query"].iloc[n]
        pd.testing.assert_frame_equal(recommender.search(user, query, recent=recent),
                                      rebuilt.search(user, query), check_exact=True)


def mixed_requests(recommender: Recommender, cfg) -> list[Ask]:
    """Recommendations with and without clicks (timed and not, so on five clocks, one a
    month past the others), a repeated user, searches with and without a click, a cold
    user and a bad k."""
    m = recommender.models
    users, items = m.data.user_index.ids, m.data.item_index.ids
    cases = read_table(artifact_path(cfg, "cases", phase="test"))
    at = pd.Timestamp(m.data.now + 50, unit="s")
    return [Ask(users[40], 7, recent=pd.DataFrame({"item_id": items[[3, 9]]})),
            Ask(users[41], recent=pd.DataFrame({"item_id": items[[3]]})),
            Ask(users[42]),
            Ask(users[40], 5, recent=pd.DataFrame({"item_id": items[[11]]})),
            Ask(users[43], recent=pd.DataFrame({"item_id": items[[9]], "ts": [at]})),
            Ask(users[44], recent=pd.DataFrame({"item_id": items[[5]],
                                                "ts": [at + pd.Timedelta(days=30)]})),
            Ask(cases["user_id"].iloc[0], 4, cases["query"].iloc[0], case=7),
            Ask(cases["user_id"].iloc[1], None, cases["query"].iloc[1],
                pd.DataFrame({"item_id": items[[3]]})),
            Ask(cases["user_id"].iloc[2], 6, cases["query"].iloc[2]),
            Ask("nobody", 3),
            Ask(users[45], cfg.publish.top_k + 1)]


def test_requests_answered_together_each_get_what_they_get_alone(live) -> None:
    cfg, _, recommender = live
    asks = mixed_requests(recommender, cfg)
    pending = [recommender.prepared(a, lookup=False) for a in asks[:9]]
    groups = together(pending)
    assert sorted(n for g in groups for n in g) == list(range(9)) and len(groups) < 9
    assert groups[0] == [0, 1, 2, 4, 5]  # clicks on five clocks share a pass, each on its own
    assert all(len({pending[n].code for n in g}) == len(g) for g in groups)
    assert all(len({pending[n].ask.query is None for n in g}) == 1 for g in groups)
    for got, ask in zip(recommender.answer(asks, lookup=False), asks, strict=True):
        alone = recommender.answer([ask], lookup=False)[0]
        if isinstance(alone, Exception):
            assert type(got) is type(alone) and str(got) == str(alone)
        else:
            pd.testing.assert_frame_equal(got, alone, check_exact=True)
    assert recommender.answer(asks, lookup=False)[0]["item_id"].tolist() != (
        recommender.compute(asks[0].user_id, 7)["item_id"].tolist())  # its clicks count


def test_the_batcher_answers_waiting_requests_in_one_pass(live, monkeypatch) -> None:
    cfg, folder, recommender = live
    asks = mixed_requests(recommender, cfg)[:9]
    passes = []
    finished = recommender.finished
    monkeypatch.setattr(recommender, "finished",
                        lambda pending: passes.append(len(pending)) or finished(pending))
    batcher, serving = Batcher(), Live(folder.name, recommender)
    futures = [batcher.submit(serving, recommender.prepared(a, lookup=False)) for a in asks]
    batcher.thread.start()  # everything is waiting already: one pass
    got = [f.result(timeout=120) for f in futures]
    batcher.close()
    assert passes == [len(asks)]
    for frame, ask in zip(got, asks, strict=True):
        pd.testing.assert_frame_equal(frame, recommender.answer([ask], lookup=False)[0])


def test_a_compute_process_answers_as_this_one_and_is_replaced_if_it_dies(live, monkeypatch
                                                                          ) -> None:
    cfg, folder, recommender = live
    pending = [recommender.prepared(a, lookup=False)
               for a in mixed_requests(recommender, cfg)[:9]]  # the ones to compute
    alone = recommender.finished(pending)
    before = set(multiprocessing.active_children())
    process = ComputeProcess(folder)

    def same(got: list) -> None:
        for frame, want in zip(got, alone, strict=True):
            if isinstance(want, Exception):
                assert type(frame) is type(want) and str(frame) == str(want)
            else:
                pd.testing.assert_frame_equal(frame, want, check_exact=True)

    def killed() -> int:
        """Kill the process while idle; its pid, once the pool knows it is dead."""
        [worker] = set(multiprocessing.active_children()) - before
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=30)
        with pytest.raises(BrokenProcessPool):  # returns once the pool has seen it die
            process.pool.submit(int).result()
        return worker.pid

    same(process.finished(pending))
    first = killed()
    same(process.finished(pending))  # dead while idle: replaced before these are sent
    [second] = set(multiprocessing.active_children()) - before
    assert second.pid != first

    def cannot_start() -> None:
        raise MemoryError("no room for another process")

    killed()
    monkeypatch.setattr(process, "start", cannot_start)
    for _ in range(2):  # while none can start, requests fail (503 in the service)...
        with pytest.raises(BrokenProcessPool):
            process.finished(pending)
    monkeypatch.undo()
    same(process.finished(pending))  # ...and the next one that starts serves them

    # dead while computing: those requests fail, and a new process serves the next
    [third] = set(multiprocessing.active_children()) - before
    died: Future = Future()
    died.set_exception(BrokenProcessPool("killed while computing"))
    monkeypatch.setattr(process.pool, "submit", lambda *args: died)
    with pytest.raises(BrokenProcessPool):
        process.finished(pending)
    third.join(timeout=30)  # let go by the replacement (shut down without waiting)
    same(process.finished(pending))
    [fourth] = set(multiprocessing.active_children()) - before
    assert fourth.pid != third.pid
    process.close()
    assert fourth.exitcode is not None


def test_a_request_whose_compute_process_died_is_told_to_retry(live, monkeypatch) -> None:
    """A dead compute process fails the requests it held (``ComputeProcess.finished``):
    their clients get 503 with a message and a Retry-After, not a bare 500."""
    cfg, folder, recommender = live
    user = recommender.models.data.user_index.ids[5].item()
    some_item = recommender.models.data.item_index.ids[0].item()

    def died(self, pending):
        raise BrokenProcessPool("the process was killed")

    monkeypatch.setattr(Recommender, "finished", died)
    with Server(create_app(cfg, process=False)) as service:
        status, reply = service.recommend(user_id=user, k=3, recent=[{"item_id": some_item}])
        assert status == 503 and "retry" in reply["detail"]
        assert service.recommend(user_id=user, k=3)[0] == 200  # a looked-up list still is


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (an unreaped one is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.split()[1:2] == ["Z"] for line in status
                           if line.startswith("State:"))
    except FileNotFoundError:
        return False


def test_a_compute_process_ends_when_its_service_is_killed(live) -> None:
    _, folder, _ = live
    service = subprocess.Popen(  # a service stand-in that starts one and waits
        [sys.executable, "-c", "import sys, time\n"
         "from pipeline.service import ComputeProcess\n"
         "import multiprocessing\n"
         "p = ComputeProcess(sys.argv[1])\n"
         "print(multiprocessing.active_children()[0].pid, flush=True)\n"
         "time.sleep(600)\n", str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        computing = int(service.stdout.readline())
        assert running(computing)
        service.send_signal(signal.SIGKILL)  # no shutdown, no atexit
        service.wait(timeout=30)
        deadline = time.time() + 30
        while running(computing) and time.time() < deadline:
            time.sleep(0.1)
        assert not running(computing)
    finally:
        service.kill()
        service.wait()


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


class Server:
    """The service on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()

    def call(self, path: str, body: bytes | Iterator[bytes] | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def recommend(self, **fields) -> tuple[int, dict]:
        return self.call("/recommend", json.dumps(fields).encode())


def assert_bad_requests_refused(service: Server, top_k: int) -> None:
    """Each malformed request gets its 4xx with a message."""
    bad = {"missing user": {"k": 3}, "unknown field": {"user_id": 1, "path": "/etc"},
           "k zero": {"user_id": 1, "k": 0}, "user as list": {"user_id": [1]},
           "k as text": {"user_id": 1, "k": "many"},
           "bad time": {"user_id": 1, "recent": [{"item_id": 1, "ts": "yesterday"}]},
           "too many events": {"user_id": 1, "recent": [{"item_id": 1}] * 101},
           "empty query": {"user_id": 1, "query": ""},
           "id past int64": {"user_id": 10**20}, "k as a string": {"user_id": 1, "k": "5"}}
    for why, fields in bad.items():
        status, reply = service.recommend(**fields)
        assert status == 422 and reply["detail"], why
    status, reply = service.recommend(user_id=1, k=top_k + 1)
    assert status == 400 and "publish.top_k" in reply["detail"]
    assert service.call("/recommend", b"{not json")[0] == 422
    assert service.call("/recommend", b" " * 20_000)[0] == 413
    streamed = iter([b'{"user_id": 1, "k": 3' + b" " * 10_000, b" " * 10_000 + b"}"])
    assert service.call("/recommend", streamed)[0] == 413  # chunked: no length given


def test_the_service_answers_validates_and_swaps_publications_without_a_failure(live) -> None:
    cfg, folder, recommender = live
    user = recommender.models.data.user_index.ids[5]
    before = set(multiprocessing.active_children())
    with Server(create_app(cfg, poll_seconds=0.1)) as service:
        [computing] = set(multiprocessing.active_children()) - before
        status, health = service.call("/health")
        assert status == 200 and health["publication"] == folder.name
        status, answer = service.recommend(user_id=user.item(), k=6)
        assert status == 200 and answer["items"] == response(recommender.recommend(user, 6))
        assert service.recommend(user_id="nobody", k=3)[1]["items"][0]["channels"] == [
            COLD_START]
        for who in (user.item(), "nobody"):  # answered without computing, still reported
            assert service.recommend(user_id=who, k=3, recent=[{"item_id": "no-such-item"}]
                                     )[1]["ignored_items"] == ["no-such-item"]
        first = answer["items"][0]["item_id"]
        status, clicked = service.recommend(user_id=user.item(), k=6, recent=[
            {"item_id": first, "ts": "2030-01-01T00:00:00"}, {"item_id": "no-such-item"}])
        assert status == 200 and clicked["ignored_items"] == ["no-such-item"]
        assert first not in [i["item_id"] for i in clicked["items"]]
        assert clicked["items"] == response(recommender.recommend(user, 6, recent=pd.DataFrame(
            {"item_id": [first], "ts": [pd.Timestamp("2030-01-01")]})))  # its own process
        cases = read_table(artifact_path(cfg, "cases", phase="test"))
        asker, query = cases.loc[0, "user_id"].item(), cases.loc[0, "query"]
        status, found = service.recommend(user_id=asker, query=query, k=4)
        assert status == 200 and found["items"] == response(recommender.search(asker, query, 4))
        assert_bad_requests_refused(service, cfg.publish.top_k)
        assert recommender.recommend(10**20, 3)["channels"].eq(COLD_START).all()

        replies, computed, stop = [], [], threading.Event()
        some_item = recommender.models.data.item_index.ids[0].item()

        def client(sent: list, recent: list) -> None:
            while not stop.is_set():
                sent.append(service.recommend(user_id=user.item(), k=10, recent=recent))

        senders = [threading.Thread(target=client, args=(replies, [])),
                   threading.Thread(target=client, args=(computed, [{"item_id": some_item}]))]
        for sender in senders:
            sender.start()
        last = read_table(artifact_path(cfg, "split", part="test"))["ts"].max()
        earlier = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(
            update={"as_of": str(last - pd.Timedelta(days=4))})})
        assert schedule(earlier, force=True) == 0
        released = current(cfg)
        assert released != folder.name
        deadline = time.time() + 60
        while service.call("/health")[1]["publication"] != released and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a few requests on the new publication
        stop.set()
        for sender in senders:
            sender.join()
        service.recommend(user_id=user.item(), k=3, recent=[{"item_id": some_item}])
        computing.join(timeout=30)  # nothing holds the old publication: its process ends
        assert computing.exitcode is not None
    for sent in (replies, computed):  # looked up, and computed in each publication's process
        assert sent and all(status == 200 for status, _ in sent)
        served = [reply["publication"] for _, reply in sent]
        assert served[0] == folder.name and served[-1] == released
        assert served == sorted(served, key=[folder.name, released].index)  # one switch
    published = read_table(cfg.root / PUBLISH / released / "recommendations.parquet")
    assert [i["item_id"] for i in replies[-1][1]["items"]] == published[
        published["user_id"] == user]["item_id"].head(10).tolist()


def test_past_its_admission_bound_the_service_answers_503_at_once(live) -> None:
    cfg, _, recommender = live
    users = [int(u) for u in recommender.models.data.user_index.ids[:8]]
    clicked = [{"item_id": recommender.models.data.item_index.ids[0].item()}]
    with Server(create_app(cfg, max_waiting=1)) as service:
        replies: list[tuple[int, dict]] = []
        senders = [threading.Thread(target=lambda u=u: replies.append(  # computed: slow
            service.recommend(user_id=u, k=5, recent=clicked))) for u in users]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    statuses = sorted(status for status, _ in replies)
    assert set(statuses) == {200, 503} and len(statuses) == 8
    assert all("busy" in reply["detail"] for status, reply in replies if status == 503)
