"""Each phase's fitting data and targets, read through a stage's declared inputs.

Recall and features both rebuild a phase's ``RecallData`` from the split: they must
encode users and items identically, so both come here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from features.recall_data import RecallData, build_recall_data
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.protocol import PHASES, Phase


def phase_inputs(io: StageIO) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per phase, the fitting interactions and the target ones it answers (a backtest
    phase: a seeded sample of users where ``recall.valid_users`` or ``test_users`` asks
    for one; the published phase: one row per active user, see ``publish_targets``)."""
    cfg = io.cfg
    wanted_parts = (p for phase in PHASES for p in (*phase.fit, phase.target) if p)
    parts = {part: io.read("split", part=part) for part in dict.fromkeys(wanted_parts)}
    found = {}
    for phase in PHASES:
        fit = fitting(parts, phase)
        if phase.target is None:
            found[phase.name] = (fit, publish_targets(io, fit))
            continue
        found[phase.name] = (fit, sampled(parts[phase.target], sample_size(cfg, phase),
                                          cfg.seed))
    return found


def sample_size(cfg: Config, phase: Phase) -> int:
    """How many of a backtest phase's users recall answers (0: all of them)."""
    return cfg.recall.valid_users if phase.tunes else cfg.recall.test_users


def sampled(targets: pd.DataFrame, users: int, seed: int) -> pd.DataFrame:
    """The rows of a seeded sample of ``users`` users (all rows when 0 or no fewer):
    recall answers these, and evaluate judges these, not the users left out."""
    if not users or targets[S.USER].nunique() <= users:
        return targets
    picked = np.random.default_rng(seed).choice(np.sort(targets[S.USER].unique()),
                                                size=users, replace=False)
    return targets[targets[S.USER].isin(picked)]


def publish_targets(io: StageIO, fit: pd.DataFrame) -> pd.DataFrame:
    """The users a publication is for: every user of the users table, or those with an
    event within ``publish.active_days`` of the last one in the data."""
    return active_users(io.read("users", columns=[S.USER]), fit, io.cfg.publish.active_days)


def active_users(users: pd.DataFrame, fit: pd.DataFrame, days: int | None) -> pd.DataFrame:
    """``users`` with an event within ``days`` of the last one in ``fit`` (all: None)."""
    if days is not None and len(fit):
        since = fit[S.TS].max() - pd.Timedelta(days=days)
        users = users[users[S.USER].isin(fit.loc[fit[S.TS] >= since, S.USER])]
    return users[[S.USER]].reset_index(drop=True)


def fitting(parts: dict[str, pd.DataFrame], phase: Phase) -> pd.DataFrame:
    """The split parts ``phase`` fits on, in order, as one table."""
    if len(phase.fit) == 1:
        return parts[phase.fit[0]]
    return pd.concat([parts[p] for p in phase.fit], ignore_index=True)


def phase_data(io: StageIO, fit: pd.DataFrame, targets: pd.DataFrame) -> RecallData:
    """The encoded fitting data of a phase, with the same user codes every stage sees."""
    return build_recall_data(fit, io.read("items"), io.read("users"), targets[S.USER].unique())


def item_catalogue(io: StageIO) -> IdIndex:
    """The item vocabulary every stage ranks over: all ingested items, in table order."""
    return IdIndex(io.read("items", columns=[S.ITEM])[S.ITEM])
