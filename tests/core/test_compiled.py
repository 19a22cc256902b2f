"""Compiled trees: equal to LightGBM to 1e-9, cached per model and platform, safe when two
processes compile at once, and LightGBM whenever compiling fails or disagrees."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.core import compiled
from pipelines.core.contract import to_contract
from pipelines.core.modelling import booster_proba
from tests.fixtures import hand_built_model, hand_built_sessions


@pytest.fixture(scope="module")
def model():
    return hand_built_model()


@pytest.fixture(scope="module")
def matrix(model):
    """Feature rows of the hand-built sessions, with a missing dwell time and an unseen device."""
    raw = hand_built_sessions(40)
    raw.loc[3, "dwell"] = None
    raw.loc[5, "device"] = "smart_tv"
    kept = to_contract(raw, model.spec, with_label=False).sessions
    X = model.featurizer.transform_matrix(kept)
    assert np.isnan(X).any()
    return X


def test_compiled_trees_predict_what_lightgbm_predicts(model, matrix, tmp_path):
    trees = compiled.compile_trees(model.booster.model_to_string(), 4, tmp_path)
    exact = booster_proba(model.booster, matrix, 4, threads=1)
    for threads in (1, 2):
        assert np.abs(trees.predict(matrix, threads) - exact).max() <= compiled.TOLERANCE


def test_a_binary_model_compiles_to_both_class_probabilities(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 4))
    X[::7, 2] = np.nan
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 8, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=30)
    trees = compiled.compile_trees(booster.model_to_string(), 2, tmp_path)
    p = trees.predict(X, 1)
    assert p.shape == (500, 2)
    assert np.abs(p - booster_proba(booster, X, 2, threads=1)).max() <= compiled.TOLERANCE


def test_a_model_is_compiled_once_per_platform_and_loaded_from_the_cache(model, tmp_path):
    text = model.booster.model_to_string()
    first = compiled.compile_trees(text, 4, tmp_path)
    assert first.binary.name == f"{compiled.model_key(text)}-{compiled.platform_key()}.o"
    stamp = first.binary.stat().st_mtime_ns
    again = compiled.compile_trees(text, 4, tmp_path)
    assert again.binary == first.binary and again.binary.stat().st_mtime_ns == stamp
    # the booster text beside it is the model; nothing half-written is left behind
    assert (tmp_path / f"{compiled.model_key(text)}.txt").read_text() == text
    assert not list(tmp_path.glob(".*.tmp"))
    # another model gets its own binary
    other = hand_built_model(n_journeys=60).booster.model_to_string()
    assert compiled.compile_trees(other, 4, tmp_path).binary != first.binary


@pytest.mark.skipif(sys.platform == "win32", reason="the lock needs fcntl")
def test_two_processes_needing_one_model_at_once_compile_it_once_and_both_get_it(model, tmp_path):
    import fcntl

    text = model.booster.model_to_string()
    model_file = tmp_path / "booster.txt"
    model_file.write_text(text)
    cache = tmp_path / "cache"
    cache.mkdir()
    code = (
        "import sys; from pathlib import Path; from pipelines.core import compiled; "
        "t = compiled.compile_trees(Path(sys.argv[1]).read_text(), 4, Path(sys.argv[2])); "
        "print(t.binary, t.fresh)"
    )
    lock = cache / f"{compiled.model_key(text)}-{compiled.platform_key()}.o.lock"
    with open(lock, "a+b") as held:
        # both start while another process (this test) has the turn: they wait, in either order
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(model_file), str(cache)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).parents[2],
            )
            for _ in range(2)
        ]
        time.sleep(3)
        assert [p.poll() for p in procs] == [None, None], "did not wait for the lock"
        assert not list(cache.glob("*.o"))
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    (first, fresh_first), (second, fresh_second) = outs
    assert first == second and Path(first).exists()
    # one compiled it once the turn was free; the other then loaded it
    assert sorted([fresh_first, fresh_second]) == ["False", "True"]
    assert len(list(cache.glob("*.o"))) == 1 and not list(cache.glob(".*.tmp"))


def test_the_scorer_predicts_with_compiled_trees_and_says_so(model, matrix, tmp_path):
    scorer = hand_built_model()
    assert scorer.predictor == compiled.LIGHTGBM
    assert scorer.use_compiled_trees(tmp_path) == compiled.LLEAVES
    exact = booster_proba(model.booster, matrix, 4, threads=1)
    assert np.abs(scorer.predict_features(matrix) - exact).max() <= compiled.TOLERANCE
    raw = hand_built_sessions(10)
    P = [f"p_{c}" for c in scorer.classes]
    lightgbm_out = model.predict(raw)[P].to_numpy()
    assert np.abs(scorer.predict(raw)[P].to_numpy() - lightgbm_out).max() <= compiled.TOLERANCE
    scorer.use_lightgbm()
    assert scorer.predictor == compiled.LIGHTGBM


def test_a_cache_that_cannot_be_written_leaves_lightgbm_predicting(model, matrix, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    scorer = hand_built_model()
    assert scorer.use_compiled_trees(blocked) == compiled.LIGHTGBM
    assert (
        "compiling failed" in scorer.predictor_note and "LightGBM predicts" in scorer.predictor_note
    )
    np.testing.assert_array_equal(
        scorer.predict_features(matrix), booster_proba(model.booster, matrix, 4, threads=1)
    )


def test_compiled_trees_that_disagree_with_lightgbm_are_set_aside(model, matrix, tmp_path):
    scorer = hand_built_model()
    scorer.use_compiled_trees(tmp_path)

    class Wrong:
        def predict(self, X, threads):
            return np.full((len(X), 4), 0.25)

    scorer.compiled = Wrong()
    p = scorer.predict_features(matrix)
    assert scorer.predictor == compiled.LIGHTGBM and "differ from LightGBM" in scorer.predictor_note
    np.testing.assert_array_equal(p, booster_proba(model.booster, matrix, 4, threads=1))


def test_a_scorer_with_compiled_trees_pickles_without_them(model, tmp_path):
    import pickle

    scorer = hand_built_model()
    scorer.use_compiled_trees(tmp_path)
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy.predictor == compiled.LIGHTGBM
    raw = hand_built_sessions(5)
    pd.testing.assert_frame_equal(copy.predict(raw), model.predict(raw))


def test_the_default_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "here"))
    assert compiled.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(compiled.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiled.default_cache_dir() == tmp_path / "xdg" / "micromoment" / "compiled"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no checksum"])
def test_a_damaged_cached_binary_is_compiled_again_not_loaded(model, tmp_path, damage):
    """LLVM aborts the whole process on a damaged object file; a cached binary is loaded only
    when its checksum matches. Run in a child process, so a regression cannot take the tests
    down with it."""
    text = model.booster.model_to_string()
    first = compiled.compile_trees(text, 4, tmp_path)
    data = first.binary.read_bytes()
    checksum = first.binary.with_name(first.binary.name + ".sha256")
    if damage == "truncate":
        first.binary.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        first.binary.write_bytes(b"\0" * 100)
    else:
        checksum.unlink()
    (tmp_path / "booster.txt").write_text(text)
    code = (
        "import sys; from pathlib import Path; import numpy as np; "
        "from pipelines.core import compiled; "
        "t = compiled.compile_trees(Path(sys.argv[1]).read_text(), 4, Path(sys.argv[2])); "
        "print(t.predict(np.full((1, t.model.num_feature()), np.nan), 1).sum())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "booster.txt"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) == pytest.approx(1.0)
    assert first.binary.read_bytes() != b"\0" * 100 and checksum.exists()


def test_a_small_input_compiles_only_a_model_compiled_already(tmp_path):
    scorer = hand_built_model()
    text = scorer.booster.model_to_string()
    assert not compiled.is_cached(text, tmp_path)
    assert not scorer.worth_compiling(10, 1000, tmp_path)
    assert scorer.compile_if_worth_it(10, 1000, tmp_path) == compiled.LIGHTGBM
    assert "fewer than runtime.compile_min_rows=1000" in scorer.predictor_note
    assert not list(tmp_path.glob("*.o"))
    assert scorer.compile_if_worth_it(1000, 1000, tmp_path) == compiled.LLEAVES
    assert compiled.is_cached(text, tmp_path)
    again = hand_built_model()
    assert again.compile_if_worth_it(10, 1000, tmp_path) == compiled.LLEAVES


def test_a_loaded_pyfunc_uses_compiled_trees_only_when_compiled_here_already(tmp_path, monkeypatch):
    """Loading never waits for a first compile (minutes for a large model), nor leaves a
    compiler thread running at exit (LLVM then crashes the process)."""
    from types import SimpleNamespace

    from pipelines.core.scorer import save_model
    from pipelines.tracking.model_format import COMPILED_TREES_ENV, IntentFromFiles

    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "cache"))
    scorer = hand_built_model()
    folder = save_model(scorer, tmp_path / "model")
    context = SimpleNamespace(artifacts={"model": str(folder)}, model_config={})

    def loaded(mode: str | None):
        if mode is None:
            monkeypatch.delenv(COMPILED_TREES_ENV, raising=False)
        else:
            monkeypatch.setenv(COMPILED_TREES_ENV, mode)
        pyfunc = IntentFromFiles()
        pyfunc.load_context(context)
        return pyfunc.model.predictor

    assert loaded(None) == compiled.LIGHTGBM  # not compiled here yet: no compile on load
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.o"))
    assert loaded("1") == compiled.LLEAVES  # asked for: compiled (and cached)
    assert loaded(None) == compiled.LLEAVES  # compiled here already: used at once
    assert loaded("0") == compiled.LIGHTGBM
