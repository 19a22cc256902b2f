"""The `micromoment` command: usage, unknown commands, and secrets refused before Hydra runs."""

from __future__ import annotations

import pytest

from pipelines.cli import COMMANDS, main, usage


def test_usage_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-h", "--help", "help"])
def test_help_prints_the_usage_and_exits_0(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == usage().strip()


def test_every_command_has_an_entry_point_and_a_one_line_description():
    for name, (entry, text) in COMMANDS.items():
        module, func = entry.split(":")
        assert module == f"pipelines.stages.{name}" and func == "main"
        assert text and "\n" not in text


def test_a_password_on_the_command_line_is_one_line_with_exit_2_naming_the_key(capsys):
    code = main(["train", "tracking.uri=http://alice:pa55word@127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("micromoment train: error: tracking.uri holds a password")
    assert "pa55word" not in err and "MLFLOW_TRACKING_PASSWORD" in err
    assert len(err.strip().splitlines()) == 1


def test_a_password_in_mlflow_tracking_uri_is_refused_before_the_command_runs(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa55word@127.0.0.1:9")
    assert main(["promote"]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI holds a password" in err and "pa55word" not in err
