"""`micromoment promote`: score the challenger and the champion on the same held-out rows, apply
the gate, record the decision on the challenger's version, and move `champion` only when it passes
(the judgement itself is `tracking.promotion.gate`)."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.core.contract import DatasetSpec
from pipelines.core.gate import Decision
from pipelines.io.readers import read_sessions
from pipelines.stages.runner import EXIT_MODEL, UserError, command
from pipelines.tracking import runs
from pipelines.tracking.promotion import gate, holdout, policy_from
from pipelines.tracking.registry import resolve_version, why_unset


def run_promote(cfg: DictConfig) -> Decision:
    c = OmegaConf.to_container(cfg, resolve=True)
    runs.setup(c["tracking"])
    client = MlflowClient()
    name = c["registry"]["model_name"]
    challenger = resolve_version(client, name, c["promote"]["challenger"])
    if challenger is None:
        raise UserError(
            f"{name}@{c['promote']['challenger']}: {why_unset(name, c['promote']['challenger'])} "
            "(registry.model_name, promote.challenger)",
            EXIT_MODEL,
        )
    spec = DatasetSpec.from_config(c["data"])
    source = str(c["data"]["path"])
    rows, labels, fingerprint = holdout(
        read_sessions(source), spec, c["split"], int(c["runtime"]["seed"]), source
    )
    start = time.perf_counter()
    decision = gate(
        client,
        name,
        challenger,
        rows,
        labels,
        fingerprint,
        policy_from(c["gate"]),
        int(c["runtime"]["threads"]),
    )
    verdict = "promoted to champion" if decision.promote else "not promoted"
    champ = "none" if decision.champion_score is None else f"{decision.champion_score:.4f}"
    judged = len(rows) if decision.rows is None else decision.rows
    print(
        f"{name} version {challenger}: {verdict}\n"
        f"  {c['gate']['metric']}: challenger {decision.challenger_score:.4f}, champion {champ} on "
        f"{judged} of {len(rows)} held-out rows (data {fingerprint}, "
        f"{time.perf_counter() - start:.1f}s)\n"
        + (f"  {decision.fairness}\n" if decision.fairness else "")
        + f"  reason: {decision.reason}",
        flush=True,
    )
    return decision


main = command("promote")(run_promote)
