"""`micromoment generate`: synthetic journeys as partitioned parquet, with the Bayes-optimal posterior.

`generate` simulates the chunks one after another in this process; with `engine=dask`,
`pipelines.engines.dask.generate_dask` simulates them as parallel tasks on a cluster. Chunk `i`
draws from a random stream derived from `(seed, i)` only, so both write the same part files.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipelines.io.outputs import atomic_path, claim_output, mark_output
from pipelines.stages.runner import command
from pipelines.core.synthetic import GeneratorParams, generate_chunks, n_chunks

log = logging.getLogger(__name__)


def generate(gen_cfg: Mapping, params_cfg: Mapping) -> dict:
    """Write `<out_dir>/sessions/part-*.parquet` and `<out_dir>/stores.csv`; return a summary.

    Journeys are simulated and written a chunk at a time, so memory does not grow with size.
    Both outputs appear at once, complete, or not at all.
    """
    params = GeneratorParams.from_config(params_cfg)
    out = Path(gen_cfg["out_dir"])
    n_journeys, chunk = int(gen_cfg["n_journeys"]), int(gen_cfg["chunk_journeys"])
    parts = n_chunks(n_journeys, chunk)
    sessions = 0
    with atomic_path(out / "sessions", owner="generate") as tmp:
        tmp.mkdir(parents=True)
        chunks = generate_chunks(
            params, n_journeys, chunk, int(gen_cfg["seed"]), posterior=bool(gen_cfg["posterior"])
        )
        bar = tqdm(
            chunks, total=parts, desc="generate", unit="chunk", disable=not sys.stderr.isatty()
        )
        for i, df in enumerate(bar):
            df.to_parquet(tmp / part_name(i), index=False)
            sessions += len(df)
            if not sys.stderr.isatty():
                log.info("chunk %d/%d: %d sessions", i + 1, parts, len(df))
    write_stores(params, out)
    return {"journeys": n_journeys, "sessions": sessions, "parts": parts, "out_dir": str(out)}


def part_name(chunk: int) -> str:
    """The file name of chunk `chunk` under `<out_dir>/sessions/`."""
    return f"part-{chunk:05d}.parquet"


def write_stores(params: GeneratorParams, out: Path) -> None:
    """`<out>/stores.csv`: the generator's store coordinates, written atomically."""
    with atomic_path(out / "stores.csv") as tmp:
        params.stores_frame().to_csv(tmp, index=False)


def run_generate(cfg: DictConfig) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    # the folder is generate's own (it holds sessions/ and stores.csv), or new, or empty
    out = claim_output(container["generate"]["out_dir"], "generate")
    engine = container.get("engine") or {"name": "local"}
    if engine["name"] == "dask":
        from pipelines.engines.dask import cluster, generate_dask

        with cluster(engine) as client:
            summary = generate_dask(client, container["generate"], container["generator"])
    else:
        summary = generate(container["generate"], container["generator"])
    mark_output(out, "generate")
    print(
        f"wrote {summary['sessions']} sessions of {summary['journeys']} journeys to {summary['out_dir']}/sessions ({summary['parts']} parts)",
        flush=True,
    )
    return summary


@command("generate", tracking=False)
def main(cfg: DictConfig) -> None:
    run_generate(cfg)
