"""Typed run configuration.

Defaults live here, one described field per key, so a config file only states what
differs from them. Files are YAML; ``--set a.b=value`` overrides are parsed as YAML
scalars (never ``eval``). Unknown keys are errors, so a typo cannot silently fall back
to a default.
"""

from __future__ import annotations

import codecs
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- sources
class SyntheticSource(_Strict):
    """The embedded generator: topics, Zipf popularity, regions, sessions, drift, search."""

    kind: Literal["synthetic"] = "synthetic"
    n_users: int = Field(2000, ge=10, description="number of users")
    n_items: int = Field(1000, ge=20, description="number of items")
    mean_interactions: float = Field(40.0, gt=3, description="mean interactions per user")
    n_topics: int = Field(12, ge=2, description="latent topics behind tastes and item text")
    n_regions: int = Field(5, ge=1, description="user home regions")
    regional_item_share: float = Field(0.2, ge=0, le=1, description="items sold in one region")
    days: int = Field(60, ge=1, description="length of the log in days")
    search_share: float = Field(0.15, ge=0, le=1, description="share of events that are searches")
    zipf_exponent: float = Field(1.0, gt=0, description="item popularity ~ 1/rank^exponent")
    session_coherence: float = Field(
        0.8, ge=0, le=1, description="chance an event stays on its session's topic"
    )


class MovieLens100kSource(_Strict):
    """GroupLens MovieLens 100K from a local directory (never redistributed)."""

    kind: Literal["movielens-100k"] = "movielens-100k"
    path: Path = Field(Path("../shared/datasets/ml-100k"), description="directory with u.data")


class DataFile(_Strict):
    """A file of the ``files`` source and how to read it: Parquet, delimited text or JSON
    lines (one object a line), the text formats also compressed (``.gz``, ``.bz2``,
    ``.zst``, ``.lz4``), as public logs come."""

    path: Path
    columns: dict[str, str] = Field(description="contract column -> column in the file")
    delimiter: str | None = Field(
        None, min_length=1, description="a text file's field separator: ',' unless given "
        "(tab for .tsv); several characters, as MovieLens 1M's '::', are read too")
    header: list[str] | None = Field(
        None, min_length=1, description="a text file without a header row: its column "
        "names in order, which ``columns`` then maps")
    encoding: str = Field("utf-8", description="a text file's character encoding (latin-1, "
                          "cp1252, ...: older public logs); JSON lines are UTF-8")
    quote: str | None = Field(
        '"', min_length=1, max_length=1, description="a text file's quote character; null "
        "where quotes are plain characters in its values (a tab-separated log of track "
        "titles), since an unclosed one takes in the lines after it")
    escape: str | None = Field(
        None, min_length=1, max_length=1, description="a text file's escape character: "
        '"\\\\" (a backslash) where a quote inside a quoted value is written \\" (MySQL '
        "dumps, Book-Crossing's tables); it escapes outside quotes too (the next "
        "character, a delimiter included, is taken as it is and the backslash dropped), so "
        "only for files written so; unset, mapped values holding a backslash with a quote "
        "after it are noted")
    comment: str | None = Field(
        None, min_length=1, description="a text file's comment marker: lines starting with "
        "it outside a quoted value are left out, counted in a note, and data rows are "
        "numbered without them "
        "(SNAP's '#', KONECT's '%'); unset, a first line starting with '#' or '%' is an "
        "error naming this setting (null: read such a line as the file's own)")
    multiline: Literal["error", "keep"] = Field(
        "error", description="a text file's quoted values over several lines that hold what "
        "reads as whole rows (a line of as many fields, ids filled), and records of the "
        "wrong width over several lines: an error, as an unclosed quote leaves them, or "
        "kept (such records left out under bad_lines: skip), noted; other values over "
        "several lines (descriptions) are kept with a note either way")
    bad_lines: Literal["error", "skip"] = Field(
        "error", description="a text file's lines with more or fewer fields than its "
        "header: an error naming the first, or left out with a note counting them")

    @field_validator("encoding")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in '\n\r"'):
            raise ValueError("a delimiter holds no line break or double quote")
        return value

    @field_validator("quote")
    @classmethod
    def _no_line_break(cls, value: str | None) -> str | None:
        if value is not None and value in "\r\n":
            raise ValueError("a quote character is no line break")
        return value

    @model_validator(mode="after")
    def _quote_apart(self) -> DataFile:
        """A given delimiter is checked here; the one a file's suffix implies, on reading."""
        if self.quote is not None and self.delimiter is not None and (
                self.quote in self.delimiter):
            raise ValueError(f"quote {self.quote!r} is in the delimiter {self.delimiter!r}")
        return self

    @field_validator("header")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"header names must be distinct: {value}")
        return value


