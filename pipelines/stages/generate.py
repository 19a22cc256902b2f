"""`micromoment generate`: synthetic journeys as partitioned parquet, with the Bayes-optimal posterior.

The configured engine simulates the chunks: one after another in this process (`engine=local`)
or as parallel tasks on a cluster (`engine=dask`). Chunk `i` draws from a random stream derived
from `(seed, i)` only, so both write the same part files.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipelines.engines import engine_for
from pipelines.io.outputs import claim_output, mark_output
from pipelines.stages.runner import command


def run_generate(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    # the folder is generate's own (it holds sessions/ and stores.csv), or new, or empty
    out = claim_output(c["generate"]["out_dir"], "generate")
    summary = engine_for(c["engine"]).generate(c["generate"], c["generator"])
    mark_output(out, "generate")
    print(
        f"wrote {summary['sessions']} sessions of {summary['journeys']} journeys to "
        f"{summary['out_dir']}/sessions ({summary['parts']} parts)",
        flush=True,
    )
    return summary


main = command("generate", tracking=False)(run_generate)
