"""What the model registry says about the model and each version, in words a consumer reads.

The registered model's description is its contract: what to pass, what comes back. A version's
description is its record: the data it learned from, how well it did, calibration and the gate's
decision. Versions registered by a sweep get theirs from their run (`describe_from_run`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines.core.gate import Decision, TrainingSpan

MAX_DESCRIPTION = 5000  # MLflow stores descriptions of at most this many characters
CONTRACT_ARTIFACT = "model_contract.json"  # `IntentModel.describe()`, logged with each train run
CALIBRATION_TAG = "calibration"  # what calibration decided, on each train run


def model_description(contract: Mapping, name: str) -> str:
    """The registered model's description, from the model contract (`IntentModel.describe()`)."""
    classes = list(contract["classes"])
    roles = {role: col for role, col in contract["columns"].items() if col}
    columns = ", ".join(f"`{col}` ({role})" for role, col in roles.items())
    pages = ", ".join(f"`{col}`" for col in contract["page_counts"].values())
    extras = [*contract.get("extra_numeric", []), *contract.get("extra_categorical", [])]
    inputs = [f"Input columns (role): {columns}." if columns else "Input columns:"]
    if pages:
        inputs.append(f"Page-type counts: {pages}.")
    if extras:
        inputs.append(
            "Further columns used as they are: " + ", ".join(f"`{c}`" for c in extras) + "."
        )
    required = (
        f"Only `{roles['session_id']}` is required"
        if "session_id" in roles
        else "No column is required (the row number is the session id)"
    )
    inputs.append(f"{required}; missing optional columns are scored without them.")
    lines = [
        f"Predicts the micro-moment intent of a web or app session ({', '.join(classes)}) "
        "from its context.",
        "",
        f'Load with `mlflow.pyfunc.load_model("models:/{name}@champion")` and pass raw sessions '
        "as a DataFrame; the model builds its own features.",
        "",
        " ".join(inputs),
        "",
        "Output: one row per input row, in order: `session_id`, "
        + ", ".join(f"`p_{c}`" for c in classes)
        + ", `intent`, `confidence`, `margin`, `reject_reason` (why a row was not scored), "
        "`model_name`, `model_version`. `params={'explain': k}` adds each row's top-k reasons.",
    ]
    return "\n".join(lines)[:MAX_DESCRIPTION]


def version_description(
    metrics: Mapping[str, float],
    dataset: str,
    fingerprint: str,
    span: TrainingSpan | None = None,
    calibration: str | None = None,
    decision: Decision | None = None,
) -> str:
    """A version's description: data window and rows, test metrics, the cross-validation
    interval when there is one, calibration, and the gate's decision."""
    m = metrics
    window = (
        f", sessions from {span.start} to {span.end}" if span is not None and span.start else ""
    )
    lines = [
        f"Trained on {dataset}: {int(m.get('data/rows_kept', 0)):,} sessions "
        f"({int(m.get('data/rows_rejected', 0)):,} rejected){window}; data fingerprint "
        f"{fingerprint}.",
        "Test split: "
        + ", ".join(
            f"{label} {m[key]:.4f}"
            for key, label in (
                ("test/accuracy", "accuracy"),
                ("test/macro_f1", "macro-F1"),
                ("test/logloss", "log-loss"),
                ("test/roc_auc_macro", "macro ROC-AUC"),
                ("test/ece", "ECE"),
            )
            if key in m
        )
        + ".",
    ]
    cv = _cv_line(m)
    if cv:
        lines.append(cv)
    if calibration:
        lines.append(f"Calibration: {calibration}.")
    if decision is not None:
        verdict = "promoted to @champion" if decision.promote else "kept the current @champion"
        lines.append(f"Gate: {verdict} ({decision.reason}).")
    return "\n".join(lines)[:MAX_DESCRIPTION]


def _cv_line(m: Mapping[str, float]) -> str:
    parts = []
    for key, label in (("accuracy", "accuracy"), ("logloss", "log-loss"), ("macro_f1", "macro-F1")):
        mean, low, high = (m.get(f"cv/{key}/{s}") for s in ("mean", "ci_low", "ci_high"))
        if mean is not None and low is not None:
            parts.append(f"{label} {mean:.4f} (95% interval {low:.4f} to {high:.4f})")
    if not parts:
        return ""
    return f"Cross-validation over {int(m.get('cv/folds', 0))} folds: " + ", ".join(parts) + "."


def describe_in_registry(name: str, version: str, contract: Mapping, version_text: str) -> None:
    """Write the model's contract and the version's record to the registry."""
    client = MlflowClient()
    client.update_registered_model(name, description=model_description(contract, name))
    client.update_model_version(name, str(version), description=version_text)


def describe_from_run(name: str, version: str, run_id: str) -> None:
    """Describe a version from the train run that logged it (a sweep registers its best job's
    model after the job's run has ended): its metrics, tags and logged model contract."""
    client = MlflowClient()
    run = client.get_run(run_id)
    tags = run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CONTRACT_ARTIFACT, tmp)
        contract = json.loads(Path(path).read_text())
    text = version_description(
        run.data.metrics,
        tags.get("dataset", "?"),
        tags.get("data_fingerprint", "?"),
        TrainingSpan.from_json(tags.get(TrainingSpan.TAG)),
        tags.get(CALIBRATION_TAG),
    )
    describe_in_registry(name, version, contract, text)
