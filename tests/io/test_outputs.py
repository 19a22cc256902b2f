"""Writing outputs: atomic files and folders, parquet written a table at a time, and the marks
that say which command owns an output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io.outputs import (
    OUTPUT_MARK,
    OutputRefused,
    ParquetAppender,
    atomic_path,
    claim_output,
    concat_parts,
    exclusive_lock,
    mark_output,
    owner_of,
    part_name,
    write_rejects,
    write_stores,
)


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- atomic_path ---------------------------------------------------------------------------------


def test_a_file_written_in_the_block_replaces_the_target(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent != tmp_path and tmp.name == "summary.json"
        tmp.write_text("new")
        assert target.read_text() == "old", "the target changes only when the block ends"
    assert target.read_text() == "new"
    assert hidden(tmp_path) == []


def test_a_failure_inside_the_block_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert hidden(tmp_path) == []


def test_a_failure_inside_the_block_leaves_a_target_folder_as_it_was(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "predictions.parquet").write_text("old")
    with pytest.raises(KeyError), atomic_path(target, owner="score") as tmp:
        tmp.mkdir()
        (tmp / "predictions.parquet").write_text("half")
        raise KeyError("device")
    assert [p.name for p in target.iterdir()] == ["predictions.parquet"]
    assert (target / "predictions.parquet").read_text() == "old"
    assert hidden(tmp_path) == []


def test_a_failure_inside_the_block_leaves_no_new_target(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "deep" / "out.parquet") as tmp:
        tmp.write_text("half")
        raise ValueError
    assert not (tmp_path / "deep" / "out.parquet").exists()
    assert hidden(tmp_path / "deep") == []


def test_a_folder_written_for_a_command_replaces_the_old_one_and_carries_its_mark(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "stale.parquet").write_text("old")
    with atomic_path(target, owner="score") as tmp:
        tmp.mkdir()
        (tmp / "summary.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARK, "summary.json"]
    assert owner_of(target) == "score"


def test_a_block_that_writes_nothing_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="wrote nothing"), atomic_path(target):
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_output_moved_aside_by_a_run_killed_mid_rename_is_put_back(tmp_path):
    """A run killed between moving the old output aside and renaming its own onto the target
    leaves `.<name>.old-<pid>`: the next run puts it back before it starts."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    target = tmp_path / "scores"
    moved = tmp_path / f".scores.old-{dead.stdout.strip()}"
    moved.mkdir()
    (moved / "summary.json").write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target):
        pass  # a run that fails to write: the previous output must still be there
    assert (target / "summary.json").read_text() == "previous"
    assert not moved.exists()


def test_temporaries_of_dead_runs_are_removed_and_of_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    killed = tmp_path / f".scores.{dead_pid}.abc123.tmp"
    running = tmp_path / f".scores.{os.getpid()}.def456.tmp"
    for folder in (killed, running):
        (folder / "scores").mkdir(parents=True)
    with atomic_path(tmp_path / "scores") as tmp:
        tmp.mkdir()
    assert not killed.exists()
    assert running.exists()


# -- parquet written a table at a time -----------------------------------------------------------


def test_appended_tables_make_one_file_in_order_cast_to_the_first_schema(tmp_path):
    path = tmp_path / "out.parquet"
    with ParquetAppender(path) as out:
        out.write(pd.DataFrame({"id": ["a", "b"], "p": [0.5, 0.25]}))
        out.write(pa.table({"id": ["c"], "p": pa.array([1], pa.int64())}))
        assert out.opened and out.rows == 3
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.schema.field("p").type == pa.float64()
    assert table.column("p").to_pylist() == [0.5, 0.25, 1.0]


def test_an_appender_given_no_table_writes_no_file(tmp_path):
    with ParquetAppender(tmp_path / "out.parquet") as out:
        pass
    assert not out.opened and out.rows == 0
    assert not (tmp_path / "out.parquet").exists()


def test_an_appended_frame_loses_its_index(tmp_path):
    with ParquetAppender(tmp_path / "out.parquet") as out:
        out.write(pd.DataFrame({"id": ["a", "b"]}, index=[7, 9]))
    assert pq.read_schema(tmp_path / "out.parquet").names == ["id"]


def test_parts_are_concatenated_in_the_order_given(tmp_path):
    names = []
    for i, ids in enumerate([["a", "b"], ["c"], ["d", "e"]]):
        names.append(tmp_path / part_name(i))
        pd.DataFrame({"id": ids}).to_parquet(names[-1], index=False)
    assert concat_parts([names[2], names[0], names[1]], tmp_path / "all.parquet")
    assert pd.read_parquet(tmp_path / "all.parquet")["id"].tolist() == ["d", "e", "a", "b", "c"]


def test_no_parts_concatenate_to_no_file(tmp_path):
    assert concat_parts([], tmp_path / "all.parquet") is False
    assert not (tmp_path / "all.parquet").exists()


def test_part_names_sort_in_chunk_order():
    assert part_name(7) == "part-00007.parquet"
    names = [part_name(i) for i in (10, 2, 9, 100, 0)]
    assert sorted(names) == [part_name(i) for i in (0, 2, 9, 10, 100)]


# -- stores and rejects --------------------------------------------------------------------------


def test_stores_are_written_as_a_csv_in_the_output_folder(tmp_path):
    stores = pd.DataFrame({"store_id": ["hq"], "latitude": [51.5], "longitude": [-0.14]})
    write_stores(stores, tmp_path / "data")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "data" / "stores.csv"), stores)
    assert hidden(tmp_path / "data") == []