class TimedFile(DataFile):
    """A file with a time column (interactions' ``ts``, items' ``created_ts``) and how
    its times are written."""

    ts_unit: Literal["s", "ms", "us", "ns", "iso"] | None = Field(
        None, description="timestamp encoding: numbers since 1970 in s, ms, us or ns, or ISO "
        "text; inferred from the column (numbers: by their size) when omitted"
    )
    ts_format: str | None = Field(
        None, description="times written otherwise, as a strftime pattern (Goodreads' "
        "'%a %b %d %H:%M:%S %z %Y'; '%d/%m/%Y %H:%M'), instead of ts_unit; no zone: UTC")

    @model_validator(mode="after")
    def _one_time_encoding(self) -> TimedFile:
        if self.ts_format is not None and self.ts_unit is not None:
            raise ValueError("give ts_unit or ts_format, not both")
        if self.ts_format is not None and "%" not in self.ts_format:
            raise ValueError(f"ts_format {self.ts_format!r} is no strftime pattern (no %)")
        return self


class InteractionFile(TimedFile):
    """One interactions file and how its columns map onto the contract."""

    event: str = Field("interaction",
                       description="event name for rows when no event column is mapped")


class TableFile(DataFile):
    """A users file, its column mapping and its delimited list columns."""

    list_columns: dict[str, str] = Field(
        default_factory=dict, description="contract column -> delimiter splitting it into a list"
    )
    duplicate_ids: Literal["error", "first"] = Field(
        "error", description="rows repeating an id (public catalogues have some): an error "
        "naming them, or the first row of each id kept, with a note counting the rest")


class ItemsFile(TableFile, TimedFile):
    """An items file: a table file whose ``created_ts`` is written as ``TimedFile``
    says."""


class FilesSource(_Strict):
    """A team's own logs (``DataFile``), loaded by column mapping alone."""

    kind: Literal["files"] = "files"
    interactions: list[InteractionFile] = Field(min_length=1)
    items: ItemsFile | None = Field(None, description="omitted: items derived from interactions")
    users: TableFile | None = Field(None, description="omitted: users derived from interactions")


Source = Annotated[
    SyntheticSource | MovieLens100kSource | FilesSource, Field(discriminator="kind")
]


# ---------------------------------------------------------------- stages
class IngestConfig(_Strict):
    unknown_ids: Literal["error", "drop"] = Field(
        "error", description="interactions naming items/users absent from their tables"
    )
    missing_ids: Literal["error", "drop"] = Field(
        "error", description="interactions with no user or item id (an empty cell)"
    )
    as_of: str | None = Field(None, description="ignore interactions after this time (ISO "
                              "date or timestamp): a scheduled run's --as-of, so a "
                              "backfill of a past date sees the same data")

    @field_validator("as_of", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        """YAML reads ``2026-11-25`` as a date: keep it as the ISO text it was."""
        return value.isoformat() if isinstance(value, date | datetime) else value


class SplitConfig(_Strict):
    strategy: Literal["auto", "ratio", "leave_last", "time", "random"] = Field(
        "auto", description="auto: random for a log without time, else ratio (see "
        "pipeline.splitting)")
    valid_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratio, random: share per "
                                  "user")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratio, random: share per "
                                 "user")
    min_interactions: int = Field(3, ge=3, description="users with fewer stay wholly in train")
    valid_start: str | None = Field(None, description="time: first valid timestamp (ISO)")
    test_start: str | None = Field(None, description="time: first test timestamp (ISO)")

    @model_validator(mode="after")
    def _time_needs_cutoffs(self) -> SplitConfig:
        if self.strategy == "time" and (self.valid_start is None or self.test_start is None):
            raise ValueError("split.strategy 'time' needs split.valid_start and split.test_start")
        return self


