"""`micromoment train`: sessions -> contract -> features -> LightGBM -> evaluate -> MLflow.

`train(cfg)` is the recipe and touches neither MLflow nor Hydra; `main` is the Hydra entry point
that logs what `train` returns and registers the model. With `engine=dask` the recipe runs on a
Dask cluster (`pipelines.engines.dask_train`) and returns the same `TrainResult`, evaluated by the same
`evaluate`, so logging and registering do not know where the model was trained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipelines.core import drift, modelling
from pipelines.reports import plots
from pipelines.core.contract import LABEL, DatasetSpec, to_contract
from pipelines.core.features import SessionFeaturizer
from pipelines.core.gate import TrainingSpan
from pipelines.io.readers import read_sessions
from pipelines.stages.runner import command, in_sweep
from pipelines.core.scorer import IntentModel

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced; `main` logs it."""

    metrics: dict[str, float]
    model: IntentModel
    rejects: pd.DataFrame  # rows that broke the contract: the user's columns, reason, source row
    fingerprint: str
    figures: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    input_example: pd.DataFrame | None = None
    # test rows with labels, model and reference probabilities
    test_frame: pd.DataFrame | None = None
    test_raw: pd.DataFrame | None = None  # the test split as it came in (the user's columns)
    test_labels: pd.Series | None = None
    test_fingerprint: str = ""
    drift_reference: dict = field(
        default_factory=dict
    )  # feature profile and intent mix (see drift)
    span: TrainingSpan | None = None  # the journeys it trained and early-stopped on (see gate)


@contextmanager
def timed(timings: dict, stage: str):
    """Add the seconds the block takes to `timings[stage]`."""
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def load_stores(path: str | None) -> list[list[float]] | None:
    """Store coordinates from a CSV or parquet table with latitude and longitude columns."""
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: store table not found (data.stores_path); set it to null to train without store features"
        )
    table = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    for col in ("latitude", "longitude"):
        if col not in table.columns:
            raise KeyError(f"{p}: store table needs a '{col}' column, found {list(table.columns)}")
    return table[["latitude", "longitude"]].astype(float).to_numpy().tolist()


def train(
    cfg: Mapping,
    sessions: pd.DataFrame | None = None,
    callbacks: list | None = None,
    client=None,
) -> TrainResult:
    """Train and evaluate the intent model described by `cfg` (a plain dict of the train config).

    Reads `cfg["data"]["path"]` unless `sessions` (raw, the user's columns) is given. `callbacks`
    are extra LightGBM callbacks (hyperparameter search uses one to prune bad trials early).
    With `cfg["engine"]["name"] == "dask"` it trains on the cluster behind `client` (or on the one
    `cfg["engine"]` describes) with `lightgbm.dask`.
    """
    if (cfg.get("engine") or {}).get("name", "local") == "dask":
        if callbacks:
            raise ValueError(
                "engine=dask trains with lightgbm.dask, which takes no LightGBM callbacks "
                "(hyperparameter search prunes with them): use engine=local"
            )
        from pipelines.engines.dask_train import train_dask

        return train_dask(cfg, sessions=sessions, client=client)
    return _train_local(cfg, sessions, callbacks)


def make_featurizer(spec: DatasetSpec, cfg: Mapping) -> SessionFeaturizer:
    """The unfitted featurizer for the dataset and the `features` config."""
    feat_cfg = cfg["features"]
    return SessionFeaturizer(
        page_types=list(spec.page_counts),
        extra_numeric=list(spec.extra_numeric),
        extra_categorical=list(spec.extra_categorical),
        stores=load_stores(cfg["data"].get("stores_path")),
        near_store_km=float(feat_cfg["near_store_km"]),
        history=bool(feat_cfg["history"]),
        min_category_count=int(feat_cfg["min_category_count"]),
    )


def check_splits(sizes: Mapping[str, int], source: str) -> None:
    """Refuse a split side without rows."""
    for side in modelling.SPLITS:
        if not sizes.get(side):
            raise ValueError(
                f"{source}: the {side} split is empty; use more journeys or larger split sizes"
            )


def _reference_posterior(cfg: Mapping, test_raw: pd.DataFrame, classes: list[str]):
    """The generator's Bayes-optimal posterior of the test rows, when the data carries it."""
    prefix = cfg["data"].get("reference_posterior_prefix")
    ref_cols = [f"{prefix}{c}" for c in classes] if prefix else []
    if ref_cols and all(c in test_raw.columns for c in ref_cols):
        return test_raw[ref_cols].to_numpy(dtype=float)
    return None