def test_rejected_rows_of_mixed_types_are_written_as_text_with_missing_values_kept(tmp_path):
    rejects = pd.DataFrame(
        {
            "dwell": pd.Series([1, "long", None, float("nan")], dtype=object),
            "page_views": [1.0, 2.0, 3.0, 4.0],
            "reject_reason": ["a", "b", "c", "d"],
        }
    )
    target = write_rejects(rejects, tmp_path / "rejects.parquet")
    back = pd.read_parquet(target)
    assert back["dwell"].tolist()[:2] == ["1", "long"]
    assert back["dwell"].isna().tolist() == [False, False, True, True]
    assert back["page_views"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert rejects["dwell"].tolist()[:2] == [1, "long"], "the caller's frame is left alone"


# -- who owns an output --------------------------------------------------------------------------


def test_a_marked_folder_is_owned_by_the_command_in_its_mark(tmp_path):
    mark_output(tmp_path, "touchpoints")
    assert json.loads((tmp_path / OUTPUT_MARK).read_text()) == {"command": "touchpoints"}
    assert owner_of(tmp_path) == "touchpoints"


def test_a_folder_written_before_marks_is_owned_by_what_it_holds(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "predictions").mkdir()
    assert owner_of(tmp_path) == "score"
    (tmp_path / "predictions").rmdir()
    assert owner_of(tmp_path) is None


def test_a_folder_with_an_unreadable_mark_is_no_commands(tmp_path):
    (tmp_path / OUTPUT_MARK).write_text("{not json")
    assert owner_of(tmp_path) is None


@pytest.mark.parametrize(
    ("name", "text", "owner"),
    [
        ("summary.json", json.dumps({"written_by": "touchpoints"}), "touchpoints"),
        ("retrain.json", json.dumps({"exit_code": 0}), "retrain"),
        ("data.json", json.dumps({"rows": 3}), None),
        ("list.json", json.dumps([1, 2]), None),
        ("retrain.lock", "pid 123 on host", "retrain"),
        ("retrain.lock", "", "retrain"),
        ("mine.lock", "held by a person", None),
        ("notes.txt", "pid 1", None),
    ],
)
def test_the_owner_of_a_file_is_read_from_what_it_holds(tmp_path, name, text, owner):
    (tmp_path / name).write_text(text)
    assert owner_of(tmp_path / name) == owner


def test_a_path_that_does_not_exist_yet_may_be_claimed(tmp_path):
    assert claim_output(tmp_path / "new", "score") == tmp_path / "new"


def test_a_file_of_another_command_is_refused_and_of_the_same_command_claimed(tmp_path):
    summary = tmp_path / "retrain.json"
    summary.write_text(json.dumps({"exit_code": 3}))
    assert claim_output(summary, "retrain") == summary
    with pytest.raises(OutputRefused, match="an existing file written by `micromoment retrain`"):
        claim_output(summary, "score")
    assert json.loads(summary.read_text()) == {"exit_code": 3}


def test_inputs_given_as_uris_or_not_given_are_not_compared(tmp_path):
    out = tmp_path / "scores"
    assert claim_output(out, "score", inputs=(None, "s3://bucket/scores")) == out


def test_the_output_may_not_be_the_input_or_inside_it_or_hold_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_text("a\n1\n")
    with pytest.raises(OutputRefused, match="the output is the input"):
        claim_output(data / "x.csv", "score", inputs=(data / "x.csv",))
    with pytest.raises(OutputRefused, match="inside the input"):
        claim_output(data / "out", "score", inputs=(data,))
    with pytest.raises(OutputRefused, match="holds the input"):
        claim_output(tmp_path, "score", inputs=(data / "x.csv",))


def test_an_existing_folder_of_other_files_is_refused(tmp_path):
    other = tmp_path / "reports"
    other.mkdir()
    (other / "q3.xlsx").write_text("precious")
    with pytest.raises(OutputRefused, match="not written by micromoment"):
        claim_output(other, "score")
    assert (other / "q3.xlsx").read_text() == "precious"


def test_a_previous_output_of_the_same_command_is_replaced_and_of_another_refused(tmp_path):
    target = tmp_path / "scores"
    with atomic_path(target, owner="score") as work:
        work.mkdir()
        (work / "summary.json").write_text("{}")
    assert (target / OUTPUT_MARK).is_file()
    assert claim_output(target, "score") == target
    with pytest.raises(OutputRefused, match="written by `micromoment score`"):
        claim_output(target, "touchpoints")


def test_an_empty_folder_may_be_used(tmp_path):
    (tmp_path / "empty").mkdir()
    assert claim_output(tmp_path / "empty", "score") == tmp_path / "empty"


def test_a_lock_left_by_a_killed_job_does_not_block_the_next(tmp_path):
    lock = tmp_path / "retrain.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pipelines.io.outputs import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert "pid" in lock.read_text()  # the dead job's note is still there ...
    with exclusive_lock(lock):  # ... but the lock went with its process
        assert f"pid {os.getpid()}" in lock.read_text()


def test_an_output_inside_an_earlier_output_of_the_same_command_is_refused(tmp_path):
    """`generate` into the `sessions/` folder of an earlier `generate` would nest a second
    dataset inside the first, which readers of the folder would then read twice."""
    earlier = tmp_path / "synthetic"
    with atomic_path(earlier, owner="generate") as tmp:
        (tmp / "sessions").mkdir(parents=True)
        (tmp / "sessions" / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(OutputRefused, match="lies inside .*synthetic, an output of"):
        claim_output(earlier / "sessions", "generate")
    assert claim_output(tmp_path / "beside", "generate") == tmp_path / "beside"
