"""HTTP service over the live publication: ``POST /recommend``, ``GET /health``.

``python -m pipeline serve --config C [--host 127.0.0.1] [--port 8000]``. JSON in and
out: ``{"user_id": 17, "k": 10, "query": "red shoes", "recent": [{"item_id": 5, "ts":
"2026-03-02T10:00"}]}`` (``query`` makes it a search request; ``recent``: clicks newer
than the publication, see ``Recommender.recommend``, and items it does not know come
back under ``ignored_items``). Every field is validated: unknown fields, wrong types
(ids are strings or 64-bit integers, ``k`` an integer), a ``k`` out of range, more than
``MAX_RECENT`` events and a body over ``MAX_BODY`` bytes, declared or streamed, get a
4xx with a message; a request names a user, never a file. An unknown user is not an
error: it gets the cold-start list of its region.

A thread watches ``publish/current``; when a scheduled run releases a new publication
it loads it beside the one serving and then swaps one reference, so a request is
answered whole by either the old or the new publication and none is dropped. One
thread hands out the computing (``Batcher``): each time it is free it takes every
admitted request waiting and has them answered together (``Recommender.finished``), so
under load a request waits for one batch instead of a queue of single ones, and each
still gets what it would get alone. The batch code runs in a process of its own per
publication (``ComputeProcess``), so it never waits for this interpreter's lock while
the request threads parse, validate and look up. Past ``MAX_WAITING`` admitted, a
request gets 503 at once rather than a place in a queue that only grows.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipeline import schema as S
from pipeline.config import Config
from pipeline.release import PUBLISH, current
from pipeline.serving import Ask, Pending, Recommender, response

log = logging.getLogger("pipeline")
MAX_BODY = 16_384  # bytes: a request is a user id and a few numbers
MAX_RECENT = 100  # recent events per request: a session's worth
MAX_WAITING = 32  # requests admitted at once (so at most one batch); more get 503 at once
Id = (Annotated[int, Field(strict=True, ge=-2**63, le=2**63 - 1)]
      | Annotated[str, StringConstraints(min_length=1, max_length=256)])


class RecentEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    ts: datetime | None = Field(None, description="when (ISO 8601); none: just now")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    k: int = Field(10, strict=True, ge=1, le=1000,
                   description="items wanted (at most publish.top_k)")
    query: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        None, description="search text: a search request instead of a recommendation")
    recent: list[RecentEvent] = Field(default_factory=list, max_length=MAX_RECENT,
                                      description="events newer than the publication")


def loaded(folder: Path) -> Recommender:
    """A publication's models, loaded to serve for a long time: their objects are then
    left out of the garbage collector's full passes (``gc.freeze``), each of which
    otherwise scans them all and holds every request for 154-194 ms on the synthetic
    publication (320k objects). One full pass first, so no garbage of the load is kept:
    a pause like those, once per publication. A publication let go is still freed: by
    reference counts, having no reference cycles (a full pass after dropping one finds
    none)."""
    recommender = Recommender.load(folder)
    gc.collect()
    gc.freeze()
    return recommender


_computing: Recommender | None = None  # in a ComputeProcess: the publication it serves


def _load_publication(folder: str) -> None:
    global _computing
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True,
                         name="service-watch").start()
    _computing = loaded(Path(folder))


def _exit_with(service: int) -> None:
    """End this compute process when the service's ends, even killed outright: its
    executor then never tells the process to stop, and it would hold the publication's
    memory on its own."""
    multiprocessing.connection.wait([service])
    os._exit(0)


def _finished(pending: list[Pending]) -> list[pd.DataFrame | Exception]:
    assert _computing is not None, "the publication is loaded first"
    return _computing.finished(pending)


class ComputeProcess:
    """A process of its own that loads one publication and computes its requests
    (``Recommender.finished``): the batch code's CPU runs beside this interpreter, not
    inside it, so it neither waits for nor holds up the threads answering HTTP (at 100
    requests/s with a click: 89-97 answered a second instead of 56-91, over both
    publications and two rounds; ``benchmarks/RESULTS.md``). A fresh interpreter
    (``spawn``): forking one that runs threads can copy a held lock. The process ends
    once nothing holds this object (a replaced publication's, when its last request is
    answered: the executor stops its worker when it is collected) or at ``close``.
    While a new publication loads, both are loaded in both processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.start()

    def start(self) -> None:
        """A fresh process with the publication loaded (a load's error raised here)."""
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            pool.submit(_load_publication, str(self.folder)).result()
        except BaseException:
            pool.shutdown(wait=False)
            raise
        self.pool = pool

    def finished(self, pending: list[Pending]) -> list[pd.DataFrame | Exception]:
        """The requests' lists (or errors), computed in the process. A process known dead
        when they come (killed while idle: the executor notices within moments) is
        replaced first, so they are answered. If it dies while computing them (killed,
        out of memory), or in the moment before its death is noticed, they fail (the
        service answers them 503, to retry) and a new one serves the next; one that
        cannot start fails those alike, and the ones after try again."""
        try:
            computing = self.pool.submit(_finished, pending)
        except BrokenProcessPool:
            self.replace()
            computing = self.pool.submit(_finished, pending)  # still broken: not replaced
        try:
            return computing.result()
        except BrokenProcessPool:
            self.replace()
            raise

    def replace(self) -> None:
        """A new process for a dead one (a failure to start is logged: the pool stays
        broken, and the next requests try again)."""
        log.error("[serve] the compute process for %s died; starting another",
                  self.folder.name)
        self.pool.shutdown(wait=False)  # its threads and queues let go
        try:
            self.start()
        except Exception:
            log.exception("[serve] could not start another compute process for %s",
                          self.folder.name)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass(frozen=True)
