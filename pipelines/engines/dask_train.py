"""`micromoment train engine=dask`: the training recipe on a Dask cluster, with `lightgbm.dask`.

`train_dask(cfg)` returns the `TrainResult` local training returns: an `IntentModel` of the same
featurizer and a LightGBM booster, assembled and evaluated by the same `core.training.result_of`,
so it is logged and registered by the same code and consumers cannot tell where it was trained.

What runs where:

1. **Cluster**: the input is read as a `dask.dataframe`, its rows numbered in input order and
   shuffled by journey id (as for scoring on Dask), so a journey sits whole in one partition: the
   split and the history features never straddle two partitions.
2. **Cluster**: the session contract (`to_contract`) runs per partition. Rejected rows keep their
   row number in the input. Session ids found in more than one partition are counted over the
   whole input first, so every occurrence after the first in input order is rejected as a
   duplicate with local training's reasons, whatever else is wrong with either row.
3. **Cluster**: the split. `split.by=journey` assigns journeys by the seeded hash of their id, per
   partition, exactly as locally; `split.by=time` gathers one row per journey (its first start),
   ranks them on the client as local training does and sends the sides back.
4. **Client**: gathered are a sample of whole training journeys (about `engine.sample_rows`
   sessions), every validation and test row (canonical, then their features), the test rows as
   they came in (for the gate), the rejected rows, and one 64-bit hash per kept row, from which
   the data fingerprint is built exactly as local training builds it.
5. **Client**: the featurizer is fitted on the training sample. Its fitted state is the store
   index (from the configured store table), the feature names (from which roles the data has)
   and the category levels (levels seen at least `features.min_category_count` times). Fitting on
   a sample bounds the client's memory whatever the data size; while the training rows number at
   most `engine.sample_rows` the sample is all of them and the featurizer is exactly the one local
   training fits. Beyond that, only levels too rare to reach the minimum count in the sample are
   lost, and they are scored like any rare level (unknown), as the model could barely learn them.
6. **Client**: the number of boosting rounds, since `lightgbm.dask` has no early stopping:
   `engine.num_boost_round` when set, else a local early-stopped run (`training.fit_early_stopped`,
   capped at `model.num_boost_round`, patience `model.early_stopping_rounds`) on the training
   sample against the validation rows, whose best iteration times `engine.rounds_factor` is the
   round count. When the sample is every training row this is the local model's iteration count.
7. **Cluster**: features per partition for the training rows, then `DaskLGBMClassifier` trains
   with that many rounds. Categorical features arrive as pandas categories with the featurizer's
   levels in every partition, so LightGBM's category codes are the featurizer's codes: the ones the
   scorer's float matrix (`modelling.feature_matrix`) predicts from. LightGBM on each worker uses
   the worker's threads (`lightgbm.dask` sets them: `engine.threads_per_worker` on a
   `LocalCluster`); `runtime.threads` is for the client's round-count run and evaluation.
8. **Client**: evaluation as in local training, on the gathered validation and test features; the
   majority and logistic baselines and the drift profile use the training sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipelines.config.schema import EngineSchema
from pipelines.core import keys, modelling, training
from pipelines.core.contract import LABEL, SOURCE_ROW, DatasetSpec, as_text, to_contract
from pipelines.core.cv import EvalConfigError
from pipelines.core.gate import TrainingSpan, iso_time
from pipelines.core.scorer import IntentModel
from pipelines.core.scoring import ROW
from pipelines.engines.dask_cluster import (
    cluster,
    journeys_whole,
    n_workers,
    read_numbered,
    with_row_numbers,
)
from pipelines.io.readers import load_stores

SPLIT = "__split"
TARGET = "__target"
EXTRA = [ROW, SPLIT]


def train_dask(
    cfg: Mapping, sessions: pd.DataFrame | None = None, client=None
) -> training.TrainResult:
    """Train and evaluate the intent model of `cfg` on the cluster behind `client`, or on the one
    `cfg["engine"]` describes (started and stopped here). Reads `cfg["data"]["path"]` unless
    `sessions` (raw, the user's columns) is given."""
    if int(cfg.get("eval", {}).get("cv", {}).get("folds", 0)):
        raise EvalConfigError(
            "eval.cv.folds: cross-validation runs on the local engine only; use engine=local, "
            "or eval.cv.folds=0 with engine=dask"
        )
    if client is not None:
        return _train_on(client, cfg, sessions)
    with cluster(cfg["engine"]) as started:
        return _train_on(started, cfg, sessions)


def _train_on(client, cfg: Mapping, sessions: pd.DataFrame | None) -> training.TrainResult:
    timings: dict[str, float] = {}
    spec = DatasetSpec.from_config(cfg["data"])
    classes = list(spec.classes)
    threads, seed = int(cfg["runtime"]["threads"]), int(cfg["runtime"]["seed"])
    source = str(cfg["data"]["path"] if sessions is None else "<frame>")
    with training.timed(timings, "read"):
        raw, rows_in = _read_whole_journeys(client, cfg, spec, sessions)
    with training.timed(timings, "validate"):
        canon, rejects = _contract_and_split(client, raw, spec, source, cfg["split"], seed)
        stats, sizes = _validated_counts(client, canon, rejects, classes, source)
        hashes = client.gather(client.map(_row_hashes, canon))
    with training.timed(timings, "gather"):
        fraction = min(1.0, float(cfg["engine"]["sample_rows"]) / sizes["train"])
        parts, test_raw, input_example = _gather_to_client(client, raw, canon, fraction, seed)
        del raw  # the cluster frees the raw partitions
        fingerprint = _fingerprint(parts["train"].drop(columns=EXTRA).columns, hashes)
    with training.timed(timings, "features"):
        stores = load_stores(cfg["data"]["stores_path"])
        featurizer = training.make_featurizer(spec, cfg["features"], stores)
        featurizer.fit(parts["train"].drop(columns=EXTRA))
        X = {side: featurizer.transform(part.drop(columns=EXTRA)) for side, part in parts.items()}
        y = {side: _codes(part[LABEL], classes) for side, part in parts.items()}
    with training.timed(timings, "rounds"):
        params = modelling.lgb_params(cfg["model"], len(classes), threads, seed)
        rounds, sample_best = num_boost_round(cfg["engine"], cfg["model"], params, featurizer, X, y)
    with training.timed(timings, "train"):
        booster = _fit_on_cluster(
            client, canon, stats, featurizer, classes, X["train"], params, rounds
        )
    metrics = {
        "data/rows_in": float(rows_in),
        "data/rows_kept": float(stats["rows"].sum()),
        "data/rows_rejected": float(len(rejects)),
        **{f"data/{side}_rows": float(sizes[side]) for side in modelling.SPLITS},
        "train/sample_rows": float(len(parts["train"])),
    }
    if sample_best is not None:
        metrics["train/sample_best_iteration"] = float(sample_best)
    return training.result_of(
        cfg,
        IntentModel(spec, featurizer, booster, threads=threads),
        X,
        y,
        parts["test"].drop(columns=EXTRA).reset_index(drop=True),
        test_raw,
        timings,
        extra_metrics=metrics,
        rejects=rejects,
        fingerprint=fingerprint,
        input_example=input_example,
        span=_training_span(client, canon, cfg["split"], seed),
    )


def _read_whole_journeys(client, cfg: Mapping, spec: DatasetSpec, sessions: pd.DataFrame | None):
    """The input on the cluster, rows numbered in input order, every journey whole in one
    partition: futures of the raw partitions, and the row count."""
    import dask.dataframe as dd

    if sessions is None:
        ddf, rows_in = read_numbered(cfg["data"]["path"])
    else:
        frame = sessions.reset_index(drop=True)
        ddf, rows_in = with_row_numbers(dd.from_pandas(frame, npartitions=n_workers(client)))
    partitions = int(cfg["engine"]["partitions"] or max(ddf.npartitions, n_workers(client)))
    ddf = journeys_whole(ddf, spec.columns.get("journey_id"), partitions)
    # raw partitions stay on the cluster until the raw test rows are gathered
    return client.compute(ddf.to_delayed()), rows_in


def _validated_counts(client, canon, rejects, classes: list[str], source: str):
    """Rows per partition, side and class of the kept rows, and rows per side; refuses no kept
    rows, an empty split side, or a class without training rows."""
    counts = client.gather(client.map(_counts, canon))
    stats = pd.concat([c.assign(part=i) for i, c in enumerate(counts)], ignore_index=True)
    if int(stats["rows"].sum()) == 0:
        raise ValueError(
            f"{source}: no valid sessions left after validation ({len(rejects)} rejected)"
        )
    sizes = stats.groupby("side")["rows"].sum().to_dict()
    training.check_splits(sizes, source)
    _check_training_classes(stats, classes, source)
    return stats, sizes


def _gather_to_client(client, raw, canon, fraction: float, seed: int):
    """What the client holds: the canonical rows of each side (a `fraction` of the training
    journeys), the test rows as they came in, and the input example (the first kept rows)."""
    gathered = _sorted(client.gather(client.map(_client_rows, canon, fraction=fraction, seed=seed)))
    kept_raw = _as_read(
        _sorted(client.gather(client.map(_raw_rows, raw, canon, sides=("test",), head=5)))
    )
    parts = {side: gathered[gathered[SPLIT] == side] for side in modelling.SPLITS}
    is_test = kept_raw[ROW].isin(parts["test"][ROW]).to_numpy()
    test_raw = kept_raw[is_test].drop(columns=[ROW]).reset_index(drop=True)
    input_example = kept_raw.nsmallest(5, ROW).set_index(ROW).rename_axis(None)
    return parts, test_raw, input_example


def _training_span(client, canon, split_cfg: Mapping, seed: int) -> TrainingSpan:
    """The `TrainingSpan` of the split, from each partition's first, last and first test start."""
    spans = pd.DataFrame(client.gather(client.map(_span_of, canon)))
    return TrainingSpan(
        split=str(split_cfg["by"]),
        seed=seed,
        val_size=float(split_cfg["val_size"]),
        test_size=float(split_cfg["test_size"]),
        start=iso_time(spans["start"].min()),
        end=iso_time(spans["end"].max()),
        test_from=iso_time(spans["test_from"].min()),
    )


def _contract_and_split(client, raw, spec: DatasetSpec, source: str, split_cfg: Mapping, seed: int):
    """The session contract and the split, per partition of `raw` (futures): returns the
    canonical kept rows with their side (futures, one per partition) and the rejected rows."""
    repeated = _repeated_ids(client, raw, spec.columns.get("session_id"))
    # one copy on each worker (a dict is scattered whole inside a list, not value by value)
    shared = client.scatter([repeated], broadcast=True)[0] if repeated else None
    contracted = client.map(_contract_partition, raw, spec=spec, source=source, repeated=shared)
    canon = client.map(_item, contracted, name="canon")
    sides = None
    if split_cfg["by"] == "time":
        sides = client.scatter(_time_sides(client, canon, split_cfg, seed), broadcast=True)
    canon = client.map(
        _with_split,
        canon,
        val_size=float(split_cfg["val_size"]),
        test_size=float(split_cfg["test_size"]),
        by=split_cfg["by"],
        seed=seed,
        sides=sides,
    )
    rejects = client.gather(client.map(_item, contracted, name="rejects"))
    return canon, _as_read(_sorted_rejects(rejects))


def num_boost_round(
    engine: Mapping,
    model_cfg: Mapping,
    params: Mapping,
    featurizer,
    X: Mapping[str, pd.DataFrame],
    y: Mapping[str, np.ndarray],
) -> tuple[int, int | None]:
    """Boosting rounds on the cluster, and the sample's best iteration when it was searched.

    `engine.num_boost_round` when set; else the best iteration of an early-stopped run on the
    training sample `X["train"]` against the validation rows, times `engine.rounds_factor`.
    """
    settings = EngineSchema(**engine)  # what a caller leaves out, the schema's defaults
    if settings.num_boost_round:
        return int(settings.num_boost_round), None
    booster = training.fit_early_stopped(model_cfg, params, featurizer, X, y)
    best = int(booster.best_iteration or booster.current_iteration())
    return max(1, round(best * float(settings.rounds_factor))), best


def _fit_on_cluster(client, canon, stats, featurizer, classes, meta_frame, params, rounds):
    """`DaskLGBMClassifier` on the training rows' features, built per partition on the cluster."""
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier

    with_rows = set(stats.loc[(stats["side"] == "train") & (stats["rows"] > 0), "part"])
    # a worker without training rows would leave LightGBM's network waiting for it
    canon = [f for i, f in enumerate(canon) if i in with_rows]
    shared = client.scatter(featurizer, broadcast=True)
    meta = meta_frame.iloc[:0].assign(**{TARGET: np.array([], dtype=np.int32)})
    features = client.map(_training_features, canon, featurizer=shared, classes=classes, meta=meta)
    frame = dd.from_delayed(features, meta=meta, verify_meta=False)
    # lightgbm.dask gives each worker's LightGBM the worker's own thread count
    dask_params = {k: v for k, v in params.items() if k != "num_threads"}
    classifier = DaskLGBMClassifier(client=client, n_estimators=int(rounds), **dask_params)
    with warnings.catch_warnings():
        # the sklearn wrapper always carries n_jobs, which lightgbm.dask then says it ignores
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        classifier.fit(
            frame.drop(columns=[TARGET]),
            frame[TARGET],
            categorical_feature=list(featurizer.categorical_features_),
        )
    return classifier.booster_


# -- per-partition tasks -----------------------------------------------------------------------


def _contract_partition(
    frame: pd.DataFrame, spec: DatasetSpec, source: str, repeated: Mapping[str, int] | None
) -> dict:
    """The session contract on one partition: canonical kept rows (with their input row number)
    and rejected rows (the user's columns, the reason, the input row number). `repeated` maps
    session ids found in several partitions to the input row of their first occurrence."""
    frame = frame.sort_values(ROW, kind="stable").reset_index(drop=True)
    rows = frame.pop(ROW).to_numpy()
    later = None
    if repeated:
        first = as_text(frame[spec.columns["session_id"]]).map(repeated)
        later = (first.notna() & (first != rows)).to_numpy()
    result = to_contract(
        frame,
        spec,
        source=source,
        with_label=True,
        row_numbers=rows,
        repeated_elsewhere=later,
    )
    canon = result.sessions.assign(**{ROW: rows[result.kept_rows]})
    rejects = result.rejects
    rejects[SOURCE_ROW] = rows[rejects[SOURCE_ROW].to_numpy(dtype=np.int64)]
    return {"canon": canon, "rejects": rejects}


def _item(result: dict, name: str):
    return result[name]


def _journey_starts(canon: pd.DataFrame) -> pd.DataFrame:
    """One row per journey of the partition: its key and first start."""
    starts = canon["started_at"] if "started_at" in canon else pd.Series(pd.NaT, index=canon.index)
    first = starts.groupby(keys.journey_key(canon).to_numpy()).min()
    return pd.DataFrame({"journey": first.index.to_numpy(), "started_at": first.to_numpy()})


def _time_sides(client, canon, split_cfg: Mapping, seed: int) -> pd.Series:
    """`split.by=time` over all journeys: one row per journey gathered, ranked as locally."""
    table = pd.concat(client.gather(client.map(_journey_starts, canon)), ignore_index=True)
    journeys = pd.DataFrame(
        {
            "session_id": table["journey"],
            "journey_id": table["journey"],
            "started_at": table["started_at"],
        }
    )
    side = modelling.split_sessions(
        journeys, split_cfg["val_size"], split_cfg["test_size"], by="time", seed=seed
    )
    return pd.Series(side.to_numpy(), index=table["journey"].to_numpy())


def _with_split(
    canon: pd.DataFrame,
    val_size: float,
    test_size: float,
    by: str,
    seed: int,
    sides: pd.Series | None,
) -> pd.DataFrame:
    """The partition with its split side: by the journey hash here, or from `sides` (by time)."""
    if canon.empty:
        return canon.assign(**{SPLIT: pd.Series(dtype=object)})
    if sides is None:
        side = modelling.split_sessions(canon, val_size, test_size, by=by, seed=seed).to_numpy()
    else:
        side = sides.reindex(keys.journey_key(canon).to_numpy()).to_numpy()
    return canon.assign(**{SPLIT: side})


def _span_of(canon: pd.DataFrame) -> dict:
    """First and last start of a partition, and the first start among its test sessions."""
    starts = (
        pd.to_datetime(canon["started_at"], utc=True)
        if "started_at" in canon
        else pd.Series(pd.NaT, index=canon.index, dtype="datetime64[ns, UTC]")
    )
    test = (canon[SPLIT] == "test").to_numpy() if SPLIT in canon else np.zeros(len(canon), bool)
    return {"start": starts.min(), "end": starts.max(), "test_from": starts[test].min()}


def _counts(canon: pd.DataFrame) -> pd.DataFrame:
    """Rows per split side and class of one partition."""
    counts = canon.groupby([SPLIT, LABEL]).size()
    return pd.DataFrame(
        {
            "side": counts.index.get_level_values(0).astype(str),
            "label": counts.index.get_level_values(1).astype(str),
            "rows": counts.to_numpy(dtype=np.int64),
        }
    )


def _row_hashes(canon: pd.DataFrame) -> pd.DataFrame:
    """Each kept row's number and the hash `keys.data_fingerprint` takes of it."""
    hashes = keys.row_hashes(canon.drop(columns=EXTRA))
    return pd.DataFrame({ROW: canon[ROW].to_numpy(), "hash": hashes})


def _client_rows(canon: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """What the client needs of a partition: every validation and test row, and the training
    rows of a seeded sample of whole journeys (`fraction` of them)."""
    train = (canon[SPLIT] == "train").to_numpy()
    keep = ~train
    if fraction >= 1:
        keep[:] = True
    elif train.any():
        keep |= train & (keys.unit_hash(keys.journey_key(canon), f"#sample{seed}") < fraction)
    return canon[keep]


def _raw_rows(frame: pd.DataFrame, canon: pd.DataFrame, sides: tuple, head: int) -> pd.DataFrame:
    """The input rows (the user's columns) of the kept rows on `sides`, and of the partition's
    first `head` kept rows."""
    rows = canon[ROW]
    wanted = set(rows[canon[SPLIT].isin(sides)]) | set(rows.nsmallest(head))
    return frame[frame[ROW].isin(wanted)]


def _training_features(
    canon: pd.DataFrame, featurizer, classes: list[str], meta: pd.DataFrame
) -> pd.DataFrame:
    """Features and class codes of the partition's training rows."""
    train = canon[canon[SPLIT] == "train"]
    if train.empty:
        return meta
    features = featurizer.transform(train.drop(columns=EXTRA))
    return features.assign(**{TARGET: _codes(train[LABEL], classes)})


# -- client-side helpers -----------------------------------------------------------------------


def _codes(labels: pd.Series, classes: list[str]) -> np.ndarray:
    return pd.Categorical(labels, categories=classes).codes.astype(np.int32)


def _repeated_ids(client, raw, id_col: str | None) -> dict[str, int]:
    """Session ids found in more than one partition -> the input row of their first occurrence
    (every row counts, as in local training, whatever else is wrong with it)."""
    import dask.dataframe as dd

    if not id_col:
        return {}  # ids are row numbers: unique
    ids = dd.from_delayed(
        client.map(_partition_ids, raw, id_col=id_col),
        meta=_partition_ids(None, id_col),
        verify_meta=False,
    )
    counts = ids["session_id"].value_counts(split_out=max(1, ids.npartitions))
    repeated = counts[counts > 1].index.compute()
    if len(repeated) == 0:
        return {}
    rows = ids[ids["session_id"].isin(list(repeated))].compute()
    return rows.groupby("session_id")[ROW].min().to_dict()


def _partition_ids(frame: pd.DataFrame | None, id_col: str) -> pd.DataFrame:
    """The canonical session ids of a partition (missing ones left out) and their input rows."""
    if frame is None:
        return pd.DataFrame({"session_id": pd.Series(dtype=object), ROW: np.array([], np.int64)})
    ids = as_text(frame[id_col])
    present = ids.notna().to_numpy()
    return pd.DataFrame(
        {"session_id": ids[present].to_numpy(), ROW: frame[ROW].to_numpy()[present]}
    )


def _check_training_classes(stats: pd.DataFrame, classes: list[str], source: str) -> None:
    """`DaskLGBMClassifier` learns the classes it sees: every class needs training rows."""
    seen = set(stats.loc[(stats["side"] == "train") & (stats["rows"] > 0), "label"])
    missing = [c for c in classes if c not in seen]
    if missing:
        raise ValueError(
            f"{source}: class {missing[0]!r} has no training rows (data.label.classes = "
            f"{classes}); engine=dask needs every class in the training split"
        )


def _fingerprint(columns: pd.Index, hashes: list[pd.DataFrame]) -> str:
    """`keys.data_fingerprint` of the canonical sessions in input order, from row hashes."""
    table = pd.concat(hashes, ignore_index=True).sort_values(ROW, kind="stable")
    return keys.fingerprint_of_rows(columns, table["hash"].to_numpy())


def _as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns in pandas' default string dtype, as `io.readers.read_sessions` gives them (Dask reads
    them as `string[pyarrow]`), so the gate and the logged input example see the same frame."""
    nullable = {
        c: "str"
        for c, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA
    }
    return frame.astype(nullable) if nullable else frame


def _sorted(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True).sort_values(ROW, kind="stable")


def _sorted_rejects(frames: list[pd.DataFrame]) -> pd.DataFrame:
    rejects = pd.concat(frames, ignore_index=True)
    return rejects.sort_values(SOURCE_ROW, kind="stable").reset_index(drop=True)
