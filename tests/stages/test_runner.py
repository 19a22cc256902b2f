"""How every command starts and ends: one-line user errors, exit codes, no secret in any record."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.secrets import has_secret, redact
from pipelines.io.outputs import OUTPUT_MARK, OutputRefused, atomic_path, claim_output
from pipelines.stages import runner
from tests.fixtures import run_cli


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    return run_cli(list(args), cwd, env, timeout)


def every_file_text(root: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size < 5e6
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("micromoment ")]


# ---------------------------------------------------------------------------------------------
# secrets


@pytest.mark.parametrize(
    "uri",
    [
        "http://user:pa55word@mlflow.internal:5000",
        "postgresql://mlflow:pa55word@db:5432/mlflow",
        "https://token:pa55word@host/path?x=1",
    ],
)
def test_a_password_inside_a_uri_is_found_and_hidden(uri):
    assert has_secret(uri)
    assert "pa55word" not in redact(uri) and "***@" in redact(uri)


@pytest.mark.parametrize(
    "uri", ["http://mlflow.internal:5000", "sqlite:////tmp/mlflow.db", "file:///x"]
)
def test_a_uri_without_a_password_is_left_alone(uri):
    assert not has_secret(uri) and redact(uri) == uri


@pytest.mark.slow
def test_a_password_in_tracking_uri_is_refused_before_hydra_records_it(tmp_path):
    proc = cli("train", "tracking.uri=http://alice:pa55word@127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == runner.EXIT_USAGE
    assert "MLFLOW_TRACKING_PASSWORD" in proc.stderr
    assert "pa55word" not in proc.stderr + proc.stdout
    assert "pa55word" not in every_file_text(tmp_path)
    assert len(error_lines(proc.stderr)) == 1


@pytest.mark.slow
def test_a_password_in_mlflow_tracking_uri_is_refused(tmp_path):
    proc = cli(
        "promote",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": "http://alice:pa55word@127.0.0.1:9"},
    )
    assert proc.returncode == runner.EXIT_USAGE
    assert "MLFLOW_TRACKING_URI holds a password" in proc.stderr
    assert "pa55word" not in proc.stderr + proc.stdout + every_file_text(tmp_path)


@pytest.mark.slow
def test_a_password_in_a_config_file_is_refused_and_scrubbed_from_hydra_output(tmp_path):
    conf = tmp_path / "myconf" / "tracking"
    conf.mkdir(parents=True)
    (conf / "team.yaml").write_text(
        "defaults:\n  - schema\n  - _self_\nuri: http://alice:pa55word@127.0.0.1:9\n"
    )
    proc = cli("promote", "--config-dir", str(tmp_path / "myconf"), "tracking=team", cwd=tmp_path)
    assert proc.returncode == runner.EXIT_USAGE
    assert "tracking.uri holds a password" in proc.stderr
    outputs = tmp_path / "outputs"
    assert outputs.exists() and "pa55word" not in every_file_text(outputs)
    assert "pa55word" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------------------------
# one-line user errors and exit codes


@pytest.mark.slow
def test_an_unset_required_value_is_one_line_naming_it(tmp_path):
    proc = cli("score", cwd=tmp_path)
    assert proc.returncode == runner.EXIT_USAGE
    assert error_lines(proc.stderr) == [
        "micromoment score: error: score.input is not set: give it on the command line, "
        "e.g. score.input=..."
    ]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("gate.metric=f2", "gate.metric"),
        ("split=journy", "split"),
        ("split.by=random", "split.by"),
        ("engine.name=spark", "engine.name"),
        ("runtime.log_level=LOUD", "runtime.log_level"),
        ("runtime.threads=two", "runtime.threads"),
    ],
)
def test_a_bad_config_value_is_refused_at_compose_time_with_exit_2(tmp_path, override, named):
    proc = cli("promote", override, cwd=tmp_path)
    assert proc.returncode == runner.EXIT_USAGE
    assert named.split(".")[-1] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing ran


@pytest.mark.slow
def test_a_missing_input_file_is_one_line_with_exit_3(tmp_path):
    proc = cli("score", "score.input=nowhere.parquet", "score.model_uri=models/none", cwd=tmp_path)
    assert proc.returncode in (runner.EXIT_BAD_DATA, runner.EXIT_MODEL)
    assert len(error_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_scoring_with_a_model_folder_needs_no_tracking_server(tmp_path):
    proc = cli(
        "score",
        "score.input=nowhere.parquet",
        "score.model_uri=models/micro_moment_intent-v9",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )
    # refused for the missing model folder, not for the unreachable server
    assert proc.returncode == runner.EXIT_BAD_DATA
    assert "no such model folder" in proc.stderr and "cannot be reached" not in proc.stderr


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_exit_4_before_any_work(tmp_path):
    proc = cli("train", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == runner.EXIT_TRACKING
    assert "tracking server http://127.0.0.1:9 cannot be reached" in proc.stderr
    assert len(error_lines(proc.stderr)) == 1


def test_exit_codes_for_common_failures():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from pipelines.core.contract import ContractError

    assert runner.exit_code_for(ContractError("x.csv: column 'a' ..."))[0] == runner.EXIT_BAD_DATA
    assert runner.exit_code_for(FileNotFoundError("x.csv: no such file"))[0] == runner.EXIT_BAD_DATA
    assert runner.exit_code_for(pd.errors.EmptyDataError("No columns"))[0] == runner.EXIT_BAD_DATA
    assert runner.exit_code_for(OutputRefused("out: exists"))[0] == runner.EXIT_USAGE
    missing = MlflowException("alias champion not found", error_code=RESOURCE_DOES_NOT_EXIST)
    assert runner.exit_code_for(missing)[0] == runner.EXIT_MODEL
    outage = MlflowException(
        "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded"
    )
    assert runner.exit_code_for(outage)[0] == runner.EXIT_TRACKING
    assert runner.exit_code_for(ZeroDivisionError("bug"))[0] == runner.EXIT_BUG


# ---------------------------------------------------------------------------------------------
# outputs never replace what the run did not create


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


@pytest.mark.slow
def test_scoring_onto_its_own_input_is_refused_and_the_input_kept(tmp_path):
    (tmp_path / "x.csv").write_text("session_id,device\na,mobile\n")
    proc = cli(
        "score", "score.input=x.csv", "score.output=x.csv", "score.model_uri=models/m", cwd=tmp_path
    )
    assert proc.returncode == runner.EXIT_USAGE
    assert "the output is the input" in proc.stderr
    assert (tmp_path / "x.csv").read_text() == "session_id,device\na,mobile\n"


@pytest.mark.slow
def test_scoring_into_a_folder_of_other_files_is_refused_and_they_are_kept(tmp_path):
    (tmp_path / "x.csv").write_text("session_id,device\na,mobile\n")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    proc = cli(
        "score", "score.input=x.csv", "score.output=keep", "score.model_uri=models/m", cwd=tmp_path
    )
    assert proc.returncode == runner.EXIT_USAGE
    assert "not written by micromoment" in proc.stderr
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


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


def test_promoting_an_alias_that_does_not_exist_is_exit_5(tmp_path):
    from omegaconf import OmegaConf

    from pipelines.stages.promote import run_promote
    from tests.conftest import compose_config

    cfg = compose_config(
        "promote",
        [
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "promote.challenger=nosuch",
            f"data.path={tmp_path}/unused",
        ],
    )
    with pytest.raises(runner.UserError, match="has no version with alias 'nosuch'") as err:
        run_promote(OmegaConf.create(cfg))
    assert err.value.code == runner.EXIT_MODEL


def test_generate_refuses_a_folder_of_other_files_and_replaces_its_own(tmp_path):
    from omegaconf import OmegaConf

    from pipelines.stages.generate import run_generate
    from tests.conftest import compose_config

    def generate_into(folder):
        cfg = compose_config(
            "generate",
            [f"generate.out_dir={folder}", "generate.n_journeys=20", "runtime.threads=1"],
        )
        return run_generate(OmegaConf.create(cfg))

    theirs = tmp_path / "theirs"
    (theirs / "sessions").mkdir(parents=True)
    pd.DataFrame({"session_id": ["mine"]}).to_parquet(theirs / "sessions" / "part-00000.parquet")
    (theirs / "stores.csv").write_text("store_id,region,latitude,longitude\nhq,x,1,2\n")
    with pytest.raises(OutputRefused, match="not written by micromoment"):
        generate_into(theirs)
    assert pd.read_parquet(theirs / "sessions")["session_id"].tolist() == ["mine"]
    assert "hq" in (theirs / "stores.csv").read_text()

    ours = tmp_path / "ours"
    first = generate_into(ours)
    again = generate_into(ours)  # its own earlier output: replaced
    assert first["sessions"] == again["sessions"] > 0
    assert (ours / OUTPUT_MARK).is_file()