class Live:
    """The publication serving now: its name, its loaded models, and the process that
    computes its requests (none: computed in this one)."""

    name: str
    recommender: Recommender
    process: ComputeProcess | None = None

    def finished(self, pending: list[Pending]) -> list[pd.DataFrame | Exception]:
        return (self.process or self.recommender).finished(pending)


class LivePublication:
    """Follows ``publish/current``: ``refresh`` loads a newly released publication (and
    its compute process, with ``process``) and swaps it in with one assignment."""

    def __init__(self, cfg: Config, process: bool = True) -> None:
        self.cfg, self.process = cfg, process
        name = current(cfg)
        if name is None:
            raise FileNotFoundError(f"no live publication under {cfg.root / PUBLISH}: run "
                                    "`python -m pipeline schedule` first")
        self.live = self.load(name)
        self.failed: str | None = None

    def load(self, name: str) -> Live:
        folder = self.cfg.root / PUBLISH / name
        return Live(name, loaded(folder), ComputeProcess(folder) if self.process else None)

    def refresh(self) -> bool:
        """Swap in the publication ``current`` points to, if it changed (a release that
        failed to load is not tried again until ``current`` moves on)."""
        name = current(self.cfg)
        if name is None or name in (self.live.name, self.failed):
            return False
        self.failed = name  # until it loads
        live = self.load(name)  # the old one serves on meanwhile
        self.failed = None
        self.live = live
        log.info("[serve] now serving %s", name)
        return True


def watch(publication: LivePublication, stop: threading.Event, seconds: float) -> None:
    while not stop.wait(seconds):
        try:
            publication.refresh()
        except Exception:  # a broken release must not take down the one serving
            log.exception("[serve] could not load %s; serving %s still", publication.failed,
                          publication.live.name)


def ask_of(body: RecommendRequest) -> Ask:
    """A validated request as ``Recommender.answer`` takes it: a recommendation, or a
    search where it has a query."""
    recent = pd.DataFrame({S.ITEM: pd.Series([e.item_id for e in body.recent], dtype=object),
                           S.TS: pd.Series([e.ts for e in body.recent], dtype=object)}
                          ) if body.recent else None
    return Ask(body.user_id, body.k, body.query, recent)


def prepared(recommender: Recommender, ask: Ask) -> tuple[pd.DataFrame | Pending, list]:
    """``Recommender.prepared``, and the recent item ids the publication does not know:
    a request to compute carries them, parsed once; the others (a cold start, a listed
    user without a known recent item) parse their events here."""
    found = recommender.prepared(ask)
    if isinstance(found, Pending):
        return found, found.ignored
    return found, recommender.known_events(ask.recent)[2]


