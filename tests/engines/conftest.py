"""The Dask cluster and the data generated on it, shared by the Dask engine's test files (here,
not in tests/conftest.py, because `client` there is the MLflow registry's): started once for
this package and closed after its last test."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.engines.dask import generate_dask
from pipelines.engines.dask_cluster import cluster
from pipelines.engines.local import generate


@pytest.fixture(scope="package")
def client():
    """A LocalCluster of two worker processes on loopback, started once for the engines tests."""
    with cluster({"n_workers": 2, "threads_per_worker": 1}) as c:
        yield c


GENERATE = {"n_journeys": 2500, "chunk_journeys": 1000, "seed": 5, "posterior": True}


def _generator_config() -> dict:
    return OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/generator/default.yaml"))


@pytest.fixture(scope="package")
def generated(client, tmp_path_factory):
    """About 7,800 sessions of 2,500 journeys in 3 chunks, generated locally and on Dask."""
    local, dask = tmp_path_factory.mktemp("gen-local"), tmp_path_factory.mktemp("gen-dask")
    return {
        "local": local,
        "dask": dask,
        "local_summary": generate({**GENERATE, "out_dir": str(local)}, _generator_config()),
        "dask_summary": generate_dask(
            client, {**GENERATE, "out_dir": str(dask)}, _generator_config()
        ),
    }
