"""Each command's run folders (`outputs/<command>/...`, `multirun/<command>/...`) and its own
`--help` page."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.cli import COMMANDS, usage
from pipelines.config import CONF_DIR
from pipelines.config.schema import register_configs
from tests.fixtures import run_cli

DATE = r"\d{4}-\d{2}-\d{2}"
TIME = r"\d{2}-\d{2}-\d{2}-\d{6}"  # to the microsecond
GENERATE = ["generate", "generate.n_journeys=20", "runtime.threads=1"]


def run_all(commands: list[list[str]], cwd: Path) -> list:
    """`micromoment <args>` for each of `commands`, all started at once."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(args, cwd=cwd), commands))


def hydra_settings(command: str):
    """The `hydra` node of a command's composed config, as the command sees it."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(command, return_hydra_config=True).hydra


def run_folders(root: Path) -> list[Path]:
    """The `<date>/<time>` folders below `root`."""
    return sorted(p for p in root.glob("*/*") if p.is_dir())


# ---------------------------------------------------------------------------------------------
# run folders


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_writes_to_a_folder_of_its_own(command):
    hydra = hydra_settings(command)
    assert re.fullmatch(f"outputs/{command}/{DATE}/{TIME}", hydra.run.dir)
    assert re.fullmatch(f"multirun/{command}/{DATE}/{TIME}", hydra.sweep.dir)
    assert OmegaConf.to_container(hydra.sweep)["subdir"] == "${hydra.job.num}"
    assert hydra.job.chdir is False  # paths stay relative to where the command is started


def test_two_runs_of_a_command_get_two_folders():
    first, second = hydra_settings("train").run.dir, hydra_settings("train").run.dir
    assert first != second


@pytest.mark.slow  # starts micromoment processes
def test_runs_started_together_write_their_own_folders_under_outputs_generate(tmp_path):
    procs = run_all(
        [[*GENERATE, "generate.out_dir=data/a"], [*GENERATE, "generate.out_dir=data/b"]], tmp_path
    )
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-2000:] for p in procs]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["generate"]
    folders = run_folders(tmp_path / "outputs" / "generate")
    assert len(folders) == 2
    for folder in folders:
        assert re.fullmatch(f"{DATE}/{TIME}", f"{folder.parent.name}/{folder.name}")
        assert (folder / ".hydra" / "config.yaml").is_file()
        assert (folder / "generate.log").is_file()
    # the data went where it was asked, relative to the folder the command started from
    assert (tmp_path / "data" / "a" / "stores.csv").is_file()
    assert (tmp_path / "data" / "b" / "stores.csv").is_file()
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow  # starts micromoment processes
def test_a_sweep_writes_a_numbered_folder_per_job_under_multirun_generate(tmp_path):
    proc = run_cli(
        ["generate", "-m", *GENERATE[1:], "generate.out_dir=data/x,data/y"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sweep,) = run_folders(tmp_path / "multirun" / "generate")
    assert re.fullmatch(f"{DATE}/{TIME}", f"{sweep.parent.name}/{sweep.name}")
    assert (sweep / "multirun.yaml").is_file()
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()
        assert (sweep / job / "generate.log").is_file()
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------------------------------------
# help pages


@pytest.fixture(scope="module")
def help_pages(tmp_path_factory) -> dict:
    """`micromoment <command> --help` for every command, and `--hydra-help`, each a process."""
    cwd = tmp_path_factory.mktemp("help")
    asked = [[name, "--help"] for name in COMMANDS] + [["generate", "--hydra-help"]]
    return {" ".join(args): proc for args, proc in zip(asked, run_all(asked, cwd), strict=True)}


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_its_own_help_page(help_pages, command):
    proc = help_pages[f"{command} --help"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = proc.stdout
    # what it does, in the words of `micromoment --help`, then a paragraph
    assert page.startswith(f"micromoment {command}: {COMMANDS[command][1]}\n\n")
    assert "powered by Hydra" not in page  # not Hydra's generic page
    examples = page.split("== Examples ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert 3 <= len(examples) <= 5
    assert all(re.match(rf"\s+(\S+=\S+ )?micromoment {command}\b", e) for e in examples)
    assert f"outputs/{command}/<date>/<time>/" in page
    assert f"multirun/{command}/<date>/<time>/<job number>/" in page
    groups = page.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    assert re.search(r"^split: .*journey.*time", groups, re.MULTILINE)
    config = page.split("== Config ==", 1)[1]
    assert "\nruntime:\n  threads: " in config
    assert "micromoment --help lists every command" in page


@pytest.mark.slow  # starts micromoment processes
def test_help_says_where_this_invocation_writes(help_pages):
    assert "scores/latest/: predictions/" in help_pages["score --help"].stdout
    assert "data/synthetic/sessions/part-*.parquet" in help_pages["generate --help"].stdout


@pytest.mark.slow  # starts micromoment processes
def test_hydra_help_still_shows_hydras_own_options(help_pages):
    proc = help_pages["generate --hydra-help"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--hydra-help" in proc.stdout and "hydra/launcher" in proc.stdout


def test_the_usage_points_at_each_commands_help_page():
    assert "micromoment <command> --help" in usage()
