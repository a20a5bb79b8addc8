"""Everything a recall channel may learn from, encoded once per fit.

Built from the fitting interactions only (plus the item and user tables, which carry no
labels), so a channel fitted on it cannot see the period it is evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.interactions import IdIndex, interaction_matrix

SECONDS_PER_DAY = 86_400  # timestamps are unix seconds; half-lives set in days
_SECOND = np.timedelta64(1, "s")


@dataclass
class RecallData:
    """Encoded fitting data.

    ``log`` has one row per fitting interaction: ``user`` and ``item`` codes, ``ts`` in
    unix seconds, ``weight``, and ``query`` where present, sorted by (user, ts, item).
    ``items`` and ``users`` are the side tables aligned with the indices (row i is code i).
    """

    user_index: IdIndex
    item_index: IdIndex
    history: sp.csr_matrix
    log: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    now: int

    @property
    def n_users(self) -> int:
        return len(self.user_index)

    @property
    def n_items(self) -> int:
        return len(self.item_index)

    @cached_property
    def span(self) -> int:
        """Seconds from the first fitting event to ``now``: the scale half-lives given as
        shares of the log are measured in (0 for a log without time)."""
        return int(self.now - self.log["ts"].min()) if len(self.log) else 0

    def with_events(self, user: int, items: np.ndarray, ts: np.ndarray) -> RecallData:
        """This data with events of ``user`` (item codes, unix seconds) that it does not
        hold yet: what a served request sees of clicks made after the fit. The fitted
        models stay as they are; histories, sequences, seen items and ``now`` move on.
        Costs a copy of the history and the log (linear in the data)."""
        log = self.log
        users = log["user"].to_numpy()
        lo, hi = np.searchsorted(users, user, "left"), np.searchsorted(users, user, "right")
        added = pd.DataFrame({"user": np.full(len(items), user, np.int64),
                              "item": np.asarray(items, np.int64),
                              "ts": np.asarray(ts, np.int64),
                              "weight": np.ones(len(items), np.float32)})
        block = pd.concat([log.iloc[lo:hi], added], ignore_index=True).sort_values(
            ["ts", "item"], kind="stable")
        log = pd.concat([log.iloc[:lo], block, log.iloc[hi:]], ignore_index=True)
        extra = sp.csr_matrix((np.ones(len(items), np.float32), (added["user"], added["item"])),
                              shape=self.history.shape)
        history = ((self.history + extra) > 0).astype(self.history.dtype).tocsr()
        return replace(self, history=history, log=log,
                       now=max(self.now, int(added["ts"].max()) if len(added) else 0))


def to_seconds(ts: pd.Series) -> np.ndarray:
    return ((ts.to_numpy("datetime64[us]") - np.datetime64(0, "us")) // _SECOND).astype(np.int64)


def build_recall_data(fit: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                      extra_users: np.ndarray | None = None) -> RecallData:
    """Encode ``fit`` against the full item catalogue; ``extra_users`` (e.g. cold test
    users) get an index row with an empty history."""
    item_index = IdIndex(items["item_id"])
    user_ids = fit["user_id"] if extra_users is None else pd.concat(
        [fit["user_id"], pd.Series(extra_users)], ignore_index=True)
    user_index = IdIndex(user_ids)
    log = pd.DataFrame({
        "user": user_index.encode(fit["user_id"]),
        "item": item_index.encode(fit["item_id"]),
        "ts": to_seconds(fit["ts"]),
        "weight": fit["weight"].to_numpy(np.float32),
    })
    if "query" in fit.columns:
        log["query"] = fit["query"].to_numpy()
    log = log[log["item"] >= 0].sort_values(["user", "ts", "item"], kind="stable")
    log = log.reset_index(drop=True)
    history = interaction_matrix(log["user"].to_numpy(), log["item"].to_numpy(),
                                 len(user_index), len(item_index))
    history.data[:] = 1.0  # binary: repeated (user, item) rows were deduplicated by the split
    aligned_users = pd.DataFrame({"user_id": user_index.ids}).merge(
        users, on="user_id", how="left")
    return RecallData(user_index, item_index, history, log,
                      items.reset_index(drop=True), aligned_users,
                      int(log["ts"].max()) if len(log) else 0)
