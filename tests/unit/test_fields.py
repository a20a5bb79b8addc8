"""Field encoding: layout, the out-of-vocabulary path, fit-only vocabularies, files.

Hand-made frames whose encodings can be written down: every id below is worked out from
the layout rule (0 = padding, then per field its OOV block followed by its values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.fields import FieldEncoder, FieldSpec, parse_fields

SPEC = {
    "user": {"kind": "categorical", "column": "user_id"},
    "city": {"kind": "categorical", "oov_buckets": 3},
    "age": {"kind": "numeric", "bins": 2},
    "tags": {"kind": "multi", "max_len": 3},
}


def fit_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [10, 20, 30, 10],
        "city": pd.Series(["b", "a", None, "b"], dtype="string"),
        "age": [10.0, 20.0, 30.0, np.nan],
        "tags": [["x", "y"], ["y"], [], None],
    })


@pytest.fixture
def enc() -> FieldEncoder:
    return FieldEncoder(SPEC).fit(fit_frame())


def test_layout_and_hand_computed_ids(enc: FieldEncoder) -> None:
    # user: OOV 1, values 10,20,30 -> 2,3,4; city: OOV 5,6,7, values a,b -> 8,9;
    # age: OOV 10, buckets (edge 20) below -> 11, at/above -> 12; tags: OOV 13, x 14, y 15.
    assert enc.offsets == {"user": 1, "city": 5, "age": 10, "tags": 13}
    assert enc.n_features == 16
    assert enc.slot_field.tolist() == [0, 1, 2, 3, 3, 3]
    np.testing.assert_array_equal(enc.edges["age"], [20.0])
    e = enc.transform(fit_frame())
    np.testing.assert_array_equal(e.ids, [[2, 9, 11, 14, 15, 0],
                                          [3, 8, 12, 15, 0, 0],
                                          [4, 5, 12, 13, 0, 0],
                                          [2, 9, 10, 13, 0, 0]])
    np.testing.assert_allclose(e.weights, [[1, 1, 1, 0.5, 0.5, 0],
                                           [1, 1, 1, 1, 0, 0],
                                           [1, 1, 1, 1, 0, 0],
                                           [1, 1, 1, 1, 0, 0]])
    assert e.ids.dtype == np.int32 and e.weights.dtype == np.float32


def test_weights_sum_to_one_per_field_and_padding_is_zero(enc: FieldEncoder) -> None:
    e = enc.transform(pd.DataFrame({"user_id": [10], "city": ["a"], "age": [1.0],
                                    "tags": [["x", "y", "q", "z"]]}))
    sf = enc.slot_field
    for f in range(enc.n_fields):
        assert e.weights[0, sf == f].sum() == pytest.approx(1.0)
    assert np.all(e.weights[e.ids == 0] == 0)
    # four tags truncated to max_len = 3, weight 1/3 each; q is unseen -> OOV 13
    assert e.ids[0, sf == 3].tolist() == [14, 15, 13]
    np.testing.assert_allclose(e.weights[0, sf == 3], [1 / 3] * 3, rtol=1e-6)


def test_unseen_values_map_to_oov_and_vocab_never_grows(enc: FieldEncoder) -> None:
    before = (dict(enc.offsets), enc.n_features, {k: list(v) for k, v in enc.vocab.items()})
    new = pd.DataFrame({"user_id": [99, 10], "city": ["zz", "a"], "age": [1e6, -5.0],
                        "tags": [["nope"], ["x"]]})
    e = enc.transform(new)
    assert e.ids[0, 0] == enc.oov_ids("user")[0] == 1
    assert e.ids[0, 1] in enc.oov_ids("city").tolist()  # hashed OOV bucket 5..7
    assert e.ids[0, 2] == 12 and e.ids[1, 2] == 11  # out-of-range numbers clip to end buckets
    assert e.ids[0, 3] == enc.oov_ids("tags")[0]
    assert e.ids.max() < enc.n_features
    assert (dict(enc.offsets), enc.n_features, enc.vocab) == before


def test_hashed_oov_buckets_are_stable_and_spread() -> None:
    spec = {"city": {"kind": "categorical", "oov_buckets": 4}}
    a = FieldEncoder(spec).fit(pd.DataFrame({"city": ["a", "b"]}))
    b = FieldEncoder(spec).fit(pd.DataFrame({"city": ["a", "b"]}))
    unseen = pd.DataFrame({"city": [f"new{i}" for i in range(50)]})
    ids_a, ids_b = a.transform(unseen).ids[:, 0], b.transform(unseen).ids[:, 0]
    np.testing.assert_array_equal(ids_a, ids_b)
    assert set(ids_a.tolist()) == set(a.oov_ids("city").tolist())  # all four buckets used
    missing = a.transform(pd.DataFrame({"city": [None]})).ids[0, 0]
    assert missing == a.oov_ids("city")[0]


def test_min_count_sends_rare_values_to_oov() -> None:
    df = pd.DataFrame({"u": [1, 1, 2]})
    enc = FieldEncoder({"u": {"kind": "categorical", "min_count": 2}}).fit(df)
    assert enc.vocab["u"] == [1]
    assert enc.transform(df).ids[:, 0].tolist() == [2, 2, 1]


def test_fit_uses_fit_data_only() -> None:
    fit = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "a", "b", "b"]})
    spec = {"x": {"kind": "numeric", "bins": 2}, "c": "categorical"}
    enc = FieldEncoder(spec).fit(fit)
    other = pd.DataFrame({"x": [100.0, 200.0, 300.0, 400.0], "c": ["q", "r", "s", "t"]})
    enc.transform(other)
    np.testing.assert_array_equal(enc.edges["x"], [2.5])  # the fit data's median only
    assert enc.vocab["c"] == ["a", "b"]


def test_datetime_numeric_and_arrow_list_columns() -> None:
    df = pd.DataFrame({
        "t": pd.to_datetime([0, 10, 20, None], unit="s"),
        "tags": pd.Series([["a"], ["a", "b"], None, []],
                          dtype=pd.ArrowDtype(pa.list_(pa.string()))),
    })
    enc = FieldEncoder({"t": {"kind": "numeric", "bins": 2}, "tags": "multi"}).fit(df)
    e = enc.transform(df)
    assert e.ids[3, 0] == enc.oov_ids("t")[0]  # missing time -> OOV
    assert e.ids[2, 1] == e.ids[3, 1] == enc.oov_ids("tags")[0]  # null and empty lists
    np.testing.assert_allclose(e.weights[1, 1:], [0.5, 0.5])


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        parse_fields({"a": "nope"})
    with pytest.raises(ValueError, match="unknown setting"):
        parse_fields({"a": {"kind": "numeric", "binz": 3}})
    with pytest.raises(KeyError, match="missing column"):
        FieldEncoder({"a": "categorical"}).fit(pd.DataFrame({"b": [1]}))
    with pytest.raises(RuntimeError, match="before fit"):
        FieldEncoder({"a": "categorical"}).transform(pd.DataFrame({"a": [1]}))
    assert parse_fields([FieldSpec("a", "categorical")])[0].source == "a"


def test_save_load_round_trip(enc: FieldEncoder, tmp_path: Path) -> None:
    enc.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["edges.npz", "encoder.json"]
    back = FieldEncoder.load(tmp_path / "enc")
    new = pd.DataFrame({"user_id": [30, 77], "city": ["b", "unseen"], "age": [25.0, 5.0],
                        "tags": [["y", "x"], ["x", "w"]]})
    for frame in (fit_frame(), new):
        a, b = enc.transform(frame), back.transform(frame)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.weights, b.weights)
    assert back.slot_field.tolist() == enc.slot_field.tolist()


def test_encode_pairs_equals_the_row_wise_encoding() -> None:
    """Distinct users and items encoded once, gathered per row: the same slots as
    encoding the joined frame row by row, unknown users and items and a field that reads
    the pairs themselves (the row-wise fallback) included."""
    from features.pairs import (
        default_fields,
        encode_pairs,
        encode_sides,
        encode_tables,
        pair_frame,
        side_tables,
    )

    rng = np.random.default_rng(3)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(6)],
                          "region": ["n", "s", "n", None, "e", "s"],
                          "age": [21.0, 35.0, np.nan, 50.0, 18.0, 40.0]})
    items = pd.DataFrame({"item_id": np.arange(8), "category": list("abcabcab"),
                          "tags": [["x"], ["y", "z"], [], None, ["x", "z"], ["y"], ["q"], []]})
    fit = pd.DataFrame({"user_id": rng.choice(users["user_id"], 40),
                        "item_id": rng.integers(0, 8, 40)})
    user_side, item_side = side_tables(users, items, fit)
    encoder = FieldEncoder(default_fields(user_side, item_side))
    encoder.fit(pair_frame(fit, user_side, item_side))
    pairs = pd.DataFrame({"user_id": [*rng.choice(users["user_id"], 30), "new"],
                          "item_id": [*rng.integers(0, 8, 30), 99]})
    whole = encoder.transform(pair_frame(pairs, user_side, item_side))
    gathered = encode_pairs(encoder, pairs, user_side, item_side)
    np.testing.assert_array_equal(gathered.ids, whole.ids)
    np.testing.assert_array_equal(gathered.weights, whole.weights)
    tables = encode_tables(encoder, user_side, item_side)
    for some in (pairs, pairs.iloc[:-1]):  # the unknown user and item, then none
        joined = encode_sides(encoder, some, user_side, item_side)
        for side, table, key in zip(joined, encode_sides(encoder, some, user_side, item_side,
                                                         tables), ("user_id", "item_id"),
                                    strict=True):
            np.testing.assert_array_equal(table.encoded.ids, side.encoded.ids, key)
            np.testing.assert_array_equal(table.encoded.weights, side.encoded.weights, key)
            np.testing.assert_array_equal(table.of, side.of, key)
    table = tables["item_id"]
    np.testing.assert_array_equal(table.rows(pd.Index([7, 0])), [7, 0])
    assert table.rows(pd.Index([7, 99])) is None
    assert table.rows(pd.Index(["7"])) is None  # another id type: joined, not gathered

    pairs["hour"] = rng.integers(0, 24, len(pairs))
    fields = {**default_fields(user_side, item_side), "hour": "categorical"}
    encoder = FieldEncoder(fields).fit(pair_frame(pairs, user_side, item_side))
    np.testing.assert_array_equal(encode_pairs(encoder, pairs, user_side, item_side).ids,
                                  encoder.transform(pair_frame(pairs, user_side, item_side)).ids)
