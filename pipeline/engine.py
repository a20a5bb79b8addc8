"""Where per-shard work runs: in this process, or as tasks on a Dask cluster.

The stages that grow with users (retrieval, FM scoring, features, ranking) cut their
work into shards (a chunk of requests, a part of a partitioned table) and hand a
function over the shards to ``engine.map``. Each call writes its shard's part itself
(``pipeline.io.write_part``, atomic) and returns only a small summary, so under Dask the
rows go from a worker straight to the shared ``data_dir`` and never through the client.
The same function runs on the same shards under both engines, hence the same bytes.

What travels: the ``shared`` arguments (fitted models, a phase's encoded data) once to
each worker per call, each shard's description (a chunk of request keys or a part's
path) to one worker, each summary back.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from pipeline.config import Config

log = logging.getLogger("pipeline")
Shard = TypeVar("Shard")
Result = TypeVar("Result")


class Engine(Protocol):
    def map(self, fn: Callable[..., Result], shards: Sequence[Shard], **shared: Any
            ) -> Iterator[Result]:
        """``fn(shard, **shared)`` for every shard, yielded in shard order."""
        ...


class LocalEngine:
    """A plain loop in this process: the default, and the fastest on one machine
    (NOTES.md: on 2 cores no engine beat it)."""

    def map(self, fn: Callable[..., Result], shards: Sequence[Shard], **shared: Any
            ) -> Iterator[Result]:
        for shard in shards:
            yield fn(shard, **shared)


class DaskEngine:
    """Shards as tasks on a ``dask.distributed`` cluster; ``shared`` is sent once to
    every worker (scattered, broadcast) rather than with each task."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, fn: Callable[..., Result], shards: Sequence[Shard], **shared: Any
            ) -> Iterator[Result]:
        if not shards:
            return
        # scattered as one list, so each value is one object under a fresh key (a dict
        # or list scattered alone is split into its elements, keyed by their names)
        names = list(shared)
        sent = dict(zip(names, self.client.scatter([shared[n] for n in names],
                                                   broadcast=True, hash=False), strict=True))
        # as one dict, not keywords: submit's own (key, retries, ...) must not catch them
        futures = [self.client.submit(_call, fn, shard, sent, pure=False) for shard in shards]
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            # cancel does not stop a task already running: let every task end, so none
            # writes into the stage's folder after the stage has given it up
            from dask.distributed import wait

            wait(futures)
            raise
        finally:
            self.client.cancel([*futures, *sent.values()])


def _call(fn: Callable[..., Result], shard: Shard, shared: dict[str, Any]) -> Result:
    return fn(shard, **shared)


_clients: dict[tuple, Any] = {}


def dask_client(cfg: Config) -> Any:
    """One client per cluster setting for the life of the process (a scheduled run's
    stages share it), closed at exit."""
    from dask.distributed import Client, LocalCluster

    key = (cfg.dask.address, cfg.dask.workers, cfg.dask.threads_per_worker)
    if key not in _clients:
        if cfg.dask.address:
            client = Client(cfg.dask.address)
        else:
            cluster = LocalCluster(n_workers=cfg.dask.workers,
                                   threads_per_worker=cfg.dask.threads_per_worker,
                                   dashboard_address=None)
            client = Client(cluster)
            atexit.register(cluster.close)
        atexit.register(client.close)
        log.info("[engine] dask: %s", client)
        _clients[key] = client
    return _clients[key]


def engine_for(cfg: Config) -> Engine:
    """The engine ``cfg.engine`` names."""
    return DaskEngine(dask_client(cfg)) if cfg.engine == "dask" else LocalEngine()
