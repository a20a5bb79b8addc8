"""publish: the publication candidate: every active user's list and what serves it.

Gathers the published phase's final ranking (``recommendations``), a per-region list
for users the data has never seen (``cold_start``: the items most users of the region
used over all the data, and a global list under region ``*``; such a user has no
history to exclude), and, under ``served``, everything a later request needs: the
published phase's fitted channels, FM/FFM models and encoders, the rankers and blend,
the feature columns, the choices made on valid, the search rankers and blend (those
evaluated on test: no later window has search clicks to train on), the item and user
id tables and the fitting log itself (``fitting/``: the histories seen items are
excluded by, and what the feature statistics are computed from). Files are hard links
where the filesystem allows. Whether it goes live is the release step's
decision (``pipeline.release``), not this stage's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import link_tree, read_table, write_table
from pipeline.phases import fitting
from pipeline.protocol import EVALUATED, PUBLISHED, RECOMMENDATION, SEARCH

ANY_REGION = "*"


def cold_start(interactions: pd.DataFrame, users: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per region (and ``*`` for all), the k items used by most distinct users."""
    pairs = interactions[[S.USER, S.ITEM]].drop_duplicates()
    if S.REGION in users.columns:
        pairs = pairs.merge(users[[S.USER, S.REGION]], on=S.USER, how="left")
    else:
        pairs[S.REGION] = pd.NA
    pairs[S.REGION] = pairs[S.REGION].astype("string")
    everyone = pairs.assign(**{S.REGION: ANY_REGION})
    counts = (pd.concat([pairs.dropna(subset=[S.REGION]), everyone])
              .groupby([S.REGION, S.ITEM]).size().rename(S.SCORE).reset_index())
    counts = counts.sort_values([S.REGION, S.SCORE, S.ITEM], ascending=[True, False, True],
                                kind="stable")
    counts[S.RANK] = (counts.groupby(S.REGION, sort=False).cumcount() + 1).astype(np.int32)
    counts[S.SCORE] = counts[S.SCORE].astype(np.float32)
    return counts[counts[S.RANK] <= k].reset_index(drop=True)


def run(cfg: Config, io: StageIO) -> dict:
    phase = PUBLISHED.name
    ranking = io.input("ranking", phase=phase, kind=RECOMMENDATION)
    link_tree(ranking, io.output("recommendations"))
    log = fitting({p: io.read("split", part=p) for p in PUBLISHED.fit}, PUBLISHED)
    write_table(cold_start(log, io.read("users"), cfg.publish.top_k), io.output("cold_start"))
    for name in cfg.recall.channels:
        link_tree(io.input("recall_model", phase=phase, channel=name),
                  io.output("served", component=f"channels/{name}"))
    for model in cfg.fm.models:
        link_tree(io.input("fm_model", phase=phase, model=model),
                  io.output("served", component=f"fm/{model}"))
    for objective in cfg.rank.objectives:
        link_tree(io.input("ranker", phase=phase, kind=RECOMMENDATION, objective=objective),
                  io.output("served", component=f"rankers/{objective}"))
    if io.has("blend", kind=SEARCH):  # the search rankers evaluated on test serve search
        for objective in cfg.rank.objectives:
            link_tree(io.input("ranker", phase=EVALUATED.name, kind=SEARCH,
                               objective=objective),
                      io.output("served", component=f"{SEARCH}/rankers/{objective}"))
        link_tree(io.input("blend", kind=SEARCH),
                  io.output("served", component=f"{SEARCH}/blend.json"))
    for part in PUBLISHED.fit:  # the fitting log: user histories and feature statistics
        link_tree(io.input("split", part=part),
                  io.output("served", component=f"fitting/{part}.parquet"))
    for name, source in (("blend.json", io.input("blend", kind=RECOMMENDATION)),
                         ("features.json", io.input("feature_columns")),
                         ("tuned.json", io.input("tuned")),
                         ("items.parquet", io.input("items")),
                         ("users.parquet", io.input("users"))):
        link_tree(source, io.output("served", component=name))
    published = read_table(io.output("recommendations"), columns=[S.USER])
    return {"status": "ready", "users": int(published[S.USER].nunique()),
            "rows": len(published), "as_of": str(log[S.TS].max())}