class ChannelConfig(_Strict):
    quota: int = Field(ge=0, description="slots of this channel before the shared fill "
                       "(used when recall.tune_quotas is false)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="constructor settings of the channel (see its "
        "class); checked against its constructor when the config is loaded")
    recommend: bool = Field(True, description="answer recommendation requests (false: "
                            "fitted for search only)")


class SearchChannelConfig(_Strict):
    quota: int = Field(ge=0, description="slots of this channel in the search merge (used "
                       "when recall.tune_quotas is false); its settings are the channel's")


def default_channels(search: bool = False) -> dict[str, dict[str, Any]]:
    """Every registered channel with its default quota, in registry order (the merge's
    tie order); ``search``: the channels registered with a search quota, in their
    search order."""
    from models.recall import CHANNELS

    if not search:
        return {name: {"quota": entry.quota} for name, entry in CHANNELS.items()}
    searching = [(entry.search_order, name, entry.search_quota)
                 for name, entry in CHANNELS.items() if entry.search_quota is not None]
    return {name: {"quota": quota} for _, name, quota in sorted(searching)}


def _merged_channels(defaults: dict[str, dict[str, Any]], given: Any, keep: set[str] | None
                     ) -> Any:
    """``given`` laid over ``defaults``: a channel's settings and params are merged key by
    key, so a config states only what differs; ``name: null`` drops a default channel.
    The order stays the defaults' (registry order), then channels the config adds.
    With ``keep``, defaults outside it are dropped (search channels that are not fitted).
    Values of the wrong type pass through for the model's validation to report."""
    if not isinstance(given, dict):
        return given
    from models.recall import CHANNELS

    unknown = sorted(name for name in given if name not in CHANNELS)
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; known: {sorted(CHANNELS)}")
    merged = {name: dict(settings) for name, settings in defaults.items()
              if keep is None or name in keep}
    for name, settings in given.items():
        if settings is None:
            merged.pop(name, None)
        elif isinstance(settings, dict) and name in merged:
            update = dict(settings)
            if isinstance(settings.get("params"), dict):
                update["params"] = {**merged[name].get("params", {}), **settings["params"]}
            merged[name] = {**merged[name], **update}
        else:
            merged[name] = settings
    return merged


def check_channel_params(name: str, params: dict[str, Any]) -> None:
    """Unknown constructor keys are config errors naming the channel and what it takes."""
    from models.recall import constructor_keys

    accepted = constructor_keys(name)
    unknown = sorted(set(params) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(f"channels.{name}.params: channel {name!r} has no parameter(s) "
                         f"{unknown}; it accepts {sorted(accepted)}")


class RecallConfig(_Strict):
    budget: int = Field(300, ge=1, description="merged candidates per user")
    channels: dict[str, ChannelConfig] = Field(
        default_factory=dict,  # filled by _merge_defaults
        description="channel name -> quota and settings, merged over the registered "
        "defaults (name: null drops one); in registry order, which breaks ties in the merge",
    )
    search_channels: dict[str, SearchChannelConfig] = Field(
        default_factory=dict,  # filled by _merge_defaults
        description="channels (also listed under channels) that answer search requests; "
        "search channels use the query text, the others the user. Merged over the "
        "defaults like channels; a default whose channel was dropped is dropped too")
    valid_users: int = Field(0, ge=0, description="retrieve the valid phase for a seeded "
                             "sample of this many users (0: all); enough to tune and to "
                             "train a ranker on, at a fraction of the cost for large logs")
    test_users: int = Field(0, ge=0, description="backtest the test phase on a seeded "
                            "sample of this many users (0: all); its metrics and intervals "
                            "are then the sample's, and the publication still covers every "
                            "user")
    request_chunk: int = Field(4096, ge=1, description="requests merged and written per "
                               "chunk (channels score in smaller memory-bounded blocks)")
    channel_list_users: int = Field(0, ge=0, description="write each channel's own list for "
                                    "a seeded sample of this many requests (0: all); the "
                                    "per-channel evaluation uses them")
    tune_quotas: bool = Field(True, description="choose quotas on valid (the quotas above "
                              "are used only when false)")
    tuning_users: int = Field(3000, ge=1, description="valid users sampled to tune quotas")
    quota_step: int = Field(10, ge=1, description="slots given per greedy tuning step")

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        channels = _merged_channels(default_channels(), data.get("channels", {}), None)
        data["channels"] = channels
        fitted = set(channels) if isinstance(channels, dict) else None
        data["search_channels"] = _merged_channels(
            default_channels(search=True), data.get("search_channels", {}), fitted)
        return data

    @model_validator(mode="after")
    def _known_channels(self) -> RecallConfig:
        unfitted = sorted(set(self.search_channels) - set(self.channels))
        if unfitted:
            raise ValueError(f"search_channels {unfitted} must also be listed under channels")
        for name, settings in self.channels.items():
            check_channel_params(name, settings.params)
        return self

    @model_serializer(mode="wrap")
    def _dump_dropped(self, handler: Any) -> dict[str, Any]:
        """Dropped defaults are written as null, so a dumped config loads back the same."""
        tree = handler(self)
        for key, search in (("channels", False), ("search_channels", True)):
            for name in default_channels(search) if key in tree else ():
                tree[key].setdefault(name, None)
        return tree


class FMConfig(_Strict):
    """Feature-cross models trained on the fitting interactions plus sampled negatives."""

    models: list[Literal["fm", "ffm"]] = Field(default_factory=lambda: ["fm", "ffm"])
    k: int = Field(4, ge=1, description="latent factors per feature (per field for FFM)")
    negatives: int = Field(4, ge=1, description="sampled negatives per positive")
    max_positives: int = Field(1_000_000, ge=0, description="train on a seeded sample of this "
                               "many fitting positives (0: all), so an epoch stays bounded on "
                               "a large log (FM trains about 200k samples/s on 2 cores)")
    hard_share: float = Field(0.5, ge=0, le=1, description="share of negatives drawn from "
                              "unclicked recall candidates where a user has them")
    optimizer: Literal["adagrad", "adam"] = "adagrad"
    lr: float = Field(0.05, gt=0)
    l2: float = Field(1e-5, ge=0)
    batch_size: int = Field(256, ge=1, description="samples a step; with device cuda raise "
                            "it: on an H200, at equal valid AUC, FFM trained 10x the 16-core "
                            "CPU at 4,096 and 24-28x at 32,768-65,536, FM 12x at 65,536; at 256 "
                            "both were slower than that CPU (benchmarks/RESULTS.md 'cuda')")
    max_epochs: int = Field(20, ge=1, description="cap; the epoch count is chosen on valid")
    patience: int = Field(2, ge=1, description="epochs without valid AUC gain before stopping")
    device: Literal["cpu", "cuda"] = "cpu"
    backend: Literal["torch", "native"] = Field(
        "native", description="CPU training steps: 'native' runs compiled Adagrad epochs "
        "(models.fm_kernel; on ML-100K the same valid and test AUC as torch, 7-9x the "
        "samples/s, benchmarks/RESULTS.md 'fm'); torch still trains on cuda, under DDP and "
        "with adam")
    native_threads: int = Field(1, ge=1, description="threads of the native kernel; 1 is "
                                "deterministic, more run lock-free (Hogwild) updates whose "
                                "result depends on thread timing")
    native_update: Literal["batch", "sample"] = Field(
        "batch", description="native steps: 'batch' on each batch's mean loss, as torch; "
        "'sample' on every sample alone, as libffm/xLearn (on ML-100K valid AUC 0.6992 FFM, "
        "0.6966 FM against batch's 0.7023 and 0.6979, and FFM slower: an update per slot)")
    native_sample_lr: float = Field(0.03, gt=0, description="lr of the 'sample' steps, "
                                    "chosen on ML-100K valid AUC; 'batch' and torch use lr")
    fields: dict[str, Any] | None = Field(None, description="FieldEncoder specs; None: ids, "
                                          "every item and user attribute, item popularity")


class FeaturesConfig(_Strict):
    """Ranker features per (request, candidate); see ``features.candidate_features``."""

    recent_share: float = Field(0.1, gt=0, le=1, description="latest share of fitting events "
                                "counted as recent (a share, so it fits any time scale)")
    model_scores: list[str] = Field(
        default_factory=lambda: ["sequence", "embedding", "cooccurrence", "inverted_index"],
        description="recall channels whose fitted model scores every candidate (those not "
                    "configured under recall.channels are skipped)")
    request_chunk: int = Field(2048, ge=1, description="requests featurised per chunk")
    exclude: list[str] = Field(default_factory=list, description="feature columns the rankers "
                               "do not learn from (still computed): an ablation, or a feature "
                               "that misleads on a log; each must name a feature")


RankerObjective = Literal["lambdarank", "rank_xendcg", "binary", "pairwise"]


class RankConfig(_Strict):
    """The LightGBM rankers, trained on valid-phase candidates labelled by valid."""

    top_k: int = Field(100, ge=1, description="recommendations written per test user")
    objective: RankerObjective = Field("lambdarank", description="the main ranker")
    compare: list[RankerObjective] = Field(
        default_factory=lambda: ["rank_xendcg", "binary"],
        description="also trained, for the ablation and as blend components")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="LightGBM settings over models.ranker's defaults")
    folds: int = Field(
        5, ge=2,
        description="valid requests are cross-fitted in this many folds, stopped together "
        "on the left-out folds' mean NDCG@10, to choose the rounds and the blend out of "
        "fold; the test phase is ranked by a refit on every valid request")
    negatives: float = Field(
        0.33, gt=0, le=1,
        description="share of each training request's unclicked candidates the rankers "
        "learn from (seeded; every clicked one is kept; 1: all). Held-out folds, early "
        "stopping and the blend see every candidate")
    blend: bool = Field(
        True,
        description="final ranking: a reciprocal-rank fusion of the rankers and the "
        "strongest channels, or one of them alone where it clearly beats the fusion on the "
        "held-out requests")
    blend_channels: int = Field(2, ge=0, description="strongest channels offered to the blend")
    engine: Literal["local", "dask"] = Field(
        "local", description="where the published rankers train: here on a sample of the "
        "test requests as large as recall.valid_users, or with lightgbm.dask on the cluster "
        "of the dask section over every test request with a click (of the recall.test_users "
        "sample, if set; for test features that "
        "do not fit one machine)")

    @model_validator(mode="after")
    def _distributable(self) -> RankConfig:
        if self.engine == "dask" and "pairwise" in self.objectives:
            raise ValueError("rank.engine: dask trains LightGBM's own objectives; the "
                             "pairwise (RankNet) one is a Python callback that lightgbm.dask "
                             "cannot run: drop it from rank.objective/compare")
        return self

    @property
    def objectives(self) -> list[str]:
        """The main objective, then the compared ones (each trained once)."""
        return list(dict.fromkeys([self.objective, *self.compare]))


class EvaluateConfig(_Strict):
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20, 50, 100], min_length=1)
    recall_ns: list[PositiveInt] = Field(
        default_factory=lambda: [50, 100, 200, 300], description="candidate-set recall depths"
    )
    bootstrap_resamples: int = Field(1000, ge=10, description="resamples of users for the "
                                     "NDCG confidence intervals")
    head_min_searches: int = Field(10, ge=1, description="a search query is 'head' when the "
                                   "fitting data holds it this many times, else 'tail'")
    cold_max_events: int = Field(5, ge=0, description="a user with at most this many fitted "
                                 "events is 'cold' in the report's segments")
    heavy_min_events: int = Field(100, ge=1, description="a user with at least this many "
                                  "fitted events is 'heavy' (between the two: 'middle')")

    @model_validator(mode="after")
    def _segments_ordered(self) -> EvaluateConfig:
        if self.heavy_min_events <= self.cold_max_events:
            raise ValueError(f"heavy_min_events ({self.heavy_min_events}) must be above "
                             f"cold_max_events ({self.cold_max_events})")
        return self

    @field_validator("ks")
    @classmethod
    def _has_ten(cls, ks: list[int]) -> list[int]:
        if 10 not in ks:
            raise ValueError("must include 10: the release gate and the run ledger read "
                             "NDCG@10")
        return ks