def answer(recommender: Recommender, body: RecommendRequest) -> tuple[pd.DataFrame, list]:
    """One validated request's list and the recent items the publication does not know,
    answered alone, as the service answers it."""
    found, ignored = prepared(recommender, ask_of(body))
    if isinstance(found, Pending):
        [found] = recommender.finished([found])
        if isinstance(found, Exception):
            raise found
    return found, ignored


class Batcher:
    """The one thread that has requests computed: it takes every request waiting, has
    those of each publication answered together (``Live.finished``) and hands each its
    list (or its error) through a future."""

    def __init__(self) -> None:
        self.waiting: queue.SimpleQueue[tuple[Live, Pending, Future] | None] = (
            queue.SimpleQueue())
        self.thread = threading.Thread(target=self.run, daemon=True, name="batcher")

    def submit(self, live: Live, request: Pending) -> Future:
        found: Future = Future()
        self.waiting.put((live, request, found))
        return found

    def run(self) -> None:
        while (first := self.waiting.get()) is not None:
            batch, stop = [first], False
            while not self.waiting.empty():
                if (more := self.waiting.get()) is None:
                    stop = True
                    break
                batch.append(more)
            for live in {id(entry[0]): entry[0] for entry in batch}.values():
                mine = [entry for entry in batch if entry[0] is live]
                try:
                    lists = live.finished([request for _, request, _ in mine])
                except Exception as err:  # a fault must not stop the thread
                    lists = [err] * len(mine)
                for (_, _, found), answered in zip(mine, lists, strict=True):
                    if isinstance(answered, Exception):
                        found.set_exception(answered)
                    else:
                        found.set_result(answered)
            if stop:
                return

    def close(self) -> None:
        self.waiting.put(None)
        self.thread.join()


def create_app(cfg: Config, poll_seconds: float = 2.0, max_waiting: int = MAX_WAITING,
               process: bool = True) -> BoundedBody:
    """The service's ASGI app (``process``: computed requests in a ``ComputeProcess``,
    else in this one)."""
    publication = LivePublication(cfg, process)
    batcher = Batcher()
    waiting = threading.BoundedSemaphore(max_waiting)  # admitted: computing or queued

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(publication, stop, poll_seconds),
                                   daemon=True, name="publication-watcher")
        watcher.start()
        batcher.thread.start()
        yield
        stop.set()
        watcher.join()
        batcher.close()
        if publication.live.process is not None:
            publication.live.process.close()

    app = FastAPI(title="recsys-pipeline", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:  # on the event loop: never queued behind work
        live = publication.live
        return {"status": "ok", "publication": live.name,
                "users": live.recommender.models.data.n_users}

    @app.post("/recommend")
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        live = publication.live  # one publication answers the whole request
        if not waiting.acquire(blocking=False):
            raise HTTPException(503, f"busy: {max_waiting} requests are waiting; retry",
                                headers={"Retry-After": "1"})
        ask = ask_of(body)
        try:  # a plain request is looked up here; one to compute waits for the batcher
            lists, ignored = prepared(live.recommender, ask)
            if isinstance(lists, Pending):
                lists = batcher.submit(live, lists).result()
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        except BrokenProcessPool:  # killed or out of memory: ComputeProcess starts another
            raise HTTPException(503, "the process computing this request stopped; a new one "
                                "is starting: retry", headers={"Retry-After": "1"}) from None
        finally:
            waiting.release()
        return {"user_id": body.user_id, "publication": live.name, "items": response(lists),
                "ignored_items": ignored}

    return BoundedBody(app, MAX_BODY)


class BoundedBody:
    """ASGI wrapper refusing a request body over ``limit`` bytes with 413, whether the
    client declares its length or streams it in chunks: the body is counted as it
    arrives, and once over the limit the app sees a disconnect and its reply is
    replaced by the 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self.refuse(send)
        received, over = 0, False

        async def counted() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                over = over or received > self.limit
            return {"type": "http.disconnect"} if over else message

        async def unless_over(message: dict) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:  # the app's own error; over the limit, it only saw the cut-off
                raise
        if over:
            await self.refuse(send)

    async def refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, workers=1, log_level="warning")
