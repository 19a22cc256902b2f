"""The champion/challenger judgement: both versions scored on the same held-out rows (only
journeys neither trained on), the gate's decision recorded on the challenger's version, and the
`champion` alias moved only when it passes."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines.core import drift, keys, modelling
from pipelines.core.contract import LABEL, DatasetSpec, to_contract
from pipelines.core.gate import Decision, GatePolicy, TrainingSpan, decide
from pipelines.tracking.registry import CHAMPION, load_scorer, resolve_version

log = logging.getLogger(__name__)


def holdout(
    raw: pd.DataFrame, spec: DatasetSpec, split_cfg: Mapping, seed: int, source: str
) -> tuple[pd.DataFrame, pd.Series, str]:
    """The held-out rows of a labelled table (its test split), their labels and a fingerprint."""
    contract = to_contract(raw, spec, source=source, with_label=True)
    side = modelling.split_sessions(contract.sessions, **split_cfg, seed=seed)
    test = (side == "test").to_numpy()
    rows = raw.iloc[contract.kept_rows[test]].reset_index(drop=True)
    labels = contract.sessions.loc[test, LABEL].reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            f"{source}: the held-out split is empty; the gate needs labelled rows to compare on"
        )
    return rows, labels, keys.data_fingerprint(contract.sessions[test])


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
    champion_version = resolve_version(client, name, CHAMPION)
    challenger, _ = load_scorer(f"models:/{name}/{challenger_version}", threads)
    notes = {"gate.rows_offered": str(len(rows))}
    contest = champion_version not in (None, challenger_version)
    if contest:
        unseen, notes["gate.fairness"] = unseen_rows(
            client, name, (challenger_version, champion_version), rows, challenger.spec
        )
        rows, labels = rows[unseen].reset_index(drop=True), labels[unseen].reset_index(drop=True)
    if contest and len(rows) < policy.min_holdout_rows:
        decision = Decision(
            False,
            f"only {len(rows)} held-out sessions are in journeys that neither version trained on, "
            f"fewer than gate.min_holdout_rows={policy.min_holdout_rows}: keeping the champion",
            math.nan,
            None,
            None,
            rows=len(rows),
            fairness=notes["gate.fairness"],
        )
        notes["gate.rows"] = str(len(rows))
    else:
        decision = judge(
            challenger, challenger_version, champion_version, rows, labels, policy, name, threads
        )
        notes["gate.rows"] = str(decision.rows)
        decision = replace(decision, fairness=notes.get("gate.fairness", ""))
    return record(
        client, name, challenger_version, champion_version, decision, policy, fingerprint, notes
    )


def judge(
    challenger,
    challenger_version: str,
    champion_version: str | None,
    rows: pd.DataFrame,
    labels: pd.Series,
    policy: GatePolicy,
    name: str,
    threads: int,
) -> Decision:
    """The gate's decision on `rows`: the challenger's metrics against the champion's (none yet:
    the policy decides on the challenger alone)."""
    classes = list(challenger.classes)
    ch_metrics = score_metrics(challenger, rows, labels, classes)
    judged = int(ch_metrics["rows"])
    if champion_version == challenger_version:
        score = ch_metrics[policy.metric]
        reason = f"version {challenger_version} is already the champion"
        return Decision(False, reason, score, score, 0.0, rows=judged)
    champ_metrics = None
    if champion_version is not None:
        champion, _ = load_scorer(f"models:/{name}/{champion_version}", threads)
        if list(champion.classes) != classes:
            raise ValueError(
                f"champion classes {list(champion.classes)} differ from the challenger's "
                f"{classes}; they cannot be compared"
            )
        champ_metrics = score_metrics(champion, rows, labels, classes)
    return replace(decide(policy, ch_metrics, champ_metrics, classes), rows=judged)


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


def record(
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


def policy_from(cfg: Mapping) -> GatePolicy:
    return GatePolicy(
        metric=cfg["metric"],
        min_improvement=float(cfg["min_improvement"]),
        max_class_f1_drop=float(cfg["max_class_f1_drop"]),
        min_holdout_rows=int(cfg["min_holdout_rows"]),
    )


def champion_drift(client, name: str, champion: str, window: pd.DataFrame) -> dict:
    """PSI of the window's features and predicted-intent mix against the champion's training data."""
    version = client.get_model_version(name, champion)
    try:
        reference = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/drift_reference.json")
    except Exception:
        return {"available": False, "reason": f"version {champion} has no drift_reference.json"}
    model, _ = load_scorer(f"models:/{name}/{champion}", threads=1)
    canon = to_contract(
        window, model.spec, source="window", with_label=False, all_columns=False
    ).sessions
    features = model.featurizer.transform(canon)
    per_feature = drift.feature_psi(reference["features"], features)
    proba = model.predict_features(features)
    predicted = pd.Series([reference["classes"][i] for i in proba.argmax(axis=1)])
    mix_psi = drift.psi(reference["intent_mix"], drift.intent_mix(predicted, reference["classes"]))
    top = sorted(per_feature.items(), key=lambda kv: -kv[1])
    return {
        "available": True,
        "intent_mix_psi": mix_psi,
        "max_feature_psi": top[0][1] if top else 0.0,
        "max_feature": top[0][0] if top else None,
        "features": dict(top),
    }