def _train_local(
    cfg: Mapping, sessions: pd.DataFrame | None, callbacks: list | None
) -> TrainResult:
    """The recipe in this process with pandas and `lightgbm.train` (early stopping on val)."""
    timings: dict[str, float] = {}
    data_cfg = cfg["data"]
    spec = DatasetSpec.from_config(data_cfg)
    threads, seed = int(cfg["runtime"]["threads"]), int(cfg["runtime"]["seed"])
    source = str(data_cfg.get("path") or "<frame>")

    with timed(timings, "read"):
        raw = (
            read_sessions(data_cfg["path"]) if sessions is None else sessions.reset_index(drop=True)
        )
    with timed(timings, "validate"):
        contract = to_contract(raw, spec, source=source, with_label=True)
        canon = contract.sessions
        if len(canon) == 0:
            raise ValueError(
                f"{source}: no valid sessions left after validation ({len(contract.rejects)} rejected)"
            )
        fingerprint = modelling.data_fingerprint(canon)
        classes = list(spec.classes)
        y_all = pd.Categorical(canon[LABEL], categories=classes).codes.astype(int)
        split = modelling.split_sessions(
            canon,
            cfg["split"]["val_size"],
            cfg["split"]["test_size"],
            by=cfg["split"]["by"],
            seed=seed,
        )
        check_splits(split.value_counts().to_dict(), source)

    with timed(timings, "features"):
        featurizer = make_featurizer(spec, cfg)
        parts = {side: canon[split.to_numpy() == side] for side in modelling.SPLITS}
        featurizer.fit(parts["train"])
        X = {side: featurizer.transform(part) for side, part in parts.items()}
        y = {side: y_all[split.to_numpy() == side] for side in modelling.SPLITS}

    with timed(timings, "train"):
        model_cfg = cfg["model"]
        params = modelling.lgb_params(model_cfg, len(classes), threads, seed)
        booster = fit_early_stopped(model_cfg, params, featurizer, X, y, callbacks)
    model = IntentModel(spec, featurizer, booster, threads=threads)

    is_test = split.to_numpy() == "test"
    test_raw = raw.iloc[contract.kept_rows[is_test]].reset_index(drop=True)
    evaluation = evaluate(cfg, model, X, y, parts["test"]["session_id"], test_raw, timings)
    metrics = evaluation.pop("metrics")
    for key, value in contract.counts.items():
        metrics[f"data/{key}"] = float(value)
    for side in modelling.SPLITS:
        metrics[f"data/{side}_rows"] = float(len(y[side]))
    return TrainResult(
        **evaluation,
        metrics=metrics,
        test_raw=test_raw,
        test_labels=canon.loc[is_test, LABEL].reset_index(drop=True),
        test_fingerprint=modelling.data_fingerprint(canon[is_test]),
        model=model,
        rejects=contract.rejects,
        fingerprint=fingerprint,
        timings=timings,
        input_example=raw.iloc[contract.kept_rows[:5]],
        span=TrainingSpan.of(canon, split.to_numpy(), cfg["split"], seed),
    )


def fit_early_stopped(
    model_cfg: Mapping,
    params: Mapping,
    featurizer: SessionFeaturizer,
    X: Mapping[str, pd.DataFrame],
    y: Mapping[str, np.ndarray],
    callbacks: list | None = None,
):
    """LightGBM on the "train" features, stopped early on the "val" ones (`model` config: round
    cap and patience): the model of local training, the round search of Dask training."""
    return modelling.fit_lightgbm(
        X["train"],
        y["train"],
        X["val"],
        y["val"],
        params,
        featurizer.categorical_features_,
        num_boost_round=int(model_cfg["num_boost_round"]),
        early_stopping_rounds=int(model_cfg["early_stopping_rounds"]),
        callbacks=callbacks,
    )


def evaluate(
    cfg: Mapping,
    model: IntentModel,
    X: Mapping[str, pd.DataFrame],
    y: Mapping[str, np.ndarray],
    test_ids: pd.Series,
    test_raw: pd.DataFrame,
    timings: dict,
) -> dict:
    """Metrics, figures, the test frame and the drift reference of a trained model, timed as
    the "evaluate" stage of `timings`.

    `X` and `y` hold the "train", "val" and "test" features and class codes; the training rows
    feed the baselines and the drift profile (a sample of them is enough). `test_raw` is the test
    split as it came in: when it carries the generator's Bayes-optimal posterior, the model is
    also measured against it. Returns the `TrainResult` fields `metrics`, `figures`, `test_frame`
    and `drift_reference`.
    """
    with timed(timings, "evaluate"):
        return _evaluate(cfg, model, X, y, test_ids.to_numpy(), test_raw, timings)


