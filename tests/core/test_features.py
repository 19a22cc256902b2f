"""Session features: past-only journey history, unknown categories, missing location."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.contract import DatasetSpec, to_contract
from pipelines.core.features import SessionFeaturizer
from pipelines.core.geo import haversine_km
from tests.conftest import compose_config

STORES = [[51.5154, -0.1419], [40.7580, -73.9855]]


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return DatasetSpec.from_config(compose_config("train", ["output_dir=/tmp"])["data"])


def canonical(raw: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    return to_contract(raw, spec, with_label=False, all_columns=False).sessions


def featurizer(spec: DatasetSpec, **kw) -> SessionFeaturizer:
    return SessionFeaturizer(
        page_types=list(spec.page_counts), stores=STORES, min_category_count=1, **kw
    )


def three_journeys() -> pd.DataFrame:
    """3 journeys of 5 sessions, 10 days apart, every context value known."""
    rows = []
    for j in range(3):
        for s in range(5):
            rows.append(
                {
                    "session_id": f"j{j}-s{s}",
                    "journey_id": f"j{j}",
                    "started_at": pd.Timestamp("2026-01-01T12:00:00Z")
                    + pd.Timedelta(days=10 * s, hours=j),
                    "utc_offset_min": 60,
                    "device": ["mobile", "desktop", "tablet"][(j + s) % 3],
                    "channel": ["organic_search", "email", "direct"][s % 3],
                    "latitude": 51.5155 if s % 2 else np.nan,
                    "longitude": -0.1420 if s % 2 else np.nan,
                    "region": "london",
                    "dwell_time_s": 60.0 * (s + 1),
                    "page_views": s + 1,
                    "pages_info": s,
                    "pages_product": 1,
                    "pages_store_locator": 0,
                    "pages_how_to": 0,
                    "pages_cart": 0,
                    "returning_visitor": s > 0,
                    "intent": ["know", "do", "buy", "go", "know"][s],
                }
            )
    return pd.DataFrame(rows)


def test_history_features_ignore_future_sessions(spec):
    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    full = fz.transform(canonical(raw, spec))
    # drop the last three sessions of every journey: earlier sessions' features must not change
    early = raw[raw["session_id"].str.endswith(("s0", "s1"))]
    partial = fz.transform(canonical(early, spec))
    pd.testing.assert_frame_equal(
        partial.reset_index(drop=True), full.loc[early.index].reset_index(drop=True)
    )


def test_history_features_never_see_the_label(spec):
    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    relabelled = raw.assign(intent="buy")
    a = fz.transform(to_contract(raw, spec, all_columns=False).sessions)
    b = fz.transform(to_contract(relabelled, spec, all_columns=False).sessions)
    pd.testing.assert_frame_equal(a, b)
    assert not any("label" in c or "intent" in c for c in fz.feature_names_)


def test_history_counts_are_known_for_hand_built_journeys(spec):
    raw = three_journeys()
    f = featurizer(spec).fit(canonical(raw, spec)).transform(canonical(raw, spec))
    j0 = f.iloc[:5]
    assert j0["session_index"].tolist() == [0, 1, 2, 3, 4]
    assert np.isnan(j0["hours_since_prev"].iloc[0])
    assert j0["hours_since_prev"].iloc[1:].tolist() == [240.0] * 4
    assert j0["hours_since_first"].tolist() == [0.0, 240.0, 480.0, 720.0, 960.0]
    # page views of earlier sessions: 0, 1, 1+2, 1+2+3, 1+2+3+4
    assert j0["past_page_views"].tolist() == [0.0, 1.0, 3.0, 6.0, 10.0]
    assert j0["prev_channel"].astype(object).tolist()[1:] == [
        "organic_search",
        "email",
        "direct",
        "organic_search",
    ]
    assert pd.isna(j0["prev_channel"].iloc[0])


def test_preserves_input_order_and_ignores_it(spec):
    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    expected = fz.transform(canonical(raw, spec))
    shuffled = raw.sample(frac=1.0, random_state=4)
    got = fz.transform(canonical(shuffled, spec))
    assert got["session_index"].tolist() == expected.loc[shuffled.index, "session_index"].tolist()
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), expected.loc[shuffled.index].reset_index(drop=True)
    )


def test_unknown_categories_become_missing_not_errors(spec):
    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    new = raw.head(2).assign(device="smartwatch", channel="carrier_pigeon")
    f = fz.transform(canonical(new, spec))
    assert f["device"].isna().all() and f["channel"].isna().all()
    assert list(f["device"].cat.categories) == ["desktop", "mobile", "tablet"]


def test_missing_location_is_flagged_and_distance_is_missing(spec):
    raw = three_journeys()
    f = featurizer(spec).fit(canonical(raw, spec)).transform(canonical(raw, spec))
    located = raw["latitude"].notna().to_numpy()
    assert (f["has_location"].to_numpy() == located).all()
    assert f.loc[~located, "store_distance_km"].isna().all()
    expected = haversine_km(51.5155, -0.1420, 51.5154, -0.1419)
    assert np.allclose(f.loc[located, "store_distance_km"], expected)
    assert (f.loc[located, "near_store"] == 1.0).all()


def test_absent_roles_at_scoring_give_missing_features(spec):
    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    only_device = pd.DataFrame({"session_id": ["x", "y"], "device": ["mobile", None]})
    f = fz.transform(canonical(only_device, spec))
    assert list(f.columns) == fz.feature_names_
    assert f["dwell_time_s"].isna().all() and f["session_index"].tolist() == [0.0, 0.0]


def test_sessions_without_journey_are_their_own_journey(spec):
    raw = three_journeys().drop(columns=["journey_id"])
    fz = featurizer(spec).fit(canonical(raw, spec))
    f = fz.transform(canonical(raw, spec))
    assert (f["session_index"] == 0).all()


def test_nearest_store_uses_haversine():
    # New York to London is about 5570 km
    assert abs(haversine_km(40.7128, -74.0060, 51.5074, -0.1278) - 5570) < 15


def test_invalid_parameters_are_named(spec):
    with pytest.raises(ValueError, match="near_store_km must be a positive number, got -5"):
        SessionFeaturizer(near_store_km=-5).fit(pd.DataFrame({"session_id": ["a"]}))
    with pytest.raises(ValueError, match="stores must be"):
        SessionFeaturizer(stores=[[1, 2, 3]]).fit(pd.DataFrame({"session_id": ["a"]}))


def test_transform_before_fit_fails_clearly():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SessionFeaturizer().transform(pd.DataFrame({"session_id": ["a"]}))


def test_missing_session_id_is_a_key_error():
    with pytest.raises(KeyError, match="session_id"):
        SessionFeaturizer().fit(pd.DataFrame({"device": ["mobile"]}))


def test_feature_matrix_holds_the_numbers_of_the_feature_frame(spec, small_sessions):
    """What the scorer predicts from (categories as codes, NaN when unseen) is the frame the
    booster was trained on, value for value."""
    from pipelines.core.modelling import feature_matrix

    fz = featurizer(spec).fit(canonical(small_sessions, spec))
    new = small_sessions.head(120).copy()
    new.loc[new.index[::7], "device"] = "smartwatch"
    new.loc[new.index[::5], ["latitude", "longitude"]] = np.nan
    sessions = canonical(new, spec)
    frame = fz.transform(sessions)
    matrix = fz.transform_matrix(sessions)
    assert matrix.shape == (len(new), len(fz.feature_names_))
    np.testing.assert_array_equal(matrix, feature_matrix(frame))
    assert np.isnan(matrix[::7, fz.feature_names_.index("device")]).all()


def test_a_journey_alone_gets_the_features_it_gets_in_a_batch(spec, small_sessions):
    """A real-time call passes one journey's sessions; its features are those the batch gives it
    (category levels are looked up differently for a few rows and for many)."""
    fz = featurizer(spec).fit(canonical(small_sessions, spec))
    batch = canonical(small_sessions, spec)
    everything = fz.transform_matrix(batch)
    for journey in batch["journey_id"].unique()[:25]:
        rows = np.flatnonzero(batch["journey_id"].to_numpy() == journey)
        alone = fz.transform_matrix(batch.iloc[rows].reset_index(drop=True))
        np.testing.assert_array_equal(alone, everything[rows])


def test_a_fitted_featurizer_pickles_without_its_lookup_cache(spec):
    import pickle

    raw = three_journeys()
    fz = featurizer(spec).fit(canonical(raw, spec))
    before = fz.transform_matrix(canonical(raw, spec))  # builds the cache
    state = fz.__getstate__()
    assert "_level_lookup" not in state
    again = pickle.loads(pickle.dumps(fz))
    np.testing.assert_array_equal(again.transform_matrix(canonical(raw, spec)), before)


def test_local_time_and_store_distance_match_pandas_and_a_store_index_on_random_sessions():
    """The featurizer's clock and store distance are the ones the model was trained on: pandas'
    local time (UTC plus the offset in minutes) and a haversine BallTree of the stores."""
    from sklearn.neighbors import BallTree

    rng = np.random.default_rng(5)
    n = 2000
    sessions = pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "started_at": pd.to_datetime(rng.integers(0, 2_000_000_000, n), unit="s", utc=True),
            "utc_offset_min": rng.integers(-840, 841, n).astype(float),
            "latitude": rng.uniform(-60, 60, n),
            "longitude": rng.uniform(-180, 180, n),
        }
    )
    sessions.loc[::9, "utc_offset_min"] = np.nan
    sessions.loc[::13, "latitude"] = np.nan
    f = SessionFeaturizer(stores=STORES, history=False).fit(sessions).transform(sessions)

    local = sessions["started_at"].dt.tz_localize(None) + pd.to_timedelta(
        sessions["utc_offset_min"].fillna(0), unit="m"
    )
    np.testing.assert_array_equal(f["local_hour"], local.dt.hour.astype(float))
    np.testing.assert_array_equal(f["weekday"], local.dt.day_of_week.astype(float))
    located = sessions["latitude"].notna().to_numpy()
    tree = BallTree(np.radians(STORES), metric="haversine")
    points = sessions.loc[located, ["latitude", "longitude"]].to_numpy()
    distance, _ = tree.query(np.radians(points), k=1)
    np.testing.assert_array_equal(f.loc[located, "store_distance_km"], distance[:, 0] * 6371.0088)
    assert f.loc[~located, "store_distance_km"].isna().all()
