"""Writing outputs atomically (an interrupted run leaves nothing half-written), and only where this
run may write: an output folder carries a mark naming the command that owns it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Clean up after killed runs (their process is gone): remove their temporaries, and put back
    a previous output one of them had moved aside when it died before renaming its own onto it."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        parts = stale.name[len(target.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(stale, ignore_errors=True)
    for moved in target.parent.glob(f".{target.name}.old-*"):
        pid = moved.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if target.exists() or target.is_symlink():
                shutil.rmtree(moved) if moved.is_dir() else moved.unlink()
            else:
                os.replace(moved, target)


# the mark a command leaves in each output folder it writes: a later run may replace only these
OUTPUT_MARK = ".micromoment-output"
# what an output folder written before outputs were marked holds, by command
_UNMARKED_OUTPUTS = {
    "score": ("summary.json", "predictions"),
    "touchpoints": ("summary.json", "feed.parquet"),
    "export": ("MLmodel", "export.json"),
}


class OutputRefused(ValueError):
    """An output path that would overwrite the input or something the command did not write."""


def owner_of(path: Path) -> str | None:
    """The command that wrote the output at `path` (None when no micromoment command did)."""
    if path.is_dir():
        mark = path / OUTPUT_MARK
        if mark.is_file():
            with contextlib.suppress(ValueError, OSError):
                return json.loads(mark.read_text()).get("command")
        for command, names in _UNMARKED_OUTPUTS.items():
            if all((path / n).exists() for n in names):
                return command
        return None
    if path.suffix == ".json":
        with contextlib.suppress(ValueError, OSError, AttributeError):
            data = json.loads(path.read_text())
            return data.get("written_by") or ("retrain" if "exit_code" in data else None)
    if path.suffix == ".lock":
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            return "retrain" if text == "" or text.startswith("pid ") else None
    return None


def claim_output(
    target: str | os.PathLike, command: str, inputs: tuple[str | os.PathLike | None, ...] = ()
) -> Path:
    """Refuse, before any work, an output path that would destroy what the run did not create.

    Refused: the output equal to an input, inside one, or holding one; an output inside a
    previous output of the same command; an existing file or non-empty folder that is not a
    previous output of the same command. Replacing a previous
    output of `command` stays allowed (and atomic, see `atomic_path`).
    """
    target = Path(target)
    resolved = target.resolve()
    for given in inputs:
        if given is None or "://" in str(given):
            continue
        source = Path(given).resolve()
        if resolved == source:
            raise OutputRefused(f"{target}: the output is the input {given}; write it elsewhere")
        if source in resolved.parents:
            raise OutputRefused(
                f"{target}: the output lies inside the input {given}; write it elsewhere"
            )
        if resolved in source.parents:
            raise OutputRefused(
                f"{target}: the output holds the input {given}, which replacing it would delete; "
                "write it elsewhere"
            )
    for parent in resolved.parents:
        if (parent / OUTPUT_MARK).is_file() and owner_of(parent) == command:
            raise OutputRefused(
                f"{target}: lies inside {parent}, an output of `micromoment {command}`; "
                "write it beside that output, not into it"
            )
    if target.is_dir() and not any(target.iterdir()):
        return target
    if target.exists() or target.is_symlink():
        owner = owner_of(target)
        if owner != command:
            what = "folder" if target.is_dir() else "file"
            by = f"written by `micromoment {owner}`" if owner else "not written by micromoment"
            raise OutputRefused(
                f"{target}: an existing {what} {by}, not a previous output of "
                f"`micromoment {command}`; remove it or choose another output path"
            )
    return target


def mark_output(folder: Path, command: str) -> None:
    """Mark `folder` as an output of `command` (see `claim_output`)."""
    (Path(folder) / OUTPUT_MARK).write_text(json.dumps({"command": command}) + "\n")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, owner: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Works for files and folders. A crash inside the block leaves `target` as it was, and a run
    killed outright leaves only a hidden temporary, which the next run removes. With `owner` (a
    command name) a folder is marked as that command's output (see `claim_output`).
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
        if not (work.exists() or work.is_symlink()):
            raise RuntimeError(f"{target}: the run wrote nothing there; left as it was")
        if owner and work.is_dir():
            mark_output(work, owner)
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


def table_of(frame: pd.DataFrame) -> pa.Table:
    """`frame` as an Arrow table without its index."""
    with warnings.catch_warnings():
        # pyarrow reads tz-aware columns through Series.values, which pandas 3.1 flags
        warnings.filterwarnings("ignore", "Series.values", DeprecationWarning)
        return pa.Table.from_pandas(frame, preserve_index=False)


class ParquetAppender:
    """One parquet file written a table at a time, so memory does not grow with its size.

    The file is created by the first table; every later one is cast to that table's schema.
    Nothing is written for no tables (see `opened`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    @property
    def opened(self) -> bool:
        return self._writer is not None

    def write(self, data: pd.DataFrame | pa.Table) -> None:
        table = data if isinstance(data, pa.Table) else table_of(data)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> ParquetAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def concat_parts(parts: list[Path], target: Path) -> bool:
    """Stream part files into one parquet file (bounded memory); False when there were none."""
    with ParquetAppender(target) as out:
        for part in parts:
            out.write(pq.read_table(part))
    return out.opened


def part_name(chunk: int) -> str:
    """The file name of part `chunk` of a partitioned output (`sessions/`, `predictions/`)."""
    return f"part-{chunk:05d}.parquet"


def write_stores(stores: pd.DataFrame, out: Path) -> None:
    """`<out>/stores.csv`: a store table (latitude, longitude), written atomically."""
    with atomic_path(Path(out) / "stores.csv") as tmp:
        stores.to_csv(tmp, index=False)


class LockHeld(RuntimeError):
    """Another process holds the lock a job needs."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "job") -> Iterator[None]:
    """An exclusive, non-blocking lock on `path` for the life of a `what` (released by the OS if
    the process dies, so a killed job never leaves a stale lock); `LockHeld` when another holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise LockHeld(f"another {what} holds the lock {path} ({holder}); exiting") from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}".encode(),
        )
        yield
    finally:
        os.close(fd)