class PublishConfig(_Strict):
    """What a run publishes: every active user's top list, from models fitted on all the
    data up to the as-of time (see ``pipeline.protocol``)."""

    top_k: int = Field(100, ge=1, description="items published per user")
    active_days: float | None = Field(
        None, gt=0, description="publish for users with an event in the last this many days "
        "before the newest event (None: every user)")
    keep: int = Field(7, ge=1, description="publications kept under publish/ for rollback")


class GateConfig(_Strict):
    """The release gate between evaluation and publication."""

    enabled: bool = Field(True, description="false: publish whatever the evaluation says")
    max_drop: float = Field(0.05, ge=0, le=1, description="largest relative drop of the "
                            "final NDCG@10 below the last published run's")
    beat_channels: bool = Field(True, description="refuse when the final ranking is "
                                "significantly below its best single channel (paired "
                                "bootstrap interval of the lift entirely below zero)")


class TrackingConfig(_Strict):
    """Experiment tracking of scheduled runs (the optional ``tracking`` extra)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (a server, or "
                                   "file:///path for a local store); None: off")
    experiment: str | None = Field(None, description="MLflow experiment (None: the dataset)")


class DaskConfig(_Strict):
    """Where ``engine: dask`` runs the per-shard work (``pipeline.engine``)."""

    address: str | None = Field(None, description="scheduler of a running cluster "
                                "(tcp://host:8786), whose workers see data_dir at the same "
                                "path; none: a LocalCluster on this machine")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, description="LocalCluster threads per worker")


class Config(_Strict):
    dataset: str = Field(description="name of the folder under data_dir")
    data_dir: Path = Field(Path("data"), description="root of stage outputs")
    seed: int = Field(42, description="the one seed reaching every random draw")
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="BLAS/OpenMP threads"
    )
    engine: Literal["local", "dask"] = Field(
        "local", description="where per-shard work runs (retrieval, FM scoring, features, "
        "ranking): this process, or tasks on a Dask cluster; the outputs are the same")
    dask: DaskConfig = DaskConfig()
    source: Source
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    recall: RecallConfig = RecallConfig()
    fm: FMConfig = FMConfig()
    features: FeaturesConfig = FeaturesConfig()
    rank: RankConfig = RankConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    publish: PublishConfig = PublishConfig()
    gate: GateConfig = GateConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def root(self) -> Path:
        """Folder holding every stage's output for this dataset."""
        return self.data_dir / self.dataset

    @model_validator(mode="after")
    def _publishable(self) -> Config:
        if self.publish.top_k > self.recall.budget:
            raise ValueError(f"publish.top_k ({self.publish.top_k}) cannot exceed "
                             f"recall.budget ({self.recall.budget}): lists are cut from the "
                             "candidates")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists are leaves; an empty mapping has none)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_diff(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) of every setting that differs from the defaults for
    the same dataset and source; paths and thread counts left out (they describe the
    machine, not the run)."""
    default = flatten(Config(dataset=cfg.dataset, source=cfg.source).to_dict())
    given = flatten(cfg.to_dict())
    missing = object()
    return [(key, given.get(key), None if default.get(key, missing) is missing
             else default[key])
            for key in sorted(set(given) | set(default))
            if key not in ("data_dir", "threads") and given.get(key, missing) != default.get(
                key, missing)]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from ``base``), apply ``key=value`` overrides, validate."""
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        tree.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        where = str(path) if path is not None else "config"
        lines = [f"{where}: invalid configuration"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if re.match(r"[\w.]+: ", msg):  # a validator naming a key inside its section
                loc, msg = f"{loc}.{msg.split(': ', 1)[0]}", msg.split(": ", 1)[1]
            lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        raise ConfigError("\n".join(lines)) from None
