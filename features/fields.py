"""Field encoding for FM/FFM: a DataFrame becomes fixed-width (feature id, weight) slots.

A declarative spec names each field and its kind:
- ``categorical``: one slot; the value's id (ids, category, region, occupation, ...);
- ``numeric``: one slot; the value's quantile bucket, edges learned on the fitting data
  (age, item age, popularity, recency);
- ``multi``: a list column (tags, genres); ``max_len`` slots, each value weighted
  ``1 / number of values`` so a field's weights sum to one, padded with id 0, weight 0.

Ids are global: id 0 is padding, then each field owns a contiguous block starting at its
offset: first its out-of-vocabulary ids (1, or ``oov_buckets`` hashed buckets), then its
values. The vocabulary comes from ``fit`` alone; ``transform`` never adds to it: unseen
values, missing values and (for ``min_count`` > 1) values rarer than that in the fitting
data map to the field's OOV id, or to ``hash(value) % oov_buckets`` within its OOV block
(missing values always to the first). Slots are grouped by field in spec order, so
``slot_field`` is non-decreasing, as ``models.ffm.FFM`` requires.

The encoder saves to a folder as ``encoder.json`` plus ``edges.npz`` (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

KINDS = ("categorical", "numeric", "multi")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FieldSpec:
    """One field. ``column`` defaults to ``name``."""

    name: str
    kind: Literal["categorical", "numeric", "multi"]
    column: str | None = None
    bins: int = 10  # numeric: quantile buckets (fewer when the fit data has ties)
    max_len: int | None = None  # multi: slots; None = the longest list in the fit data
    min_count: int = 1  # categorical/multi: values seen fewer times go to OOV
    oov_buckets: int = 1  # categorical/multi: hashed OOV ids for unseen values

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.bins < 1 or self.min_count < 1 or self.oov_buckets < 1:
            raise ValueError(f"field {self.name!r}: bins, min_count and oov_buckets must be >= 1")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1")

    @property
    def source(self) -> str:
        return self.column or self.name


def parse_fields(spec: Mapping[str, str | Mapping[str, Any]] | Sequence[FieldSpec]
                 ) -> list[FieldSpec]:
    """Field specs from ``{name: kind}`` or ``{name: {kind: ..., bins: ...}}`` (config)."""
    if isinstance(spec, Mapping):
        out = []
        for name, value in spec.items():
            if isinstance(value, str):
                out.append(FieldSpec(name=name, kind=value))  # type: ignore[arg-type]
            else:
                unknown = set(value) - {f for f in FieldSpec.__dataclass_fields__ if f != "name"}
                if unknown:
                    raise ValueError(f"field {name!r}: unknown setting(s) {sorted(unknown)}")
                out.append(FieldSpec(name=name, **value))
        return out
    return list(spec)


@dataclass
class EncodedFields:
    """``ids`` int32 [N, S] (0 = padding) and ``weights`` float32 [N, S]."""

    ids: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _json_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _hash_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    """Stable across runs and machines: pandas' siphash of the value's text."""
    if buckets == 1 or len(values) == 0:
        return np.zeros(len(values), np.int64)
    text = np.asarray([str(v) for v in values], dtype=object)
    return (pd.util.hash_array(text) % np.uint64(buckets)).astype(np.int64)


def _list_column(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row lengths of a list column (None/NaN rows have length 0)."""
    arr = pa.array(series.to_numpy(dtype=object) if series.dtype == object else series,
                   from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)):
        raise TypeError(f"column {series.name!r} must hold lists, found {arr.type}")
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat, lengths


def _numeric(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        out = series.astype("int64").to_numpy(dtype=np.float64) / 1e9
        out[series.isna().to_numpy()] = np.nan
        return out
    return pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)


