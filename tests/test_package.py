"""The built wheel alone, in a fresh virtualenv with no checkout: its CLI runs on the packaged
configs, and a user's own configs join them with `--config-dir`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines.config import CONF_DIR

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


# run outputs and environments at the top of a checkout (conf/data/ is a config group: kept)
_SKIP_AT_TOP = {
    ".venv",
    ".git",
    "build",
    "dist",
    "outputs",
    "multirun",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "data",
    "scores",
    "touchpoints",
    "optuna",
    "models",
}


def _outputs_and_environments(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= _SKIP_AT_TOP & set(names)
    return skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv holding the wheel built from this checkout and its pinned dependencies."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"  # a copy: building leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=_outputs_and_environments)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(root)],
        root,
    )
    wheel = next(root.glob("micromoment-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n.removeprefix("pipelines/conf/") for n in names if n.startswith("pipelines/conf/")}
    expected = {str(p.relative_to(CONF_DIR)) for p in Path(CONF_DIR).rglob("*.yaml")}
    assert packaged == expected
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        root,
    )
    return venv


def test_the_installed_cli_runs_the_whole_chain_on_its_packaged_configs(installed, tmp_path):
    work = tmp_path / "work"  # no checkout anywhere near
    work.mkdir()
    proc = _run(
        [
            str(installed / "bin" / "micromoment"),
            "run",
            "generate.n_journeys=300",
            "runtime.threads=1",
            "model.num_boost_round=40",
            "baselines=false",
        ],
        work,
    )
    assert "registered:     micro_moment_intent version 1" in proc.stdout
    assert "touchpoint feed:" in proc.stdout
    assert (work / "mlflow.db").is_file() and (
        work / "touchpoints" / "latest" / "feed.parquet"
    ).is_file()
    # the configs came from the installed package, not from this checkout
    where = _run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import pipelines.config as c; print(c.CONF_DIR)",
        ],
        work,
    ).stdout.strip()
    assert where.startswith(str(installed)) and where.endswith("pipelines/conf")


def test_a_users_own_dataset_config_joins_with_config_dir(installed, tmp_path):
    mine = tmp_path / "myconf" / "data"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "defaults:\n  - synthetic\n  - _self_\nname: mine\npath: /data/mine.parquet\n"
    )
    proc = _run(
        [
            str(installed / "bin" / "micromoment"),
            "train",
            "--config-dir",
            str(tmp_path / "myconf"),
            "data=mine",
            "--cfg",
            "job",
        ],
        tmp_path,
    )
    assert "name: mine" in proc.stdout and "path: /data/mine.parquet" in proc.stdout
