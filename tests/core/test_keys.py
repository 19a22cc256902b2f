"""Journey keys, salted hashes, buckets and content fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.core import keys


def _ids(n: int = 2000) -> pd.Series:
    return pd.Series([f"j{i:05d}" for i in range(n)])


def test_journey_key_falls_back_to_the_session_id():
    sessions = pd.DataFrame({"session_id": ["s1", "s2", "s3"], "journey_id": ["j1", None, "j1"]})
    assert keys.journey_key(sessions).tolist() == ["j1", "s2", "j1"]
    assert keys.journey_key(sessions.drop(columns="journey_id")).tolist() == ["s1", "s2", "s3"]


def test_salted_hash_is_stable_across_calls_and_order():
    ids = _ids()
    first = keys.salted_hash(ids, "salt")
    assert first.dtype == np.uint64
    np.testing.assert_array_equal(first, keys.salted_hash(ids.copy(), "salt"))
    shuffled = ids.sample(frac=1.0, random_state=0)
    np.testing.assert_array_equal(
        keys.salted_hash(shuffled, "salt"), first[shuffled.index.to_numpy()]
    )


def test_salted_hash_differs_with_the_salt():
    ids = _ids()
    assert (keys.salted_hash(ids, "a") != keys.salted_hash(ids, "b")).mean() > 0.99


def test_salted_hash_hashes_the_ids_as_text_followed_by_the_salt():
    ids = pd.Series([1, 22, 333])
    expected = pd.util.hash_pandas_object(pd.Series(["1|x", "22|x", "333|x"]), index=False)
    np.testing.assert_array_equal(keys.salted_hash(ids, "|x"), expected.to_numpy())


def test_unit_hash_is_uniform_in_the_unit_interval():
    u = keys.unit_hash(_ids(20000), "#0")
    assert ((u >= 0) & (u < 1)).all()
    assert abs((u < 0.15).mean() - 0.15) < 0.015


def test_bucket_of_a_journey_is_the_same_whatever_the_order_of_rows():
    journeys = pd.Series(np.repeat(_ids(300).to_numpy(), 3))
    buckets = keys.bucket_of(journeys, 8)
    assert ((buckets >= 0) & (buckets < 8)).all() and len(set(buckets)) == 8
    assert pd.Series(buckets).groupby(journeys).nunique().eq(1).all()
    shuffled = journeys.sample(frac=1.0, random_state=1)
    np.testing.assert_array_equal(keys.bucket_of(shuffled, 8), buckets[shuffled.index.to_numpy()])


def test_bucket_of_is_the_plain_hash_of_the_ids_as_text_modulo_the_buckets():
    journeys = pd.Series(["a", "b", 7])
    h = pd.util.hash_pandas_object(journeys.astype(str), index=False).to_numpy()
    expected = (h % np.uint64(5)).astype(np.int64)
    np.testing.assert_array_equal(keys.bucket_of(journeys, 5), expected)


def test_row_hashes_ignore_the_index():
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    moved = frame.set_axis([10, 20, 30])
    np.testing.assert_array_equal(keys.row_hashes(frame), keys.row_hashes(moved))
    assert len(set(keys.row_hashes(frame))) == 3


def test_data_fingerprint_changes_when_one_value_changes():
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    fingerprint = keys.data_fingerprint(frame)
    assert fingerprint == keys.data_fingerprint(frame.copy())
    assert fingerprint != keys.data_fingerprint(frame.assign(b=["x", "y", "Z"]))
    assert fingerprint != keys.data_fingerprint(frame.iloc[::-1])
    assert fingerprint != keys.data_fingerprint(frame[["b", "a"]])


def test_fingerprint_of_rows_hashed_in_pieces_matches_the_whole_frame():
    frame = pd.DataFrame({"a": range(10), "b": list("abcdefghij")})
    pieces = np.concatenate([keys.row_hashes(frame.iloc[:4]), keys.row_hashes(frame.iloc[4:])])
    assert keys.fingerprint_of_rows(frame.columns, pieces) == keys.data_fingerprint(frame)


def test_unit_hash_is_the_top_53_bits_of_the_salted_hash_as_a_fraction():
    ids = _ids(500)
    h = pd.util.hash_pandas_object(ids.astype(str) + "#3", index=False).to_numpy()
    expected = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    np.testing.assert_array_equal(keys.unit_hash(ids, "#3"), expected)


def test_data_fingerprint_changes_with_content_only():
    a = pd.DataFrame({"x": [1, 2, 3]})
    assert keys.data_fingerprint(a) == keys.data_fingerprint(a.copy())
    assert keys.data_fingerprint(a) != keys.data_fingerprint(a.assign(x=[1, 2, 4]))
