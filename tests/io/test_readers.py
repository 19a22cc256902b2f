"""Reading inputs: which files an input is, sessions from parquet parts and CSV, batches, row
counts, fingerprints, store tables and single columns; every refusal names the file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io.readers import (
    InputFingerprint,
    PartMismatch,
    check_parts,
    count_rows,
    csv_dtypes,
    input_files,
    input_fingerprint,
    iter_batches,
    load_stores,
    read_columns,
    read_sessions,
)
from pipelines.stages import runner


def sessions(first: int, n: int) -> pd.DataFrame:
    """`n` sessions numbered from `first`, two per journey."""
    ids = range(first, first + n)
    return pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in ids],
            "journey_id": [f"j{i // 2}" for i in ids],
            "dwell_time_s": [float(i) for i in ids],
        }
    )


@pytest.fixture
def parts(tmp_path):
    """Ten sessions in three parquet parts (4, 3 and 3 rows) beside an output mark."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    for i, (first, n) in enumerate([(0, 4), (4, 3), (7, 3)]):
        sessions(first, n).to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    (folder / ".micromoment-output").write_text("{}")
    (folder / "_SUCCESS.parquet").write_text("not data")
    return folder


# -- input_files ---------------------------------------------------------------------------------


def test_a_folder_is_its_data_files_in_name_order_without_hidden_or_underscore_files(tmp_path):
    for name in ["b.parquet", "a.csv", ".hidden.parquet", "_mark.csv", "notes.txt", "sub/c.csv"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in input_files(tmp_path)] == [
        "a.csv",
        "b.parquet",
        "sub/c.csv",
    ]


def test_a_file_is_its_own_input(tmp_path):
    (tmp_path / "in.csv").write_text("a\n1\n")
    assert input_files(tmp_path / "in.csv") == [tmp_path / "in.csv"]


def test_a_missing_path_is_refused_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.parquet: no such file or folder"):
        input_files(tmp_path / "nowhere.parquet")


def test_a_folder_without_data_files_is_refused_naming_it(tmp_path):
    (tmp_path / "readme.txt").write_text("no data")
    with pytest.raises(FileNotFoundError, match="folder holds no .parquet or .csv files"):
        input_files(tmp_path)


# -- read_sessions -------------------------------------------------------------------------------


def test_parquet_parts_are_read_as_one_frame_in_part_order(parts):
    frame = read_sessions(parts)
    pd.testing.assert_frame_equal(frame, sessions(0, 10), check_dtype=False)


def test_asking_for_columns_reads_only_those_the_data_has(parts):
    frame = read_sessions(parts, columns=["session_id", "not_there"])
    assert list(frame.columns) == ["session_id"]
    assert frame["session_id"].tolist() == [f"s{i}" for i in range(10)]


def test_csv_files_of_a_folder_are_read_one_after_the_other(tmp_path):
    sessions(0, 3).to_csv(tmp_path / "a.csv", index=False)
    sessions(3, 2).to_csv(tmp_path / "b.csv", index=False)
    frame = read_sessions(tmp_path, columns=["session_id", "dwell_time_s"])
    assert list(frame.columns) == ["session_id", "dwell_time_s"]
    assert frame["session_id"].tolist() == ["s0", "s1", "s2", "s3", "s4"]


def test_a_folder_mixing_csv_and_parquet_is_refused(tmp_path):
    sessions(0, 2).to_csv(tmp_path / "a.csv", index=False)
    sessions(2, 2).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="mixes .csv and .parquet files"):
        read_sessions(tmp_path)


# -- check_parts ---------------------------------------------------------------------------------


def write_part(path, **columns: pa.Array) -> None:
    pq.write_table(pa.table(columns), path)


def test_parts_whose_integer_widths_differ_read_as_one_column(tmp_path):
    write_part(tmp_path / "p0.parquet", n=pa.array([1], pa.int32()))
    write_part(tmp_path / "p1.parquet", n=pa.array([2], pa.int64()))
    check_parts([tmp_path / "p0.parquet", tmp_path / "p1.parquet"])
    assert read_sessions(tmp_path)["n"].tolist() == [1, 2]