class FieldEncoder:
    """Fit on the fitting data, then ``transform`` any frame with the same columns."""

    def __init__(self, fields: Mapping[str, Any] | Sequence[FieldSpec]) -> None:
        self.fields = parse_fields(fields)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in {names}")
        self.vocab: dict[str, list[Any]] = {}
        self.edges: dict[str, np.ndarray] = {}
        self.slots: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self._index: dict[str, pd.Index] = {}
        self.fitted = False

    # ----------------------------------------------------------------- layout
    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def n_slots(self) -> int:
        return sum(self.slots[f.name] for f in self.fields)

    @property
    def n_features(self) -> int:
        """Rows of the models' tables: padding plus every field's block."""
        return 1 + sum(self.sizes[f.name] for f in self.fields)

    @property
    def slot_field(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_fields), [self.slots[f.name] for f in self.fields])

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def _n_oov(self, f: FieldSpec) -> int:
        return 1 if f.kind == "numeric" else f.oov_buckets

    def oov_ids(self, name: str) -> np.ndarray:
        """Global ids of a field's OOV block."""
        f = self._spec(name)
        return self.offsets[name] + np.arange(self._n_oov(f))

    def _spec(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; fields are {self.field_names}")

    def _layout(self) -> None:
        offset = 1
        for f in self.fields:
            n_values = (len(self.edges[f.name]) + 1 if f.kind == "numeric"
                        else len(self.vocab[f.name]))
            self.sizes[f.name] = self._n_oov(f) + n_values
            self.offsets[f.name] = offset
            offset += self.sizes[f.name]
        self._index = {f.name: pd.Index(self.vocab[f.name]) for f in self.fields
                       if f.kind != "numeric"}
        self.fitted = True

    # ----------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame) -> FieldEncoder:
        """Learn vocabularies, bucket edges and slot counts from ``df`` only."""
        self._check_columns(df)
        for f in self.fields:
            col = df[f.source]
            if f.kind == "numeric":
                x = _numeric(col)
                x = x[~np.isnan(x)]
                qs = np.linspace(0, 1, f.bins + 1)[1:-1]
                self.edges[f.name] = (np.unique(np.quantile(x, qs)) if len(x) and len(qs)
                                      else np.empty(0))
                self.slots[f.name] = 1
                continue
            if f.kind == "multi":
                flat, lengths = _list_column(col)
                self.slots[f.name] = f.max_len or max(1, int(lengths.max(initial=1)))
                values = pd.Series(flat).dropna()
            else:
                self.slots[f.name] = 1
                values = col.dropna()
            counts = values.value_counts(sort=False)
            kept = counts[counts >= f.min_count].index
            try:
                kept = kept.sort_values()
            except TypeError:  # mixed types: order by text, still deterministic
                kept = pd.Index(sorted(kept, key=str))
            self.vocab[f.name] = [_json_value(v) for v in kept.tolist()]
        self._layout()
        return self

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [f.source for f in self.fields if f.source not in df.columns]
        if missing:
            raise KeyError(f"missing column(s) {missing} for fields; found {list(df.columns)}")

    # ----------------------------------------------------------------- transform
    def _lookup(self, f: FieldSpec, values: np.ndarray) -> np.ndarray:
        """Local ids (within the field's block) of ``values``; OOV for unseen or missing."""
        n_oov = self._n_oov(f)
        local = self._index[f.name].get_indexer(values)
        out = local.astype(np.int64) + n_oov
        unseen = local < 0
        if unseen.any():
            missing = pd.isna(values[unseen]) if len(values) else np.zeros(0, bool)
            bucket = np.zeros(int(unseen.sum()), np.int64)
            present = ~np.asarray(missing, bool)
            bucket[present] = _hash_bucket(values[unseen][present], n_oov)
            out[unseen] = bucket
        return out

    def slot_positions(self, names: Sequence[str]) -> np.ndarray:
        """The slot columns of the fields ``names``, in spec order (where ``transform(df,
        names)`` puts its columns within a full encoding)."""
        wanted = set(names)
        return np.flatnonzero(np.isin(self.slot_field,
                                      [i for i, f in enumerate(self.fields) if f.name in wanted]))

    def transform(self, df: pd.DataFrame, names: Sequence[str] | None = None) -> EncodedFields:
        """Encode ``df`` (only the fields ``names``, when given: their slots, in spec
        order); the vocabulary is left exactly as ``fit`` made it."""
        if not self.fitted:
            raise RuntimeError("FieldEncoder.transform before fit (or load)")
        fields = self.fields if names is None else [f for f in self.fields if f.name in names]
        missing = [f.source for f in fields if f.source not in df.columns]
        if missing:
            raise KeyError(f"missing column(s) {missing} for fields; found {list(df.columns)}")
        n = len(df)
        n_slots = sum(self.slots[f.name] for f in fields)
        ids = np.zeros((n, n_slots), np.int32)
        weights = np.zeros((n, n_slots), np.float32)
        slot = 0
        for f in fields:
            col = df[f.source]
            base = self.offsets[f.name]
            if f.kind == "numeric":
                x = _numeric(col)
                local = np.searchsorted(self.edges[f.name], x, side="right") + 1
                local[np.isnan(x)] = 0
                ids[:, slot] = base + local
                weights[:, slot] = 1.0
            elif f.kind == "categorical":
                ids[:, slot] = base + self._lookup(f, col.to_numpy(dtype=object))
                weights[:, slot] = 1.0
            else:
                width = self.slots[f.name]
                flat, lengths = _list_column(col)
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                kept = np.minimum(lengths, width)
                rows = np.repeat(np.arange(n), kept)
                pos = np.arange(len(rows)) - np.repeat(np.cumsum(kept) - kept, kept)
                src = np.repeat(starts, kept) + pos
                local = self._lookup(f, np.asarray(flat, dtype=object)[src])
                ids[rows, slot + pos] = base + local
                weights[rows, slot + pos] = (1.0 / kept[rows]).astype(np.float32)
                empty = kept == 0  # no values: the field's first OOV id, weight one
                ids[empty, slot] = base
                weights[empty, slot] = 1.0
            slot += self.slots[f.name]
        return EncodedFields(ids, weights)

    # ----------------------------------------------------------------- files
    def save(self, folder: Path) -> None:
        """``encoder.json`` (specs, vocabularies, layout) and ``edges.npz`` (bucket edges)."""
        if not self.fitted:
            raise RuntimeError("FieldEncoder.save before fit")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION,
                "fields": [asdict(f) for f in self.fields],
                "vocab": self.vocab, "slots": self.slots, "offsets": self.offsets,
                "sizes": self.sizes, "n_features": self.n_features}
        (folder / "encoder.json").write_text(json.dumps(meta))
        np.savez(folder / "edges.npz", **{f"edges_{i}": self.edges[f.name]
                                          for i, f in enumerate(self.fields)
                                          if f.kind == "numeric"})

    @classmethod
    def load(cls, folder: Path) -> FieldEncoder:
        folder = Path(folder)
        meta = json.loads((folder / "encoder.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: encoder format {meta.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        enc = cls([FieldSpec(**f) for f in meta["fields"]])
        enc.vocab = {k: list(v) for k, v in meta["vocab"].items()}
        enc.slots = {k: int(v) for k, v in meta["slots"].items()}
        with np.load(folder / "edges.npz", allow_pickle=False) as z:
            for i, f in enumerate(enc.fields):
                if f.kind == "numeric":
                    enc.edges[f.name] = z[f"edges_{i}"]
        enc._layout()
        if enc.offsets != meta["offsets"] or enc.n_features != meta["n_features"]:
            raise ValueError(f"{folder}: encoder layout does not match its saved offsets")
        return enc
