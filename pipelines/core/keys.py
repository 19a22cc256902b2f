"""Stable keys and hashes: the journey of a session, salted hashes of ids, buckets and content
fingerprints.

Every hash here is pandas' `hash_pandas_object` of the values alone (never the index): the same
ids give the same numbers in any order, in any process, on any machine. Splits, holdouts, buckets
and fingerprints all rest on that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def journey_key(sessions: pd.DataFrame) -> pd.Series:
    """The journey of each session as splits key it: its journey id, or its own id without one."""
    journey = sessions["journey_id"] if "journey_id" in sessions else sessions["session_id"]
    return journey.where(journey.notna(), sessions["session_id"]).astype(str)


def salted_hash(ids: pd.Series, salt: str) -> np.ndarray:
    """A uint64 hash of each id (as text) followed by `salt`: a different salt gives an
    independent-looking hash of the same ids."""
    return pd.util.hash_pandas_object(ids.astype(str) + salt, index=False).to_numpy()


def unit_hash(keys: pd.Series, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per key and salt, stable across runs, machines and input order."""
    return (salted_hash(keys, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def bucket_of(journeys: pd.Series, n_buckets: int) -> np.ndarray:
    """The bucket of each journey id: a stable hash, so a journey lands whole in one bucket."""
    return (salted_hash(journeys, "") % np.uint64(n_buckets)).astype(np.int64)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A uint64 hash of each row's values (the index left out), in row order."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def fingerprint_of_rows(columns: Sequence, hashes) -> str:
    """`data_fingerprint` from the column names and each row's `row_hashes` hash, in row order:
    rows hashed where they live (on a cluster) fingerprint like the whole frame."""
    h = hashlib.sha256()
    h.update(",".join(map(str, columns)).encode())
    h.update(np.asarray(hashes, dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (row order and column order included)."""
    return fingerprint_of_rows(frame.columns, row_hashes(frame))


def job_key(fingerprint: str, cfg: Mapping) -> str:
    """Same data and same training config -> same key (volatile keys such as paths excluded)."""
    relevant = {k: cfg[k] for k in ("data", "features", "model", "split", "runtime") if k in cfg}
    relevant = json.loads(json.dumps(relevant, default=str))
    relevant.get("data", {}).pop("path", None)
    relevant.get("runtime", {}).pop("threads", None)
    relevant.get("runtime", {}).pop("log_level", None)
    text = fingerprint + json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
