"""Shared fixtures: composed configs, small data on disk, a temporary MLflow store."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.config.schema import register_configs
from tests.fixtures import synthetic_sessions

# LightGBM and BLAS threads: one per test process, whatever the machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

# MLflow's set_tracking_uri and set_registry_uri also write these variables, which every later
# subprocess inherits: a consumer started with only MLFLOW_TRACKING_URI would read another test's
# registry. Each test starts and ends with them as the session found them.
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
SESSION_MLFLOW_URIS = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}


def restore_mlflow_uri_variables() -> None:
    for name, value in SESSION_MLFLOW_URIS.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def compose_config(config_name: str, overrides: list[str] | None = None) -> dict:
    """A primary config composed as the CLI would, resolved into a plain dict."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(autouse=True)
def mlflow_uri_variables_as_the_session_found_them():
    """Undo what fixtures set up for this test, and the test itself, wrote into MLflow's
    URI variables (MLflow's in-process settings are left as they are)."""
    restore_mlflow_uri_variables()
    yield
    restore_mlflow_uri_variables()


@pytest.fixture(scope="session", autouse=True)
def compiled_trees_cache(tmp_path_factory):
    """Compiled models are cached in a folder of the test session's, never in the user's home
    (subprocesses inherit it)."""
    from pipelines.core.compiled import CACHE_ENV

    folder = tmp_path_factory.mktemp("compiled")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Generated sessions and stores on disk, as `micromoment generate` writes them."""
    from pipelines.engines.local import generate
    from tests.fixtures import generator_params  # noqa: F401  (keeps the import cost here)

    out = tmp_path_factory.mktemp("synthetic")
    gen = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/generator/default.yaml"))
    generate(
        {
            "out_dir": str(out),
            "n_journeys": 600,
            "chunk_journeys": 250,
            "seed": 11,
            "posterior": True,
        },
        gen,
    )
    return out


@pytest.fixture(scope="session")
def small_sessions():
    return synthetic_sessions(300, seed=3)


@pytest.fixture
def train_config(synthetic_dir, tmp_path):
    """The train config on the small generated data, one thread, a throwaway MLflow store."""
    return compose_config(
        "train",
        [
            f"data.path={synthetic_dir}/sessions",
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"output_dir={tmp_path}",
            "runtime.threads=1",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "model.num_boost_round=200",
            "model.early_stopping_rounds=20",
        ],
    )


@pytest.fixture(scope="session")
def registry_store(synthetic_dir, tmp_path_factory):
    """A throwaway MLflow store holding three versions, gated in turn:
    v1 weak (first model: champion), v2 strong (promoted), v3 weak again (kept out)."""
    from pipelines.stages.train import train
    from pipelines.tracking.train_run import log_and_register

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    base = [
        f"data.path={synthetic_dir}/sessions",
        f"data.stores_path={synthetic_dir}/stores.csv",
        f"output_dir={root}",
        "runtime.threads=1",
        f"tracking.uri={uri}",
        "registry.gate=true",
        "baselines=false",
    ]
    weak = ["features.history=false", "model.params.num_leaves=2", "model.num_boost_round=3"]
    strong = ["model.num_boost_round=200", "model.early_stopping_rounds=20"]
    summaries = []
    for extra in (weak, strong, weak):
        cfg = compose_config("train", base + extra)
        summaries.append(log_and_register(cfg, train(cfg), extra, str(root)))
    return {
        "uri": uri,
        "root": root,
        "summaries": summaries,
        "config": compose_config("train", base),
    }


@pytest.fixture
def client(registry_store):
    """An MLflow client of the registry store, and MLflow's default URIs pointed at it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    return MlflowClient(registry_store["uri"], registry_uri=registry_store["uri"])


@pytest.fixture
def registry_copy(registry_store, tmp_path):
    """A copy of the registry store's database (its artifacts shared, read only): a test may move
    aliases and tag versions without changing the store other tests read."""
    import shutil

    shutil.copy(registry_store["root"] / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def feed_output(registry_store, synthetic_dir, tmp_path_factory):
    """A `micromoment touchpoints` output of the small generated data, logged to the throwaway
    store, with a fifth of the journeys held out."""
    from pipelines.stages.touchpoints import run_touchpoints

    out = tmp_path_factory.mktemp("feed") / "touchpoints"
    cfg = compose_config(
        "touchpoints",
        [
            f"data.path={synthetic_dir}/sessions",
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"tracking.uri={registry_store['uri']}",
            "runtime.threads=1",
            f"feed.output={out}",
            "touchpoints.estimation.min_effective_sessions=10",
            "touchpoints.holdout_share=0.2",
        ],
    )
    summary = run_touchpoints(OmegaConf.create(cfg))
    return {"dir": out, "summary": summary, "uri": registry_store["uri"]}
