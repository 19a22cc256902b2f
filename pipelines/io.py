"""Reading sessions and writing outputs atomically (an interrupted run leaves nothing half-written)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix in (".parquet", ".csv") and not p.name.startswith((".", "_"))
        )
        if not files:
            raise FileNotFoundError(f"{path}: folder holds no .parquet or .csv files")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def read_sessions(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file, a folder of parquet parts, or a CSV file into one frame."""
    path = Path(path)
    files = _files(path)
    if all(f.suffix == ".csv" for f in files):
        frames = [pd.read_csv(f, usecols=lambda c: columns is None or c in columns) for f in files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if any(f.suffix == ".csv" for f in files):
        raise ValueError(f"{path}: mixes .csv and .parquet files; keep one format per dataset")
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


def describe_source(path: str | os.PathLike) -> str:
    return str(Path(path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove what killed runs left beside `target` (their process is gone)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        parts = stale.name[len(target.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Works for files and folders. A crash inside the block leaves `target` as it was, and a run
    killed outright leaves only a hidden temporary, which the next run removes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    work = tmp / target.name
    try:
        yield work
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(work, target)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(frame: pd.DataFrame, target: str | os.PathLike) -> Path:
    """Write one parquet file atomically."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def write_rejects(rejects: pd.DataFrame, target: str | os.PathLike) -> Path:
    """Write rejected rows; mixed-type user columns are kept as text so any input can be written."""
    out = rejects.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(
                lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
            )
    return write_parquet(out, target)
