"""Where and when a session happens: distances on the Earth and the local clock.

The features, the touchpoint rules and the synthetic generator all measure the distance to the
nearest store and the local hour of a session; they do it with these functions, so a model's
features and the rules a feed applies agree to the last bit.

Times are int64 nanoseconds since the epoch (UTC) and offsets are minutes east of UTC: plain
NumPy arithmetic, which costs microseconds on the one session of a real-time call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import BallTree

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEG_LAT = 111.32
NS_PER_HOUR = 3_600_000_000_000
NS_PER_DAY = 86_400_000_000_000


# ---------------------------------------------------------------------------------------------
# distances


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees."""
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def offset_km(
    lat: np.ndarray, lon: np.ndarray, east_km: np.ndarray, north_km: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move points by a small offset in km (equirectangular; exact enough within a city)."""
    new_lat = lat + north_km / KM_PER_DEG_LAT
    new_lon = lon + east_km / (KM_PER_DEG_LAT * np.cos(np.radians(lat)))
    return new_lat, new_lon


def planar_km(
    lat: np.ndarray, lon: np.ndarray, ref_lat: np.ndarray, ref_lon: np.ndarray
) -> np.ndarray:
    """Inverse of `offset_km`: distance in km from the reference point."""
    north = (lat - ref_lat) * KM_PER_DEG_LAT
    east = (lon - ref_lon) * KM_PER_DEG_LAT * np.cos(np.radians(ref_lat))
    return np.hypot(east, north)


def store_index(stores: Sequence[Sequence[float]] | np.ndarray | None) -> BallTree | None:
    """A great-circle index of store coordinates `[[lat, lon], ...]`; None without stores."""
    if stores is None or len(stores) == 0:
        return None
    return BallTree(np.radians(np.asarray(stores, dtype=float)), metric="haversine")


def nearest_store_km(lat: np.ndarray, lon: np.ndarray, index: BallTree | None) -> np.ndarray:
    """Great-circle distance in km from each point to the nearest store of `index` (see
    `store_index`); NaN for a point without both coordinates, and everywhere without stores."""
    out = np.full(len(lat), np.nan)
    located = np.isfinite(lat) & np.isfinite(lon)
    if index is not None and located.any():
        dist, _ = index.query(np.radians(np.column_stack([lat[located], lon[located]])), k=1)
        out[located] = dist[:, 0] * EARTH_RADIUS_KM
    return out


# ---------------------------------------------------------------------------------------------
# local time


def utc_nanoseconds(times: pd.Series | pd.arrays.DatetimeArray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as int64 nanoseconds since the epoch in UTC (0 where missing), and which are
    present; naive timestamps are taken as UTC."""
    values = times.to_numpy(dtype="datetime64[ns]")
    valid = ~np.isnat(values)
    return np.where(valid, values.astype(np.int64), 0), valid


def local_clock_ns(utc_ns: np.ndarray, utc_offset_min: np.ndarray | None) -> np.ndarray:
    """The local wall clock as int64 nanoseconds: UTC plus the offset in minutes (a missing
    offset, or none at all, counts as UTC)."""
    if utc_offset_min is None:
        return utc_ns
    return utc_ns + np.round(np.nan_to_num(utc_offset_min) * 60e9).astype(np.int64)


def local_hour(utc_ns: np.ndarray, utc_offset_min: np.ndarray | None) -> np.ndarray:
    """The local hour of day, 0..23, of each UTC time (int64 nanoseconds)."""
    return (local_clock_ns(utc_ns, utc_offset_min) // NS_PER_HOUR) % 24


def local_day(utc_ns: np.ndarray, utc_offset_min: np.ndarray | None) -> np.ndarray:
    """The local calendar day of each UTC time, as days since 1970-01-01."""
    return local_clock_ns(utc_ns, utc_offset_min) // NS_PER_DAY


def local_weekday(utc_ns: np.ndarray, utc_offset_min: np.ndarray | None) -> np.ndarray:
    """The local day of the week, Monday 0 .. Sunday 6."""
    return (local_day(utc_ns, utc_offset_min) + 3) % 7  # 1970-01-01 was a Thursday