def _evaluate(cfg, model, X, y, test_ids, test_raw, timings) -> dict:
    classes = list(model.classes)
    booster = model.booster
    seed = int(cfg["runtime"]["seed"])
    metrics: dict[str, float] = {}
    proba = {side: model.predict_features(X[side]) for side in ("val", "test")}
    for key, value in modelling.classification_metrics(y["test"], proba["test"], classes).items():
        metrics[f"test/{key}"] = value
    metrics["val/logloss"] = modelling.classification_metrics(y["val"], proba["val"], classes)[
        "logloss"
    ]
    metrics["train/best_iteration"] = float(booster.best_iteration or booster.current_iteration())
    figures = {
        "confusion": (
            modelling.normalised_confusion(y["test"], proba["test"], len(classes)),
            classes,
        ),
        "reliability": (y["test"], proba["test"], classes),
        "importance": (
            model.featurizer.feature_names_,
            booster.feature_importance(importance_type="gain"),
        ),
    }
    test_frame = pd.DataFrame({"session_id": test_ids, "label": y["test"]})
    for j, c in enumerate(classes):
        test_frame[f"p_{c}"] = proba["test"][:, j]

    if cfg.get("baselines", True):
        categorical = model.featurizer.categorical_features_
        maj = modelling.majority_proba(y["train"], len(y["test"]), len(classes))
        for key in ("accuracy", "macro_f1", "logloss", "ece"):
            metrics[f"test/majority/{key}"] = modelling.classification_metrics(
                y["test"], maj, classes
            )[key]
        with timed(timings, "baseline_logreg"):
            cap = int(cfg.get("logreg_max_rows", 200_000))
            rng = np.random.default_rng(seed)
            take = np.sort(
                rng.choice(len(y["train"]), size=min(cap, len(y["train"])), replace=False)
            )
            logreg = modelling.fit_logistic_baseline(
                X["train"].iloc[take], y["train"][take], categorical, seed
            )
            lr = modelling.logistic_proba(logreg, X["test"], categorical)
        for key in ("accuracy", "macro_f1", "logloss", "ece"):
            metrics[f"test/logreg/{key}"] = modelling.classification_metrics(
                y["test"], lr, classes
            )[key]

    reference = _reference_posterior(cfg, test_raw, classes)
    if reference is not None:
        bayes = modelling.classification_metrics(y["test"], reference, classes)
        for key in ("accuracy", "macro_f1", "logloss", "ece"):
            metrics[f"test/bayes/{key}"] = bayes[key]
        metrics["test/ratio_to_bayes/accuracy"] = metrics["test/accuracy"] / bayes["accuracy"]
        metrics["test/ratio_to_bayes/macro_f1"] = metrics["test/macro_f1"] / bayes["macro_f1"]
        metrics["test/ratio_to_bayes/logloss"] = metrics["test/logloss"] / bayes["logloss"]
        for j, c in enumerate(classes):
            test_frame[f"bayes_p_{c}"] = reference[:, j]

    predicted = pd.Series(np.asarray(classes, dtype=object)[proba["test"].argmax(axis=1)])
    return {
        "metrics": metrics,
        "figures": figures,
        "test_frame": test_frame,
        "drift_reference": {
            "classes": classes,
            "features": drift.profile(X["train"]),
            "intent_mix": drift.intent_mix(predicted, classes),
        },
    }


def render_figures(result: TrainResult) -> dict:
    """Matplotlib figures of a training result, keyed by artifact path."""
    cm, classes = result.figures["confusion"]
    y, proba, classes = result.figures["reliability"]
    names, gain = result.figures["importance"]
    return {
        "plots/confusion_matrix.png": plots.confusion_figure(cm, classes),
        "plots/reliability.png": plots.reliability_figure(y, proba, classes),
        "plots/feature_importance.png": plots.importance_figure(
            list(names), np.asarray(gain, dtype=float)
        ),
    }


