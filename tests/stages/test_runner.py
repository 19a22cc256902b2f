"""How every command starts and ends: one-line user errors, exit codes, no secret in any record."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.io.outputs import OutputRefused
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
