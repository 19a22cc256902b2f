"""`micromoment promote`, `rollback` and `export`: the registry side of the scorer.

- promote: score challenger and champion on the same held-out rows, apply the gate, record the
  decision as tags on the challenger's version, and move the `champion` alias only when it passes.
- rollback: point `champion` back at an earlier version (by default the one it replaced).
- export: write a registered model as a standalone MLflow model folder under `models/`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.core import modelling
from pipelines.core.contract import LABEL, DatasetSpec, to_contract
from pipelines.core.gate import Decision, GatePolicy, TrainingSpan, decide
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import read_sessions
from pipelines.stages.runner import EXIT_MODEL, UserError, command

log = logging.getLogger(__name__)
CHAMPION = "champion"


def resolve_version(client: MlflowClient, name: str, ref: str | int) -> str | None:
    """A version number from an alias or a number; None when the alias is not set."""
    ref = str(ref)
    if ref.isdigit():
        client.get_model_version(name, ref)  # raises when it does not exist
        return ref
    try:
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException:
        return None


def holdout(
    raw: pd.DataFrame, spec: DatasetSpec, split_cfg: Mapping, seed: int, source: str
) -> tuple[pd.DataFrame, pd.Series, str]:
    """The held-out rows of a labelled table (its test split), their labels and a fingerprint."""
    contract = to_contract(raw, spec, source=source, with_label=True)
    side = modelling.split_sessions(
        contract.sessions,
        split_cfg["val_size"],
        split_cfg["test_size"],
        by=split_cfg["by"],
        seed=seed,
    )
    test = (side == "test").to_numpy()
    rows = raw.iloc[contract.kept_rows[test]].reset_index(drop=True)
    labels = contract.sessions.loc[test, LABEL].reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            f"{source}: the held-out split is empty; the gate needs labelled rows to compare on"
        )
    return rows, labels, modelling.data_fingerprint(contract.sessions[test])


def score_metrics(
    model, rows: pd.DataFrame, labels: pd.Series, classes: list[str]
) -> dict[str, float]:
    out = model.predict(rows, source="held-out data")
    ok = out["reject_reason"].isna().to_numpy()
    if not ok.any():
        raise ValueError(
            "the model rejected every held-out row; check its input mapping against the data"
        )
    proba = out.loc[ok, [f"p_{c}" for c in classes]].to_numpy(dtype=float)
    y = pd.Categorical(labels[ok], categories=classes).codes
    metrics = modelling.classification_metrics(y, proba, classes)
    metrics["rows"] = float(ok.sum())
    return metrics


def gate(
    client: MlflowClient,
    name: str,
    challenger_version: str,
    rows: pd.DataFrame,
    labels: pd.Series,
    fingerprint: str,
    policy: GatePolicy,
    threads: int = 1,
) -> Decision:
    """Compare a challenger version with the champion on the same rows; promote if it passes."""
    from pipelines.stages.score import load_scorer

    champion_version = resolve_version(client, name, CHAMPION)
    challenger, _ = load_scorer(f"models:/{name}/{challenger_version}", threads)
    classes = list(challenger.classes)
    fairness = {"gate.rows_offered": str(len(rows))}
    if champion_version not in (None, challenger_version):
        unseen, fairness["gate.fairness"] = unseen_rows(
            client, name, (challenger_version, champion_version), rows, challenger.spec
        )
        rows = rows[unseen].reset_index(drop=True)
        labels = labels[unseen].reset_index(drop=True)
    if champion_version not in (None, challenger_version) and len(rows) < policy.min_holdout_rows:
        decision = Decision(
            False,
            f"only {len(rows)} held-out sessions are in journeys that neither version trained on, "
            f"fewer than gate.min_holdout_rows={policy.min_holdout_rows}: keeping the champion",
            math.nan,
            None,
            None,
            rows=len(rows),
            fairness=fairness["gate.fairness"],
        )
        return _record(
            client,
            name,
            challenger_version,
            champion_version,
            decision,
            policy,
            fingerprint,
            {**fairness, "gate.rows": str(len(rows))},
        )
    ch_metrics = score_metrics(challenger, rows, labels, classes)
    champ_metrics = None
    if champion_version == challenger_version:
        decision = Decision(
            False,
            f"version {challenger_version} is already the champion",
            ch_metrics[policy.metric],
            ch_metrics[policy.metric],
            0.0,
        )
    else:
        if champion_version is not None:
            champion, _ = load_scorer(f"models:/{name}/{champion_version}", threads)
            if list(champion.classes) != classes:
                raise ValueError(
                    f"champion classes {list(champion.classes)} differ from the challenger's {classes}; they cannot be compared"
                )
            champ_metrics = score_metrics(champion, rows, labels, classes)
        decision = decide(policy, ch_metrics, champ_metrics, classes)

    fairness["gate.rows"] = str(int(ch_metrics["rows"]))
    decision = replace(
        decision, rows=int(ch_metrics["rows"]), fairness=fairness.get("gate.fairness", "")
    )
    return _record(
        client, name, challenger_version, champion_version, decision, policy, fingerprint, fairness
    )


def unseen_rows(
    client: MlflowClient, name: str, versions: tuple[str, ...], rows: pd.DataFrame, spec
) -> tuple[np.ndarray, str]:
    """Which of `rows` (raw) are in journeys that none of `versions` trained or early-stopped on,
    from the training span each version recorded, and a note on how that was decided."""
    canon = to_contract(rows, spec, source="held-out data", with_label=False, all_columns=False)
    keep = np.zeros(len(rows), dtype=bool)
    keep[canon.kept_rows] = True
    unknown = []
    for version in versions:
        span = TrainingSpan.from_json(
            client.get_model_version(name, version).tags.get(TrainingSpan.TAG)
        )
        if span is None:
            unknown.append(version)
            continue
        keep[canon.kept_rows] &= ~span.seen(canon.sessions)
    note = (
        f"versions {', '.join(unknown)} recorded no training span: rows they may have trained on "
        "could not be excluded"
        if unknown
        else "judged only on journeys neither version trained or early-stopped on"
    )
    if unknown:
        log.warning("gate: %s", note)
    return keep, note


def _record(
    client: MlflowClient,
    name: str,
    challenger_version: str,
    champion_version: str | None,
    decision: Decision,
    policy: GatePolicy,
    fingerprint: str,
    extra: Mapping[str, str],
) -> Decision:
    """Record the decision as tags on the challenger's version; move the alias if it passed."""
    tags = {
        "gate.decision": "promoted" if decision.promote else "kept_champion",
        "gate.reason": decision.reason[:5000],
        "gate.metric": policy.metric,
        "gate.challenger_score": ""
        if not math.isfinite(decision.challenger_score)
        else f"{decision.challenger_score:.6f}",
        "gate.champion_score": ""
        if decision.champion_score is None
        else f"{decision.champion_score:.6f}",
        "gate.champion_version": champion_version or "",
        "gate.data_fingerprint": fingerprint,
        "gate.evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger_version, key, value)
    if decision.promote:
        if champion_version is not None:
            client.set_model_version_tag(
                name, challenger_version, "gate.previous_champion", champion_version
            )
        client.set_registered_model_alias(name, CHAMPION, challenger_version)
    log.info("gate: %s (%s)", tags["gate.decision"], decision.reason)
    return decision


def rollback(
    client: MlflowClient, name: str, to_version: str | int | None = None
) -> tuple[str | None, str]:
    """Point `champion` at `to_version`, or at the version the current champion replaced."""
    current = resolve_version(client, name, CHAMPION)
    if to_version is None:
        if current is None:
            raise ValueError(f"{name} has no champion to roll back from")
        previous = client.get_model_version(name, current).tags.get("gate.previous_champion")
        if not previous:
            raise ValueError(
                f"{name} version {current} replaced no earlier champion; name one with rollback.to_version=N"
            )
        to_version = previous
    target = resolve_version(client, name, to_version)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, target, "rollback.from_version", current or "")
    client.set_model_version_tag(
        name, target, "rollback.at", datetime.now(UTC).isoformat(timespec="seconds")
    )
    return current, target