def log_and_register(
    cfg: Mapping,
    result: TrainResult,
    overrides: list[str],
    output_dir: str | None,
    tags: Mapping[str, str] | None = None,
) -> dict:
    """Log a finished training run to MLflow and register its model; returns a summary.

    `tags` go on the run and on the registered version.
    """
    import mlflow

    from pipelines.tracking.runs import runs as tracking
    from pipelines.io.outputs import write_rejects

    start = time.perf_counter()
    experiment_id = tracking.setup(cfg["tracking"])
    reg = cfg["registry"]
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=cfg["tracking"].get("run_name"),
        nested=mlflow.active_run() is not None,
    ) as run:
        tracking.log_run_config(cfg, overrides)
        mlflow.set_tags(
            {
                "data_fingerprint": result.fingerprint,
                "dataset": cfg["data"].get("name", "?"),
                "stage": "train",
            }
        )
        mlflow.log_param("data_fingerprint", result.fingerprint)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"time/{k}_s": v for k, v in result.timings.items()})
        for path, fig in render_figures(result).items():
            tracking.log_figure(fig, path)
        tracking.write_json_artifact(result.model.describe(), "model_contract.json")
        tracking.write_json_artifact(result.drift_reference, "drift_reference.json")
        tags = dict(tags or {})
        if result.span is not None:
            tags[TrainingSpan.TAG] = result.span.to_json()
        if tags:
            mlflow.set_tags(tags)
        if len(result.rejects):
            target = Path(output_dir or ".") / "rejects.parquet"
            write_rejects(result.rejects, target)
            mlflow.log_artifact(str(target), "rejects")
            log.warning("%d rows rejected; reasons in %s", len(result.rejects), target)
        # a sweep's jobs are registered by the sweep when it ends: only its best job
        sweep_job = in_sweep()
        if sweep_job and reg.get("register", True):
            mlflow.set_tag("sweep.registrable", "true")
        info = tracking.log_intent_model(
            result.model,
            result.input_example,
            reg["model_name"] if reg.get("register", True) and not sweep_job else None,
            model_name=reg["model_name"],
        )
        version = getattr(info, "registered_model_version", None)
        if version is not None:
            from mlflow.tracking import MlflowClient

            for key, value in (tags or {}).items():
                MlflowClient().set_model_version_tag(reg["model_name"], str(version), key, value)
            if reg.get("alias"):
                tracking.set_alias(reg["model_name"], version, reg["alias"])
        mlflow.log_metric("time/log_s", time.perf_counter() - start)
        decision = None
        if sweep_job and reg.get("gate"):
            log.warning(
                "registry.gate is not applied to sweep jobs: judge the sweep's best with `micromoment promote`"
            )
        if version is not None and reg.get("gate"):
            from mlflow.tracking import MlflowClient

            from pipelines.stages.promote import gate, policy_from

            decision = gate(
                MlflowClient(),
                reg["model_name"],
                str(version),
                result.test_raw,
                result.test_labels,
                result.test_fingerprint,
                policy_from(cfg["gate"]),
                int(cfg["runtime"]["threads"]),
            )
            mlflow.set_tags(
                {
                    "gate.decision": "promoted" if decision.promote else "kept_champion",
                    "gate.reason": decision.reason[:5000],
                }
            )
        uri = tracking.resolve_tracking_uri(cfg["tracking"].get("uri"))
        return {
            "gate": decision,
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "model_uri": info.model_uri,
            "registered_version": version,
            "tracking_uri": tracking.redact(uri),
        }


def print_summary(result: TrainResult, summary: Mapping) -> None:
    m = result.metrics
    lines = [
        "",
        f"run id:         {summary['run_id']}",
        f"registered:     micro_moment_intent version {summary['registered_version']}"
        if summary.get("registered_version")
        else "registered:     (not registered)",
        f"rows:           {int(m['data/rows_in'])} in, {int(m['data/rows_kept'])} kept, {int(m['data/rows_rejected'])} rejected",
        f"test accuracy:  {m['test/accuracy']:.4f}   macro-F1: {m['test/macro_f1']:.4f}   log-loss: {m['test/logloss']:.4f}",
    ]
    if "test/bayes/accuracy" in m:
        lines.append(
            f"Bayes-optimal:  accuracy {m['test/bayes/accuracy']:.4f} (model at {m['test/ratio_to_bayes/accuracy']:.1%}), log-loss {m['test/bayes/logloss']:.4f}"
        )
    if "test/logreg/accuracy" in m:
        lines.append(
            f"baselines:      logistic regression {m['test/logreg/accuracy']:.4f}, majority class {m['test/majority/accuracy']:.4f}"
        )
    if summary.get("gate") is not None:
        verdict = (
            "promoted to @champion" if summary["gate"].promote else "kept the current @champion"
        )
        lines.append(f"gate:           {verdict} ({summary['gate'].reason})")
    uri = summary["tracking_uri"]
    lines.append(
        f"see the run:    mlflow ui --backend-store-uri {uri}"
        + ("" if uri.startswith("sqlite") else "  (or open the server)")
    )
    print("\n".join(lines), flush=True)


def run_train(
    cfg: DictConfig, overrides: list[str] | None = None, output_dir: str | None = None
) -> float:
    """Train, log and register; returns the validation log-loss (what sweepers minimise)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    result = train(container)
    summary = log_and_register(
        container, result, overrides or [], output_dir or container.get("output_dir")
    )
    print_summary(result, summary)
    return float(result.metrics["val/logloss"])


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


@command("train")
def main(cfg: DictConfig) -> float:
    return run_train(cfg, task_overrides())
