"""Reading inputs: session files (parquet files, folders of parts, CSV) and the tables beside them.

Every reader names the file and what is wrong with it: a missing path, an empty or unreadable
file, parts whose columns differ.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.core.contract import ContractError


class EmptyInput(ValueError):
    """An input file with nothing in it."""


class PartMismatch(ValueError):
    """Parquet parts of one dataset whose columns or types differ."""


def input_files(path: Path) -> list[Path]:
    """The data files of an input: the file itself, or a folder's .parquet/.csv files in name
    order (hidden and `_` files, such as output marks, left out)."""
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
    files = input_files(path)
    if all(f.suffix == ".csv" for f in files):
        frames = [_read_csv(f, columns) for f in files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if any(f.suffix == ".csv" for f in files):
        raise ValueError(f"{path}: mixes .csv and .parquet files; keep one format per dataset")
    check_parts(files)
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


def _read_csv(path: Path, columns: list[str] | None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=lambda c: columns is None or c in columns)
    except pd.errors.EmptyDataError:
        raise EmptyInput(f"{path}: the file is empty (no header, no rows)") from None


def check_parts(files: list[Path]) -> None:
    """Refuse parquet parts whose columns or types differ from the first part's: a dataset read
    across them would fill the missing columns with nulls or fail without naming the part."""

    if len(files) < 2:
        return
    first = pq.read_schema(files[0])
    for f in files[1:]:
        schema = pq.read_schema(f)
        for field in first:
            if field.name not in schema.names:
                raise PartMismatch(
                    f"{f}: column '{field.name}' is missing from this part (it is in {files[0].name})"
                )
            other = schema.field(field.name).type
            if other != field.type and not (pa_types_compatible(field.type, other)):
                raise PartMismatch(
                    f"{f}: column '{field.name}' is {other} here but {field.type} in {files[0].name}"
                )
        extra = [n for n in schema.names if n not in first.names]
        if extra:
            raise PartMismatch(f"{f}: column '{extra[0]}' is not in {files[0].name}")


def pa_types_compatible(a, b) -> bool:
    """Types a dataset reads across parts as one column (null and any type, int widths, text)."""

    if pa.types.is_null(a) or pa.types.is_null(b):
        return True
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return True
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return True
    if (pa.types.is_string(a) or pa.types.is_large_string(a)) and (
        pa.types.is_string(b) or pa.types.is_large_string(b)
    ):
        return True
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        return a.tz == b.tz
    return False


def describe_source(path: str | os.PathLike) -> str:
    return str(Path(path))


_CSV_READ = pacsv.ReadOptions(block_size=1 << 22)


def iter_batches(path: str | Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `batch_rows` rows from parquet files or CSV files."""
    files = input_files(Path(path))
    check_parts([f for f in files if f.suffix == ".parquet"])
    for f in files:
        if f.suffix == ".csv":
            reader = _open_csv(f)
            for batch in reader:
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
        else:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)


