"""split: deduplicate and split the ingested log (see ``pipeline.splitting``); a log
without time gets a seeded random holdout, said in the log and the manifest (the report
shows it). An ordered split also says how many held-out events the seeded order placed
among events of one time (``tied_held_out``), and the report shows that too."""

from __future__ import annotations

import logging

from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import write_table
from pipeline.ordering import order_free
from pipeline.splitting import (
    PARTS,
    is_timed,
    require_held_out,
    resolve_strategy,
    split,
    tied_held_out,
)

log = logging.getLogger("pipeline")


def run(cfg: Config, io: StageIO) -> dict:
    interactions = io.read("interactions")
    timed = is_timed(interactions)
    strategy = resolve_strategy(cfg.split, timed)
    status = f"split {strategy}"
    if not timed:
        held = ("a seeded random holdout per user" if strategy == "random" else
                "which holds out at random too: every event is at one time")
        status = "; ".join([f"the log has no time (one timestamp for every event): split "
                            f"{strategy}, {held}", *order_free(cfg)[1]])
        log.warning("[split] %s", status)
    parts = split(interactions, cfg.split, cfg.seed, strategy)
    require_held_out(parts, cfg.split, len(io.read("items", columns=["item_id"])))
    for name in PARTS:
        write_table(parts[name], io.output("split", part=name))
    counts = {name: len(parts[name]) for name in PARTS}
    users = {f"{name}_users": int(parts[name]["user_id"].nunique()) for name in PARTS}
    ties = {}
    if timed and strategy in ("ratio", "leave_last"):
        ties = {"tied_held_out": tied_held_out(parts)}
        if any(ties["tied_held_out"].values()):
            log.info("[split] %s share their time with an event of the user in another "
                     "part: the seeded order placed them, not time (another seed holds out "
                     "others)",
                     " and ".join(f"{share:.1%} of {name} events" for name, share
                                  in ties["tied_held_out"].items()))
    return {"status": status, "strategy": strategy, "timed": timed, "counts": counts, **users,
            **ties}
