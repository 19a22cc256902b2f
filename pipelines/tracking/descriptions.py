"""What the model registry says about the model and each version, in words a consumer reads.

The registered model's description is its contract: what to pass, what comes back. A version's
description is its record: the data it learned from, how well it did, and the gate's decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.tracking import MlflowClient

from pipelines.core.gate import Decision
from pipelines.core.scorer import IntentModel
from pipelines.core.training import TrainResult

MAX_DESCRIPTION = 5000  # MLflow stores descriptions of at most this many characters


def model_description(model: IntentModel, name: str) -> str:
    """The registered model's description, from the model contract."""
    spec = model.describe()
    columns = ", ".join(f"`{col}` ({role})" for role, col in spec["columns"].items() if col)
    pages = ", ".join(f"`{col}`" for col in spec["page_counts"].values())
    classes = ", ".join(spec["classes"])
    lines = [
        f"Predicts the micro-moment intent of a web or app session ({classes}) from its context.",
        "",
        f'Load with `mlflow.pyfunc.load_model("models:/{name}@champion")` and pass raw sessions '
        "as a DataFrame; the model builds its own features.",
        "",
        f"Input columns (role): {columns}."
        + (f" Page-type counts: {pages}." if pages else "")
        + " Only the session id is required; missing optional columns are scored without them.",
        "",
        "Output: one row per input row, in order: `session_id`, "
        + ", ".join(f"`p_{c}`" for c in spec["classes"])
        + ", `intent`, `confidence`, `margin`, `reject_reason` (why a row was not scored), "
        "`model_name`, `model_version`. `params={'explain': k}` adds each row's top-k reasons.",
    ]
    return "\n".join(lines)[:MAX_DESCRIPTION]


def version_description(result: TrainResult, dataset: str, decision: Decision | None = None) -> str:
    """A version's description: data window and rows, test metrics, the cross-validation
    interval when there is one, calibration, and the gate's decision."""
    m = result.metrics
    span = result.span
    window = (
        f", sessions from {span.start} to {span.end}" if span is not None and span.start else ""
    )
    lines = [
        f"Trained on {dataset}: {int(m.get('data/rows_kept', 0)):,} sessions "
        f"({int(m.get('data/rows_rejected', 0)):,} rejected){window}; data fingerprint "
        f"{result.fingerprint}.",
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
    if result.calibration:
        lines.append(f"Calibration: {result.calibration.get('reason', 'none')}.")
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


def describe_in_registry(
    name: str, version: str, result: TrainResult, dataset: str, decision: Decision | None
) -> None:
    """Write both descriptions to the registry."""
    client = MlflowClient()
    client.update_registered_model(name, description=model_description(result.model, name))
    client.update_model_version(
        name, str(version), description=version_description(result, dataset, decision)
    )
