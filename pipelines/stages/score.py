"""`micromoment score`: batch-score sessions and journeys with a registered (or exported) model.

Input of any size streams through in bounded memory:
1. the input (a parquet file, a folder of parquet parts, or CSV) is read in record batches and
   each row is routed to one of N bucket files by a hash of its journey id, so every journey lands
   whole in one bucket whatever the input order;
2. each bucket is scored on its own (history features see the journey's earlier sessions) and its
   predictions are appended to the output.
Outputs appear atomically: `predictions/` (one row per scored session), `journeys.parquet` (one row
per journey: latest intent and the intent sequence), `rejects.parquet` (rows that broke the
contract, with the reason) and `summary.json`. Rows in = rows scored + rows rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipelines.core import contract
from pipelines.core.contract import REJECT_REASON, SOURCE_ROW, ContractError
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import EmptyInput, check_parts, input_files
from pipelines.stages.runner import command
from pipelines.core.scorer import IntentModel

log = logging.getLogger(__name__)


_CSV_READ = pacsv.ReadOptions(block_size=1 << 22)


def iter_batches(path: str | Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `batch_rows` rows from parquet files or CSV files."""
    files = input_files(Path(path))
    check_parts([f for f in files if f.suffix == ".parquet"])
    for f in files:
        if f.suffix == ".csv":
            reader = _open_csv(f)
            for batch in reader:
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
        else:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)


def _open_csv(path: Path):
    try:
        return pacsv.open_csv(path, read_options=_CSV_READ)
    except pa.ArrowInvalid as err:
        raise EmptyInput(f"{path}: cannot be read as CSV: {err}") from None


def count_rows(path: str | Path) -> int:
    """Row count: from parquet metadata, or for CSV by streaming through the files once (the
    bucket count follows from it, and with it the memory of scoring)."""
    files = input_files(Path(path))
    return sum(
        sum(b.num_rows for b in _open_csv(f))
        if f.suffix == ".csv"
        else pq.ParquetFile(f).metadata.num_rows
        for f in files
    )


class InputFingerprint:
    """A content hash of an input, folded batch by batch in input order (any batch sizes give
    the same hash): what proves a scores folder belongs to the input a later stage reads."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if self.rows == 0:
            self._hash.update(",".join(batch.schema.names).encode())
        rows = pd.util.hash_pandas_object(batch.to_pandas(), index=False).to_numpy()
        self._hash.update(rows.astype(np.uint64).tobytes())
        self.rows += batch.num_rows

    def hexdigest(self) -> str:
        return f"{self.rows}:{self._hash.hexdigest()[:24]}"


def input_fingerprint(path: str | Path, batch_rows: int = 250_000) -> str:
    """The `InputFingerprint` of a whole input (the one `score_file` records in its summary)."""
    fp = InputFingerprint()
    for batch in iter_batches(path, batch_rows):
        fp.add(batch)
    return fp.hexdigest()


def absent_columns(spec, names: list[str], source: str) -> list[str]:
    """Warn about each mapped optional column missing from an input (it is scored without it),
    naming a column that differs only in case or spelling; refuse an input with none of them."""
    import difflib

    absent = contract.absent_columns(spec, names)
    contract.check_any_present(spec, names, source)
    plain = {re.sub(r"[^a-z0-9]", "", n.lower()): n for n in names}
    for col in absent:
        key = re.sub(r"[^a-z0-9]", "", col.lower())
        near = [plain[k] for k in difflib.get_close_matches(key, list(plain), n=1, cutoff=0.8)]
        hint = f" (found '{near[0]}': map it in data.columns)" if near else ""
        log.warning("%s: mapped column '%s' is missing; scored without it%s", source, col, hint)
    return absent


def bucket_of(journeys: pd.Series, n_buckets: int) -> np.ndarray:
    """The bucket of each journey id: a stable hash, so a journey lands whole in one bucket."""
    h = pd.util.hash_pandas_object(journeys.astype(str), index=False).to_numpy()
    return (h % np.uint64(n_buckets)).astype(np.int64)


def check_accounting(rows_in: int, scored: int, rejected: int) -> None:
    """Rows in = rows scored + rows rejected, or the run fails before its output appears."""
    if rows_in != scored + rejected:
        raise RuntimeError(
            f"row accounting broke: {rows_in} in, {scored} scored, {rejected} rejected"
        )


def journey_summary(pred: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per journey: its latest session's intent and probabilities, and the intent sequence."""
    if pred.empty:
        cols = [
            "journey_id",
            "sessions",
            "latest_session_id",
            "latest_started_at",
            "intent",
            *[f"p_{c}" for c in classes],
            "intent_sequence",
        ]
        return pd.DataFrame(columns=cols)
    order = pred.sort_values(
        ["journey_id", "started_at", "session_id"], kind="mergesort", na_position="last"
    )
    grouped = order.groupby("journey_id", sort=False)
    latest = grouped.tail(1).set_index("journey_id")
    out = pd.DataFrame(
        {
            "journey_id": latest.index,
            "sessions": grouped.size().reindex(latest.index).to_numpy(),
            "latest_session_id": latest["session_id"].to_numpy(),
            "latest_started_at": latest["started_at"].array,
            "intent": latest["intent"].to_numpy(),
        }
    )
    for c in classes:
        out[f"p_{c}"] = latest[f"p_{c}"].to_numpy()
    out["intent_sequence"] = (
        grouped["intent"].agg(lambda s: ">".join(map(str, s))).reindex(latest.index).to_numpy()
    )
    return out