def export(model_uri: str, out_dir: str | Path) -> Path:
    """Write a registered model as a standalone MLflow model folder that loads by path."""
    import tempfile

    import mlflow

    from pipelines.tracking.runs import model_files, requirements

    source = mlflow.artifacts.download_artifacts(model_uri)
    pyfunc = mlflow.pyfunc.load_model(source)
    example = pyfunc.metadata.load_input_example(source)
    wrapper = pyfunc.unwrap_python_model()
    if wrapper.model_version is None and model_uri.startswith("models:/"):
        # loaded from a local copy: ask the registry which version the URI names
        from mlflow.tracking import MlflowClient

        ref = model_uri.removeprefix("models:/")
        name_part, _, alias = ref.partition("@")
        name_part, _, number = name_part.partition("/")
        client = MlflowClient()
        wrapper.model_version = number or str(
            client.get_model_version_by_alias(name_part, alias).version
        )
        wrapper.model_name = wrapper.model_name or name_part
    name, version = wrapper.model_name or "micro_moment_intent", wrapper.model_version
    target = claim_output(Path(out_dir) / (f"{name}-v{version}" if version else name), "export")
    with atomic_path(target, owner="export") as tmp, tempfile.TemporaryDirectory() as files:
        # written as data plus code, whatever format the registered version was logged in
        mlflow.pyfunc.save_model(
            path=str(tmp),
            **model_files(wrapper.model, files),
            signature=pyfunc.metadata.signature,
            input_example=example,
            pip_requirements=requirements(),
            model_config={"model_name": name, "model_version": version},
        )
        (tmp / "export.json").write_text(
            json.dumps(
                {
                    "model_name": name,
                    "model_version": version,
                    "source": model_uri,
                    "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
        )
    return target


def policy_from(cfg: Mapping) -> GatePolicy:
    return GatePolicy(
        metric=cfg["metric"],
        min_improvement=float(cfg["min_improvement"]),
        max_class_f1_drop=float(cfg["max_class_f1_drop"]),
        min_holdout_rows=int(cfg.get("min_holdout_rows", 200)),
    )


def run_promote(cfg: DictConfig) -> Decision:
    from pipelines.tracking.runs import runs as tracking

    c = OmegaConf.to_container(cfg, resolve=True)
    tracking.setup(c["tracking"])
    client = MlflowClient()
    name = c["registry"]["model_name"]
    challenger = resolve_version(client, name, c["promote"]["challenger"])
    if challenger is None:
        raise UserError(
            f"{name} has no version with alias '{c['promote']['challenger']}'", EXIT_MODEL
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


def run_rollback(cfg: DictConfig) -> str:
    from pipelines.tracking.runs import runs as tracking

    c = OmegaConf.to_container(cfg, resolve=True)
    tracking.setup(c["tracking"])
    name = c["registry"]["model_name"]
    current, target = rollback(MlflowClient(), name, c["rollback"]["to_version"])
    print(f"{name}: champion moved from version {current} to version {target}", flush=True)
    return target


def run_export(cfg: DictConfig) -> Path:
    from pipelines.tracking.runs import runs as tracking

    c = OmegaConf.to_container(cfg, resolve=True)
    tracking.setup(c["tracking"])
    path = export(c["export"]["model_uri"], c["export"]["out_dir"])
    print(
        f"exported {c['export']['model_uri']} to {path} (load it with mlflow.pyfunc.load_model('{path}'))",
        flush=True,
    )
    return path


@command("promote")
def main(cfg: DictConfig) -> None:
    run_promote(cfg)


@command("rollback")
def rollback_main(cfg: DictConfig) -> None:
    run_rollback(cfg)


@command("export")
def export_main(cfg: DictConfig) -> None:
    run_export(cfg)
