"""`micromoment generate`: the configured engine writes the sessions and the store table into a
folder generate owns."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.io.outputs import OUTPUT_MARK, OutputRefused
from pipelines.stages.generate import run_generate
from tests.conftest import compose_config
from tests.fixtures import run_cli


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


@pytest.mark.slow
def test_generate_engine_dask_from_the_config(tmp_path):
    """`micromoment generate engine=dask` composes, starts its own cluster and writes the data."""
    cfg = compose_config(
        "generate",
        [
            "engine=dask",
            f"generate.out_dir={tmp_path}",
            "generate.n_journeys=300",
            "generate.chunk_journeys=100",
        ],
    )
    summary = run_generate(OmegaConf.create(cfg))
    assert summary["parts"] == 3 and len(list((tmp_path / "sessions").glob("part-*"))) == 3
    assert len(pd.read_parquet(tmp_path / "sessions")) == summary["sessions"]


def test_generate_writes_a_part_per_chunk_and_says_what_it_wrote(tmp_path, capsys):
    cfg = compose_config(
        "generate",
        [
            f"generate.out_dir={tmp_path / 'data'}",
            "generate.n_journeys=30",
            "generate.chunk_journeys=10",
            "runtime.threads=1",
        ],
    )
    summary = run_generate(OmegaConf.create(cfg))
    assert summary["parts"] == 3 and summary["journeys"] == 30
    sessions = pd.read_parquet(tmp_path / "data" / "sessions")
    assert len(sessions) == summary["sessions"] and sessions["journey_id"].nunique() == 30
    assert (tmp_path / "data" / "stores.csv").is_file()
    assert (tmp_path / "data" / OUTPUT_MARK).is_file()
    assert capsys.readouterr().out.strip() == (
        f"wrote {summary['sessions']} sessions of 30 journeys to {tmp_path / 'data'}/sessions "
        "(3 parts)"
    )


def test_a_world_that_cannot_be_drawn_exits_2_naming_the_key_before_any_work(tmp_path):
    done = run_cli(
        ["generate", f"generate.out_dir={tmp_path / 'out'}", "generator.initial=[0.5,0.5,0.5,0.1]"],
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("micromoment generate: error: generator.initial")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_simple_world_is_a_preset_of_generate(tmp_path):
    cfg = compose_config(
        "generate",
        [f"generate.out_dir={tmp_path}", "generate.n_journeys=50", "generator=simple"],
    )
    summary = run_generate(OmegaConf.create(cfg))
    sessions = pd.read_parquet(tmp_path / "sessions")
    assert summary["journeys"] == 50 and len(sessions) == summary["sessions"]
    posterior = sessions[[f"bayes_p_{c}" for c in ("know", "go", "do", "buy")]].sum(axis=1)
    assert posterior.round(9).eq(1.0).all()
