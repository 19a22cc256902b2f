"""Small generated data sets for the tests (nothing is downloaded or shipped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.core import modelling
from pipelines.core.contract import LABEL, DatasetSpec, to_contract
from pipelines.core.scorer import IntentModel
from pipelines.core.synthetic import GeneratorParams, generate_chunks
from pipelines.core.training import make_featurizer


def generator_params() -> GeneratorParams:
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "generator" / "default.yaml"))
    return GeneratorParams.from_config(cfg)


def synthetic_sessions(n_journeys: int = 300, seed: int = 3) -> pd.DataFrame:
    """Generated sessions in the synthetic layout, with the Bayes posterior columns."""
    return next(generate_chunks(generator_params(), n_journeys, n_journeys, seed))


def run_cli(
    args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`micromoment <args>` in a fresh process, as a scheduler runs it: no MLflow settings from
    this environment unless `env` gives them."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HAND_CLASSES = ("know", "go", "do", "buy")
# the user's own column names, mapped onto the contract's roles
HAND_SPEC = DatasetSpec(
    columns={
        "session_id": "id",
        "journey_id": "journey",
        "started_at": "start",
        "device": "device",
        "dwell_time_s": "dwell",
    },
    label_column="intent",
    classes=HAND_CLASSES,
)
HAND_T0 = pd.Timestamp("2026-03-01T09:00:00Z")


def hand_built_sessions(n_journeys: int = 80) -> pd.DataFrame:
    """`n_journeys` journeys of 3 sessions a day apart, in `HAND_SPEC`'s columns; the intent
    follows the dwell time, so a model can learn it from five rounds."""
    rows = []
    for j in range(n_journeys):
        for s in range(3):
            k = (j + s) % 4
            rows.append(
                {
                    "id": f"j{j}-s{s}",
                    "journey": f"j{j}",
                    "start": (HAND_T0 + pd.Timedelta(days=s, hours=j)).isoformat(),
                    "device": ["mobile", "desktop"][j % 2],
                    "dwell": 30.0 + 100.0 * k + j % 7,
                    "intent": HAND_CLASSES[k],
                }
            )
    return pd.DataFrame(rows)


def hand_built_model(n_journeys: int = 80) -> IntentModel:
    """A five-round LightGBM model on `hand_built_sessions`, on one thread, from core pieces only."""
    canon = to_contract(hand_built_sessions(n_journeys), HAND_SPEC, with_label=True).sessions
    features = {"near_store_km": 1.0, "history": True, "min_category_count": 1}
    featurizer = make_featurizer(HAND_SPEC, features, None).fit(canon)
    X = featurizer.transform(canon)
    y = pd.Categorical(canon[LABEL], categories=list(HAND_CLASSES)).codes.astype(int)
    params = modelling.lgb_params(
        {"params": {"num_leaves": 4, "min_data_in_leaf": 5}}, len(HAND_CLASSES), threads=1, seed=0
    )
    booster = modelling.fit_lightgbm(
        X, y, X, y, params, featurizer.categorical_features_, 5, early_stopping_rounds=5
    )
    return IntentModel(HAND_SPEC, featurizer, booster, threads=1)


def run_consumer(code: str, cwd: Path, tracking_uri: str, keep_mlflow_env: bool = True):
    """`python -c code` in a fresh process in `cwd`, as a registry consumer runs it: no
    PYTHONPATH, the tracking URI given (and, without `keep_mlflow_env`, no other MLflow
    variable). Returns the finished process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and (keep_mlflow_env or not k.startswith("MLFLOW_"))
    }
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
