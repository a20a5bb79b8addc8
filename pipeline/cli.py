"""Command line: ``python -m pipeline <command> --config configs/<name>.yaml``.

A thin wrapper: it parses arguments, loads and validates the config, pins thread pools,
and hands over to the runner, or for ``recommend`` and ``serve`` to the live
publication (``pipeline.serving``, ``pipeline.service``). Bad config or bad data end
with a one-paragraph error and exit code 2, not a traceback. ``schedule`` is a whole
scheduled run (``pipeline.schedule`` lists its exit statuses). Two helpers serve the
Makefile: ``makefile`` prints the stage rules it includes, ``stamps`` records the
config sections each stage reads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.catalogue import STAGE_NAMES
from pipeline.config import Config, ConfigError, load_config
from pipeline.io import StageLockedError
from pipeline.runner import MissingInputError, run_stage, run_until, set_threads
from pipeline.schema import DataError

TOOLS = ("makefile", "stamps", "simulate")  # Makefile helpers, and the partitioned log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("command",
                        choices=[*STAGE_NAMES, "run", "schedule", "recommend", "serve", *TOOLS],
                        help="a stage to run alone, 'run' for every stage in order, "
                        "'schedule' for a gated, published, ledgered run, 'recommend' for "
                        "one user's list from the live publication, 'serve' for the HTTP "
                        "service on it, or a Makefile helper")
    parser.add_argument("--config", help="YAML config, e.g. configs/synthetic.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--until", choices=STAGE_NAMES, help="with 'run': last stage to run")
    parser.add_argument("--as-of", help="with 'schedule': ignore events after this time "
                        "(ISO); default: the newest event")
    parser.add_argument("--force", action="store_true",
                        help="with 'schedule': publish even when the gate refuses")
    parser.add_argument("--out", help="with 'simulate': folder for the daily partitions")
    parser.add_argument("--through", metavar="DATE",
                        help="with 'simulate': last day written (default: every day)")
    parser.add_argument("--user", help="with 'recommend': the user id")
    parser.add_argument("--query", help="with 'recommend': search text (a search request)")
    parser.add_argument("-k", type=int, help="with 'recommend': how many items (default and "
                        "most: publish.top_k)")
    parser.add_argument("--host", default="127.0.0.1", help="with 'serve': the address to "
                        "bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="with 'serve': the port")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.command == "makefile":
        from pipeline.make import makefile_rules

        sys.stdout.write(makefile_rules())
        return 0
    if args.config is None:
        parser.error(f"{args.command} needs --config")
    as_of = [f"ingest.as_of='{args.as_of}'"] if args.as_of else []  # quoted: YAML reads
    overrides = [*args.overrides, *as_of]                             # a bare date as a date
    try:
        cfg = load_config(args.config, overrides)
        if args.command == "simulate":
            return simulate_command(cfg, args.out, args.through)
        if args.command == "stamps":
            from pipeline.make import write_stamps

            changed = write_stamps(cfg)
            logging.getLogger("pipeline").info("config changed for: %s",
                                               ", ".join(changed) or "no stage")
            return 0
        # a served request is a few hundred rows: more threads only spin at barriers
        set_threads(1 if args.command in ("recommend", "serve") else cfg.threads)
        if args.command == "recommend":
            return recommend_command(cfg, args.user, args.k, args.query)
        if args.command == "serve":
            from pipeline.service import serve

            serve(cfg, args.host, args.port)
            return 0
        if args.command == "schedule":
            from pipeline.schedule import schedule

            return schedule(cfg, args.force)
        if args.command == "run":
            run_until(cfg, args.until)
        else:
            run_stage(cfg, args.command)
    except (ConfigError, DataError, MissingInputError, StageLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def recommend_command(cfg: Config, user: str | None, k: int | None,
                      query: str | None = None) -> int:
    """Print one user's list (or search results for ``query``) from the live
    publication as JSON."""
    import json

    from pipeline.release import PUBLISH, current
    from pipeline.serving import Recommender, response

    if user is None:
        raise ConfigError("recommend needs --user")
    live = current(cfg)
    if live is None:
        raise ConfigError(f"no live publication under {cfg.root / PUBLISH}: run `python -m "
                          "pipeline schedule` (or `make scheduled`) first")
    try:
        recommender = Recommender.load(cfg.root / PUBLISH / live)
        lists = (recommender.recommend(user, k) if query is None
                 else recommender.search(user, query, k))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(json.dumps({"user_id": user, "query": query, "publication": live,
                      "items": response(lists)}))
    return 0


def simulate_command(cfg: Config, out: str | None, until: str | None) -> int:
    from pipeline.config import SyntheticSource
    from pipeline.simulate import simulate

    if not isinstance(cfg.source, SyntheticSource) or out is None:
        raise ConfigError("simulate needs a config with the synthetic source and --out")
    written = simulate(cfg.source, cfg.seed, Path(out), until)
    print(f"{len(written)} new file(s) under {out}")
    return 0