def _open_csv(path: Path):
    """A streaming CSV reader with each column's type fixed from the whole file (see
    `csv_types`): pyarrow alone infers types from the first block and fails on a later one."""
    try:
        types = csv_types(path)
        # an empty field is missing, as pandas (and so training) reads it, not an empty text
        options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
        return pacsv.open_csv(path, read_options=_CSV_READ, convert_options=options)
    except (pa.ArrowInvalid, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise EmptyInput(f"{path}: cannot be read as CSV: {err}") from None


# pandas' type of a whole CSV column (`csv_dtypes`) as the Arrow type it streams in; anything
# else (text, flags mixed with missing values) streams as text, which the contract converts
ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def csv_types(path: Path) -> dict[str, pa.DataType]:
    """The Arrow type of each column of a CSV file, from one pass over the whole file
    (remembered while the file is unchanged)."""
    stat = Path(path).stat()
    kinds = _csv_kinds_of(str(path), stat.st_mtime_ns, stat.st_size)
    return {col: ARROW_TYPES.get(kind, pa.string()) for col, kind in kinds.items()}


@functools.lru_cache(maxsize=32)
def _csv_kinds_of(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    return csv_dtypes([path])


def count_rows(path: str | Path) -> int:
    """Row count: from parquet metadata, or for CSV by streaming through the files once (the
    bucket count follows from it, and with it the memory of scoring)."""
    files = input_files(Path(path))
    return sum(
        sum(b.num_rows for b in _open_csv(f))
        if f.suffix == ".csv"
        else pq.ParquetFile(f).metadata.num_rows
        for f in files
    )


class InputFingerprint:
    """A content hash of an input, folded batch by batch in input order (any batch sizes give
    the same hash): what proves a scores folder belongs to the input a later stage reads."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if self.rows == 0:
            self._hash.update(",".join(batch.schema.names).encode())
        frame = batch.to_pandas()
        for name, kind in zip(batch.schema.names, batch.schema.types, strict=True):
            if pa.types.is_nested(kind):  # lists and structs: pandas hashes scalars only
                frame[name] = [repr(v) for v in batch.column(name).to_pylist()]
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        self._hash.update(rows.astype(np.uint64).tobytes())
        self.rows += batch.num_rows

    def hexdigest(self) -> str:
        return f"{self.rows}:{self._hash.hexdigest()[:24]}"


def input_fingerprint(path: str | Path, batch_rows: int = 250_000) -> str:
    """The `InputFingerprint` of a whole input (the one `score_file` records in its summary)."""
    fp = InputFingerprint()
    for batch in iter_batches(path, batch_rows):
        fp.add(batch)
    return fp.hexdigest()


def csv_dtypes(files: list[str], chunk_rows: int = 1_000_000) -> dict[str, str]:
    """The type pandas gives each column when it reads the CSV files whole, found in one
    streaming pass. Dask infers types from the first block alone, and a later block that differs
    (a missing value in a column of integers, text in a mostly numeric one) would fail the read;
    every column as text would refuse numbers at the session contract."""
    kinds: dict[str, set[str]] = {}
    for f in files:
        for chunk in pd.read_csv(f, chunksize=chunk_rows):
            for col in chunk.columns:
                kinds.setdefault(col, set()).update(_csv_kinds(chunk[col]))
    return {col: _csv_dtype(found) for col, found in kinds.items()}


def _csv_kinds(values: pd.Series) -> set[str]:
    """What a chunk's column holds: its values' kind, and "missing" when some are missing."""
    found = {"missing"} if values.isna().any() else set()
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "empty":
        return found
    if kind == "boolean":
        return found | {"bool"}
    if kind == "integer":
        return found | {"int"}
    if kind in ("floating", "mixed-integer-float"):
        return found | {"float"}
    return found | {"text"}


def _csv_dtype(kinds: set[str]) -> str:
    """The type of a column whose chunks held `kinds`."""
    values = kinds - {"missing"}
    if "text" in values:
        return "str"
    if "bool" in values:
        # true/false with missing values or numbers: pandas keeps the values as objects
        return "bool" if kinds == {"bool"} else "object"
    if values == {"int"} and "missing" not in kinds:
        return "int64"
    return "float64"


def load_stores(path: str | None) -> list[list[float]] | None:
    """Store coordinates from a CSV or parquet table with latitude and longitude columns."""
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: store table not found (data.stores_path); set it to null to train without store features"
        )
    table = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    for col in ("latitude", "longitude"):
        if col not in table.columns:
            raise KeyError(f"{p}: store table needs a '{col}' column, found {list(table.columns)}")
    return table[["latitude", "longitude"]].astype(float).to_numpy().tolist()


def read_columns(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """The given columns of every input file, in the order the scorer numbers rows."""
    parts = []
    for f in input_files(Path(path)):
        if f.suffix == ".csv":
            opts = pacsv.ConvertOptions(
                include_columns=columns,
                include_missing_columns=True,
                strings_can_be_null=True,
                column_types={c: kind for c, kind in csv_types(f).items() if c in columns},
            )
            table = pacsv.read_csv(f, convert_options=opts)
        else:
            schema = pq.read_schema(f)
            table = pq.read_table(f, columns=[c for c in columns if c in schema.names])
        parts.append(table)
    return pa.concat_tables(parts, promote_options="permissive").to_pandas()


def read_window(
    path: str, started_col: str, days: float, end: str | None
) -> tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    """Sessions that started in the last `days` days before `end` (default: the latest session)."""
    raw = read_sessions(path)
    if started_col not in raw.columns:
        raise ContractError(
            f"{path}: the time column '{started_col}' is missing; a window is picked by it"
        )
    started = pd.to_datetime(raw[started_col], utc=True, errors="coerce", format="ISO8601")
    if started.notna().sum() == 0:
        raise ContractError(f"{path}: no readable timestamps in '{started_col}'")
    stop = pd.Timestamp(end, tz="UTC") if end else started.max()
    start = stop - pd.Timedelta(days=float(days))
    window = raw[(started > start) & (started <= stop)].reset_index(drop=True)
    if window.empty:
        raise EmptyInput(f"{path}: no sessions between {start} and {stop}")
    return window, start, stop