def test_parts_whose_timestamps_have_other_time_zones_are_refused(tmp_path):
    write_part(tmp_path / "p0.parquet", t=pa.array([0], pa.timestamp("us", tz="UTC")))
    write_part(tmp_path / "p1.parquet", t=pa.array([0], pa.timestamp("us", tz="Europe/Paris")))
    with pytest.raises(PartMismatch, match=r"p1.parquet: column 't' is timestamp\[us, tz=Europe"):
        check_parts([tmp_path / "p0.parquet", tmp_path / "p1.parquet"])


def test_a_part_with_a_column_the_first_lacks_is_refused_naming_it(tmp_path):
    write_part(tmp_path / "p0.parquet", a=pa.array([1]))
    write_part(tmp_path / "p1.parquet", a=pa.array([2]), extra=pa.array(["x"]))
    with pytest.raises(PartMismatch, match="p1.parquet: column 'extra' is not in p0.parquet"):
        check_parts([tmp_path / "p0.parquet", tmp_path / "p1.parquet"])


def test_a_single_part_is_never_refused(tmp_path):
    write_part(tmp_path / "p0.parquet", a=pa.array([1]))
    check_parts([tmp_path / "p0.parquet"])


# -- batches and counts --------------------------------------------------------------------------


def test_batches_hold_at_most_the_asked_rows_and_every_row_in_order(parts):
    batches = list(iter_batches(parts, 2))
    assert max(b.num_rows for b in batches) == 2
    ids = [s for b in batches for s in b.column("session_id").to_pylist()]
    assert ids == [f"s{i}" for i in range(10)]


def test_csv_batches_hold_at_most_the_asked_rows_and_every_row_in_order(tmp_path):
    sessions(0, 7).to_csv(tmp_path / "in.csv", index=False)
    batches = list(iter_batches(tmp_path / "in.csv", 3))
    assert [b.num_rows for b in batches] == [3, 3, 1]
    ids = [s for b in batches for s in b.column("session_id").to_pylist()]
    assert ids == [f"s{i}" for i in range(7)]


def test_batches_refuse_parts_that_differ(parts):
    sessions(10, 1).rename(columns={"dwell_time_s": "dwell"}).to_parquet(
        parts / "part-00003.parquet"
    )
    with pytest.raises(PartMismatch, match="part-00003.parquet"):
        next(iter_batches(parts, 100))


def test_rows_are_counted_in_parquet_parts_and_csv_files(parts, tmp_path):
    assert count_rows(parts) == 10
    sessions(0, 7).to_csv(tmp_path / "in.csv", index=False)
    assert count_rows(tmp_path / "in.csv") == 7


@pytest.fixture
def csv_filled_after_its_first_read_block(tmp_path):
    """A CSV export of 700,001 rows (about 5 MB) whose `latitude` column is empty until its last
    row: what an optional column looks like when early sessions lack it."""
    lines = ["session_id,latitude", *(f"s{i}," for i in range(700_000)), "s700000,51.5"]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 4 << 20  # larger than one streaming read block
    return path


def test_a_large_csv_whose_column_fills_in_after_the_first_block_is_read_whole(
    csv_filled_after_its_first_read_block,
):
    path = csv_filled_after_its_first_read_block
    assert count_rows(path) == 700_001
    last = list(iter_batches(path, 250_000))[-1]
    assert last.column("latitude").to_pylist()[-1] == 51.5


# -- fingerprints --------------------------------------------------------------------------------


def test_the_fingerprint_is_the_same_whatever_the_batch_sizes(parts):
    whole = input_fingerprint(parts, batch_rows=1000)
    assert input_fingerprint(parts, batch_rows=1) == whole
    assert input_fingerprint(parts, batch_rows=3) == whole
    assert whole.startswith("10:")


