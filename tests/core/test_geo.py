"""Distances on the Earth and the local clock of a session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core import geo

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)


def _random_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)


def _utc_times(rng: np.random.Generator, n: int) -> pd.Series:
    seconds = rng.integers(0, 2_000_000_000, n)
    return pd.Series(pd.to_datetime(seconds, unit="s", utc=True))


# ---------------------------------------------------------------------------------------------
# distances


def test_paris_to_london_is_about_344_km():
    assert geo.haversine_km(*PARIS, *LONDON) == pytest.approx(344, abs=2)


def test_distance_is_symmetric_and_zero_to_itself():
    assert geo.haversine_km(*PARIS, *LONDON) == pytest.approx(geo.haversine_km(*LONDON, *PARIS))
    assert geo.haversine_km(*PARIS, *PARIS) == 0.0


def test_planar_and_great_circle_distances_agree_within_a_city():
    rng = np.random.default_rng(0)
    east, north = rng.uniform(-10, 10, 500), rng.uniform(-10, 10, 500)
    lat, lon = geo.offset_km(np.full(500, PARIS[0]), np.full(500, PARIS[1]), east, north)
    planar = geo.planar_km(lat, lon, PARIS[0], PARIS[1])
    assert np.allclose(planar, np.hypot(east, north), rtol=1e-9)
    great_circle = geo.haversine_km(lat, lon, PARIS[0], PARIS[1])
    assert np.allclose(planar, great_circle, rtol=0.01, atol=0.01)


def test_nearest_store_is_the_closest_of_all_stores():
    rng = np.random.default_rng(1)
    stores = np.column_stack(_random_points(rng, 20))
    lat, lon = _random_points(rng, 300)
    got = geo.nearest_store_km(lat, lon, geo.store_index(stores))
    every_store = geo.haversine_km(lat[:, None], lon[:, None], stores[:, 0], stores[:, 1])
    assert np.allclose(got, every_store.min(axis=1), rtol=1e-9, atol=1e-6)


def test_nearest_store_is_what_the_store_index_measured_before():
    """The featurizer and the touchpoints queried a haversine BallTree of the stores and scaled
    by the Earth's radius: the shared function returns those numbers bit for bit."""
    from sklearn.neighbors import BallTree

    rng = np.random.default_rng(2)
    stores = np.column_stack(_random_points(rng, 15))
    lat, lon = _random_points(rng, 400)
    lat[::7] = np.nan
    tree = BallTree(np.radians(stores), metric="haversine")
    located = ~np.isnan(lat)
    d, _ = tree.query(np.radians(np.column_stack([lat[located], lon[located]])), k=1)
    expected = np.full(len(lat), np.nan)
    expected[located] = d[:, 0] * 6371.0088
    got = geo.nearest_store_km(lat, lon, geo.store_index(stores))
    np.testing.assert_array_equal(got, expected)


def test_points_without_coordinates_or_stores_have_no_store_distance():
    lat, lon = np.array([PARIS[0], np.nan, PARIS[0]]), np.array([PARIS[1], 2.0, np.nan])
    got = geo.nearest_store_km(lat, lon, geo.store_index([LONDON]))
    assert got[0] == pytest.approx(344, abs=2) and np.isnan(got[1:]).all()
    assert geo.store_index([]) is None and geo.store_index(None) is None
    assert np.isnan(geo.nearest_store_km(lat, lon, None)).all()


# ---------------------------------------------------------------------------------------------
# local time


def test_local_hour_adds_the_offset_to_utc():
    ns, _ = geo.utc_nanoseconds(pd.Series(pd.to_datetime(["2024-05-01 10:30"], utc=True)))
    assert geo.local_hour(ns, np.array([0.0]))[0] == 10
    assert geo.local_hour(ns, np.array([120.0]))[0] == 12
    assert geo.local_hour(ns, np.array([330.0]))[0] == 16  # +5:30 -> 16:00
    assert geo.local_hour(ns, None)[0] == 10


def test_local_hour_wraps_across_midnight_with_negative_offsets():
    times = pd.Series(pd.to_datetime(["2024-05-01 02:15", "2024-05-01 23:50"], utc=True))
    ns, _ = geo.utc_nanoseconds(times)
    assert geo.local_hour(ns, np.array([-300.0, 300.0])).tolist() == [21, 4]
    # 02:15 UTC at -5 h is the evening before: a Tuesday; 23:50 UTC at +5 h is Thursday
    assert geo.local_weekday(ns, np.array([-300.0, 300.0])).tolist() == [1, 3]
    assert (geo.local_day(ns, np.array([-300.0, 300.0])) - geo.local_day(ns, None)).tolist() == [
        -1,
        1,
    ]


def test_missing_offset_counts_as_utc():
    ns, _ = geo.utc_nanoseconds(pd.Series(pd.to_datetime(["2024-05-01 07:00"] * 2, utc=True)))
    assert geo.local_hour(ns, np.array([np.nan, 60.0])).tolist() == [7, 8]


def test_naive_and_zoned_times_give_the_same_utc_nanoseconds():
    naive = pd.Series(pd.to_datetime(["2024-05-01 07:00", None]))
    zoned = pd.Series(pd.to_datetime(["2024-05-01 09:00+02:00", None], utc=True))
    paris = zoned.dt.tz_convert("Europe/Paris")
    for series in (zoned, paris):
        ns, valid = geo.utc_nanoseconds(series)
        np.testing.assert_array_equal(ns, geo.utc_nanoseconds(naive)[0])
        assert valid.tolist() == [True, False]


def test_local_hour_and_weekday_match_pandas_local_time_on_random_sessions():
    """The pandas computation the touchpoints, the featurizer and the generator used before:
    UTC made naive plus a timedelta of the offset in minutes, then its hour and weekday."""
    rng = np.random.default_rng(3)
    started = _utc_times(rng, 5000)
    offset = rng.integers(-14 * 60, 14 * 60 + 1, 5000).astype(float)
    offset[::3] = rng.uniform(-840, 840, len(offset[::3])).round(2)  # odd offsets too
    offset[::11] = np.nan
    local = started.dt.tz_convert("UTC").dt.tz_localize(None) + pd.to_timedelta(
        pd.Series(offset).fillna(0), unit="m"
    )
    ns, _ = geo.utc_nanoseconds(started)
    np.testing.assert_array_equal(geo.local_hour(ns, offset), local.dt.hour.to_numpy())
    np.testing.assert_array_equal(geo.local_weekday(ns, offset), local.dt.day_of_week.to_numpy())
    epoch_days = (local.dt.normalize() - pd.Timestamp("1970-01-01")).dt.days.to_numpy()
    np.testing.assert_array_equal(geo.local_day(ns, offset), epoch_days)
