"""Reading inputs: session files (parquet files, folders of parts, CSV) and the tables beside them.

Every reader names the file and what is wrong with it: a missing path, an empty or unreadable
file, parts whose columns differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds


class EmptyInput(ValueError):
    """An input file with nothing in it."""


class PartMismatch(ValueError):
    """Parquet parts of one dataset whose columns or types differ."""


class OutputRefused(ValueError):
    """An output path that would overwrite the input or something the command did not write."""


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
    import pyarrow.parquet as pq

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
    import pyarrow as pa

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