def test_a_file_and_the_same_rows_in_parts_have_the_same_fingerprint(parts, tmp_path):
    sessions(0, 10).to_parquet(tmp_path / "one.parquet", index=False)
    assert input_fingerprint(tmp_path / "one.parquet") == input_fingerprint(parts)


def test_the_fingerprint_changes_with_row_order_values_and_column_names():
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})

    def digest(t: pa.Table) -> str:
        fp = InputFingerprint()
        for batch in t.to_batches():
            fp.add(batch)
        return fp.hexdigest()

    base = digest(table)
    assert digest(table.take([2, 1, 0])) != base
    assert digest(pa.table({"a": [1, 2, 4], "b": ["x", "y", "z"]})) != base
    assert digest(table.rename_columns(["a", "c"])) != base
    assert digest(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})) == base


def test_an_empty_fingerprint_counts_no_rows():
    assert InputFingerprint().hexdigest().startswith("0:")


# -- CSV types -----------------------------------------------------------------------------------


def test_csv_types_are_found_across_files(tmp_path):
    """A column of whole numbers in one file and decimals in the next is a float column, as
    pandas reads the two files together; one of text in either is text."""
    pd.DataFrame({"n": [1, 2], "code": [10, 20]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"n": [2.5, 3.0], "code": ["x1", "30"]}).to_csv(tmp_path / "b.csv", index=False)
    files = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert csv_dtypes(files) == {"n": "float64", "code": "str"}


def test_booleans_mixed_with_numbers_are_kept_as_objects(tmp_path):
    pd.DataFrame({"flag": ["True", "False", "1"]}).to_csv(tmp_path / "a.csv", index=False)
    assert csv_dtypes([str(tmp_path / "a.csv")], chunk_rows=2) == {"flag": "object"}


# -- store tables --------------------------------------------------------------------------------


def test_no_store_path_means_no_stores():
    assert load_stores(None) is None
    assert load_stores("") is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_stores_are_read_as_latitude_longitude_pairs(tmp_path, suffix):
    table = pd.DataFrame(
        {"store_id": ["hq", "north"], "latitude": [51.5, 53], "longitude": [-0.1, -2]}
    )
    path = tmp_path / f"stores{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    assert load_stores(str(path)) == [[51.5, -0.1], [53.0, -2.0]]


