"""Where the work runs: one `Engine` interface for generate, train and score, with a `local`
implementation (this process, pandas) and a `dask` one (a Dask cluster).

Both run the same per-chunk functions from `pipelines.core` (`synthetic.generate_chunk`,
`scoring.score_chunk`, `training.result_of`) and write the same outputs; a stage picks one with
`engine_for(cfg["engine"])` and never asks which it got.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import pandas as pd

from pipelines.core.scoring import ScoreOptions
from pipelines.core.training import TrainResult
from pipelines.engines.dask import DaskEngine
from pipelines.engines.local import LocalEngine


class Engine(Protocol):
    """What generate, train and score need from wherever the work runs."""

    name: str

    def generate(self, gen_cfg: Mapping, params_cfg: Mapping) -> dict:
        """Simulate `<out_dir>/sessions/part-*.parquet` and `<out_dir>/stores.csv`; a summary."""

    def train(
        self, cfg: Mapping, sessions: pd.DataFrame | None = None, callbacks: list | None = None
    ) -> TrainResult:
        """Train and evaluate the intent model of a train config (`sessions`: raw rows instead
        of `data.path`; `callbacks`: extra LightGBM callbacks)."""

    def score(self, model_uri: str, input_path: str, out_dir: str, options: ScoreOptions) -> dict:
        """Score every session of an input into an output folder; the summary (its `predictor`
        says whether compiled trees or LightGBM predicted)."""


ENGINES: dict[str, type] = {"local": LocalEngine, "dask": DaskEngine}


def engine_for(cfg: Mapping) -> Engine:
    """The engine an `engine` config names."""
    return ENGINES[str(cfg["name"])](cfg)