def score_file(
    model: IntentModel,
    input_path: str | Path,
    out_dir: str | Path,
    chunk_rows: int = 250_000,
    model_info: Mapping | None = None,
    progress: bool | None = None,
) -> dict:
    """Score every session of `input_path` into `out_dir`; returns the summary (counts, timings)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number, got {chunk_rows}")
    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    spec = model.spec
    journey_col = spec.columns.get("journey_id")
    started_col = spec.columns.get("started_at")
    total = count_rows(input_path)
    n_buckets = max(1, math.ceil((total or chunk_rows) / chunk_rows))
    progress = sys.stderr.isatty() if progress is None else progress
    info = dict(model_info or {})
    classes = list(model.classes)

    with atomic_path(out_dir, owner="score") as work:
        work.mkdir(parents=True)
        buckets_dir = work / "_buckets"
        buckets_dir.mkdir()
        # pass 1: route rows to buckets by journey, remembering each row's position in the input
        writers: dict[int, pq.ParquetWriter] = {}
        rows_in = 0
        fingerprint = InputFingerprint()
        absent: list[str] | None = None
        try:
            for batch in iter_batches(input_path, chunk_rows):
                if absent is None:
                    absent = absent_columns(spec, batch.schema.names, str(input_path))
                fingerprint.add(batch)
                n = batch.num_rows
                row = pa.array(np.arange(rows_in, rows_in + n, dtype=np.int64))
                batch = pa.RecordBatch.from_arrays(
                    [*batch.columns, row], names=[*batch.schema.names, "__row"]
                )
                if journey_col and journey_col in batch.schema.names:
                    key = batch.column(journey_col).to_pandas().astype(object)
                    key = key.where(
                        key.notna(), pd.Series(np.arange(rows_in, rows_in + n)).astype(str)
                    )
                else:
                    key = pd.Series(np.arange(rows_in, rows_in + n)).astype(str)
                rows_in += n
                bucket = bucket_of(key, n_buckets)
                for b in np.unique(bucket):
                    part = pa.Table.from_batches(
                        [batch.take(pa.array(np.flatnonzero(bucket == b)))]
                    )
                    if b not in writers:
                        writers[b] = pq.ParquetWriter(
                            buckets_dir / f"bucket-{b:05d}.parquet", part.schema
                        )
                    writers[b].write_table(part.cast(writers[b].schema))
        finally:
            for w in writers.values():
                w.close()
        if rows_in == 0:
            raise ContractError(f"{input_path}: holds no sessions")

        # pass 2: score bucket by bucket
        pred_dir = work / "predictions"
        pred_dir.mkdir()
        rejects_writer = None
        rows_scored = rows_rejected = 0
        # journey summaries are appended bucket by bucket: holding them all would grow with input
        journeys_writer = None
        n_journeys = 0
        bucket_files = sorted(buckets_dir.glob("bucket-*.parquet"))
        bar = tqdm(total=rows_in, desc="score", unit="rows", disable=not progress)
        for i, bf in enumerate(bucket_files):
            frame = pd.read_parquet(bf)
            rows = frame.pop("__row").to_numpy()
            out = model.predict(frame, source=str(input_path), row_numbers=rows)
            bad = out[REJECT_REASON].notna().to_numpy()
            scored = out[~bad].drop(columns=[REJECT_REASON]).copy()
            scored.insert(
                1,
                "journey_id",
                frame[journey_col].astype(str).to_numpy()[~bad]
                if journey_col and journey_col in frame
                else scored["session_id"].to_numpy(),
            )
            if started_col and started_col in frame:
                scored.insert(
                    2,
                    "started_at",
                    pd.to_datetime(
                        frame[started_col], utc=True, errors="coerce", format="ISO8601"
                    ).array[~bad],
                )
            else:
                scored.insert(2, "started_at", pd.NaT)
            for key, value in info.items():
                scored[key] = value
            scored["input_row"] = rows[~bad]
            scored.to_parquet(pred_dir / f"part-{i:05d}.parquet", index=False)
            part = journey_summary(scored, classes)
            if len(part):
                for key, value in info.items():
                    part[key] = value
                with warnings.catch_warnings():
                    # pyarrow reads tz-aware columns through Series.values, which pandas 3.1 flags
                    warnings.filterwarnings("ignore", "Series.values", DeprecationWarning)
                    table = pa.Table.from_pandas(part, preserve_index=False)
                if journeys_writer is None:
                    journeys_writer = pq.ParquetWriter(work / "journeys.parquet", table.schema)
                journeys_writer.write_table(table.cast(journeys_writer.schema))
                n_journeys += len(part)
            if bad.any():
                rejected = frame[bad].copy()
                rejected[REJECT_REASON] = out.loc[bad, REJECT_REASON].to_numpy()
                rejected[SOURCE_ROW] = rows[bad]
                table = pa.Table.from_pandas(
                    rejected.astype(
                        {c: "string" for c in rejected.columns if rejected[c].dtype == object}
                    ),
                    preserve_index=False,
                )
                if rejects_writer is None:
                    rejects_writer = pq.ParquetWriter(work / "rejects.parquet", table.schema)
                rejects_writer.write_table(table.cast(rejects_writer.schema))
            rows_scored += int((~bad).sum())
            rows_rejected += int(bad.sum())
            bar.update(len(frame))
            if not progress:
                log.info(
                    "bucket %d/%d scored: %d rows so far of %d",
                    i + 1,
                    len(bucket_files),
                    rows_scored + rows_rejected,
                    rows_in,
                )
            bf.unlink()
        bar.close()
        if rejects_writer is not None:
            rejects_writer.close()
        buckets_dir.rmdir()
        if journeys_writer is not None:
            journeys_writer.close()
        else:
            empty = journey_summary(pd.DataFrame(), classes)
            for key, value in info.items():
                empty[key] = value
            empty.to_parquet(work / "journeys.parquet", index=False)
        check_accounting(rows_in, rows_scored, rows_rejected)
        summary = {
            "input": str(input_path),
            "output": str(out_dir),
            "rows_in": rows_in,
            "rows_scored": rows_scored,
            "rows_rejected": rows_rejected,
            "journeys": n_journeys,
            "input_fingerprint": fingerprint.hexdigest(),
            "missing_columns": absent or [],
            "missing_columns_count": len(absent or []),
            "buckets": len(bucket_files),
            "seconds": round(time.perf_counter() - start, 3),
            **{k: (None if v is None else str(v)) for k, v in info.items()},
        }
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_scorer(uri: str, threads: int) -> tuple[IntentModel, dict]:
    """The `IntentModel` behind a registered model URI (`models:/name@alias`, `models:/name/3`) or a
    model folder, with its name and version."""
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(uri)
    wrapper = pyfunc.unwrap_python_model()
    model: IntentModel = wrapper.model
    model.threads = threads
    return model, {
        "model_name": wrapper.model_name,
        "model_version": wrapper.model_version,
        "model_uri": uri,
    }


def needs_tracking(model_uri: str) -> bool:
    """True for a registry or run URI; False for a model folder, which loads with no server."""
    return model_uri.startswith(("models:/", "runs:/"))


def run_score(cfg: DictConfig) -> dict:
    from pipelines.stages import runner
    from pipelines.tracking.runs import runs as tracking

    c = OmegaConf.to_container(cfg, resolve=True)
    uri = str(c["score"]["model_uri"])
    claim_output(c["score"]["output"], "score", inputs=(c["score"]["input"], uri))
    if needs_tracking(uri):
        runner.check_tracking(tracking.resolve_tracking_uri(c["tracking"].get("uri")))
        tracking.setup(c["tracking"])
    elif "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: no such model folder (score.model_uri)")
    engine = c.get("engine") or {"name": "local"}
    if engine["name"] == "dask":
        import mlflow

        from pipelines.engines.dask import cluster, score_dask

        with cluster(engine) as client:
            summary = score_dask(
                client,
                c["score"]["model_uri"],
                c["score"]["input"],
                c["score"]["output"],
                partitions=engine.get("partitions"),
                threads=int(c["runtime"]["threads"]),
                tracking_uri=mlflow.get_tracking_uri() if needs_tracking(uri) else None,
            )
        info = summary
    else:
        model, info = load_scorer(c["score"]["model_uri"], int(c["runtime"]["threads"]))
        summary = score_file(
            model,
            c["score"]["input"],
            c["score"]["output"],
            chunk_rows=int(c["score"]["chunk_rows"]),
            model_info=info,
        )
    print(
        f"scored {summary['rows_scored']} of {summary['rows_in']} sessions ({summary['rows_rejected']} rejected) "
        f"in {summary['journeys']} journeys with {info['model_name']} version {info['model_version']} -> {summary['output']}"
        + (
            f"\n  {summary['missing_columns_count']} mapped columns missing from the input, "
            f"scored without them: {', '.join(summary['missing_columns'])}"
            if summary.get("missing_columns_count")
            else ""
        ),
        flush=True,
    )
    return summary


@command("score", tracking=False)
def main(cfg: DictConfig) -> None:
    run_score(cfg)