def test_a_missing_store_table_names_the_path_and_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stores.csv: store table not found \(data.stores"):
        load_stores(str(tmp_path / "stores.csv"))


def test_a_store_table_without_longitude_names_the_column(tmp_path):
    pd.DataFrame({"latitude": [51.5], "lon": [-0.1]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(KeyError, match="store table needs a 'longitude' column"):
        load_stores(str(tmp_path / "s.csv"))


# -- read_columns --------------------------------------------------------------------------------


def test_columns_are_read_from_every_part_in_row_order(parts):
    frame = read_columns(parts, ["journey_id", "session_id"])
    assert frame["session_id"].tolist() == [f"s{i}" for i in range(10)]
    assert frame["journey_id"].tolist() == [f"j{i // 2}" for i in range(10)]


def test_a_column_missing_from_one_part_is_null_in_its_rows(tmp_path):
    sessions(0, 2).to_parquet(tmp_path / "p0.parquet", index=False)
    sessions(2, 2).drop(columns=["journey_id"]).to_parquet(tmp_path / "p1.parquet", index=False)
    frame = read_columns(tmp_path, ["session_id", "journey_id"])
    assert frame["session_id"].tolist() == ["s0", "s1", "s2", "s3"]
    assert frame["journey_id"].tolist()[:2] == ["j0", "j0"]
    assert frame["journey_id"].isna().tolist() == [False, False, True, True]


def test_csv_columns_are_read_alone_and_a_missing_one_is_null(tmp_path):
    sessions(0, 3).to_csv(tmp_path / "in.csv", index=False)
    frame = read_columns(tmp_path / "in.csv", ["session_id", "label"])
    assert list(frame.columns) == ["session_id", "label"]
    assert frame["session_id"].tolist() == ["s0", "s1", "s2"]
    assert frame["label"].isna().all()


def test_parquet_parts_with_other_columns_or_types_are_named(tmp_path):
    from pipelines.io.readers import PartMismatch, read_sessions

    folder = tmp_path / "sessions"
    folder.mkdir()
    pd.DataFrame({"session_id": ["a"], "dwell_time_s": [1.5]}).to_parquet(folder / "part-0.parquet")
    pd.DataFrame({"session_id": ["b"], "dwell_time_s": ["long"]}).to_parquet(
        folder / "part-1.parquet"
    )
    with pytest.raises(
        PartMismatch,
        match=r"part-1.parquet: column 'dwell_time_s' is (large_)?string here but double",
    ):
        read_sessions(folder)
    pd.DataFrame({"session_id": ["b"], "Dwell": [2.0]}).to_parquet(folder / "part-1.parquet")
    with pytest.raises(PartMismatch, match="column 'dwell_time_s' is missing from this part"):
        read_sessions(folder)
    # integer and float widths, and all-null columns, read across parts as they always did
    pd.DataFrame({"session_id": ["b"], "dwell_time_s": [None]}).to_parquet(
        folder / "part-1.parquet"
    )
    assert len(read_sessions(folder)) == 2


def test_an_empty_csv_names_the_file(tmp_path):
    from pipelines.io.readers import EmptyInput, count_rows, read_sessions

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(EmptyInput, match="empty.csv"):
        read_sessions(tmp_path / "empty.csv")
    with pytest.raises(EmptyInput, match="empty.csv"):
        count_rows(tmp_path / "empty.csv")
    assert runner.exit_code_for(EmptyInput("x"))[0] == runner.EXIT_BAD_DATA


def test_csv_column_types_are_those_of_the_whole_file(tmp_path):
    """Types are found over every chunk, as pandas reading the whole file finds them, not from
    the first block as Dask would: a later chunk with a missing value or text changes them."""
    n = 30
    frame = pd.DataFrame(
        {
            "counts": np.arange(n),
            "counts_later_missing": [*range(n - 1), None],
            "codes_later_text": [*map(str, range(n - 1)), "unknown"],
            "flags": [True, False] * (n // 2),
            "flags_later_missing": [*([True, False] * (n // 2 - 1)), True, None],
            "empty": [None] * n,
            "ratio": np.linspace(0, 1, n),
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    dtypes = csv_dtypes([str(tmp_path / "t.csv")], chunk_rows=10)
    assert dtypes == {
        "counts": "int64",
        "counts_later_missing": "float64",
        "codes_later_text": "str",
        "flags": "bool",
        "flags_later_missing": "object",
        "empty": "float64",
        "ratio": "float64",
    }
    whole = pd.read_csv(tmp_path / "t.csv")
    for col, dtype in dtypes.items():
        assert whole[col].dtype == pd.Series([], dtype=dtype).dtype, col


def test_an_empty_csv_field_is_missing_as_pandas_reads_it(tmp_path):
    """A session without a journey id is its own journey in training (pandas reads the empty
    field as missing): scoring must read it the same way, not as a journey named ''."""
    path = tmp_path / "in.csv"
    path.write_text("session_id,journey_id,channel\na,j1,email\nb,,\nc,,social\n")
    streamed = pa.Table.from_batches(list(iter_batches(path, 10))).to_pandas()
    whole = read_sessions(path)
    assert streamed["journey_id"].isna().tolist() == whole["journey_id"].isna().tolist()
    assert streamed["journey_id"].isna().tolist() == [False, True, True]
    assert streamed["channel"].isna().tolist() == [False, True, False]
    columns = read_columns(path, ["session_id", "journey_id", "device"])
    assert columns["journey_id"].isna().tolist() == [False, True, True]
    assert columns["device"].isna().all()  # a column the file lacks comes back missing
