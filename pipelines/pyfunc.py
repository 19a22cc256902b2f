"""The registered MLflow model: a pyfunc wrapper around `IntentModel` that takes raw sessions."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.types.schema import AnyType, ColSpec, Schema

from pipelines.contract import ROLES
from pipelines.scorer import IntentModel

# outcomes are not read when scoring
_NOT_INPUTS = {"touchpoint", "touchpoint_propensity", "converted"}


def _col_type(kind: str):
    # Every column accepts any type: the session contract converts and checks types itself and
    # names the column when one is wrong. MLflow's own checks would refuse ordinary raw inputs
    # (a pandas tz-aware timestamp, int64 counts for a double, a browser code given as a number).
    return AnyType()


def input_schema(model: IntentModel) -> Schema:
    """Input columns by role: only the session id is required; every other role is optional."""
    spec = model.spec
    cols = []
    for role, col in spec.role_columns().items():
        if role in _NOT_INPUTS:
            continue
        cols.append(ColSpec(_col_type(ROLES[role]), col, required=role == "session_id"))
    cols += [ColSpec(AnyType(), col, required=False) for col in spec.page_counts.values()]
    cols += [ColSpec(AnyType(), col, required=False) for col in spec.extra_numeric]
    cols += [ColSpec(AnyType(), col, required=False) for col in spec.extra_categorical]
    return Schema(cols)


def signature_inputs(raw: pd.DataFrame, model: IntentModel) -> pd.DataFrame:
    """The columns of `raw` the model reads, as a JSON caller would send them (timestamps as text)."""
    out = {}
    for spec_col in input_schema(model).inputs:
        if spec_col.name not in raw.columns:
            continue
        v = raw[spec_col.name]
        if isinstance(v.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(v):
            v = v.map(lambda x: x.isoformat() if pd.notna(x) else None).astype(object)
        out[spec_col.name] = v
    return pd.DataFrame(out)


class IntentPyfunc(mlflow.pyfunc.PythonModel):
    """Raw sessions -> session_id, p_<intent>..., intent, confidence, margin, reject_reason,
    model_name, model_version.

    The registry assigns the version after the model is logged, so a model loaded from the registry
    looks its version up by run id when it is loaded; an exported model carries it in its config.
    """

    def __init__(
        self, model: IntentModel, model_name: str | None = None, model_version: str | None = None
    ):
        self.model = model
        self.model_name = model_name
        self.model_version = model_version

    def load_context(self, context) -> None:
        config = dict(getattr(context, "model_config", None) or {})
        self.model_name = config.get("model_name", self.model_name)
        self.model_version = config.get("model_version") or self.model_version
        if self.model_version is None and config.get("run_id") and self.model_name:
            self.model_version = _registered_version(self.model_name, config["run_id"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        version = None if self.model_version is None else str(self.model_version)
        return self.model.predict(
            frame,
            source="model input",
            extra={"model_name": self.model_name, "model_version": version},
        )


def _registered_version(name: str, run_id: str) -> str | None:
    """The registry version of `name` logged by `run_id`, or None when it cannot be found."""
    try:
        from mlflow.tracking import MlflowClient

        found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception:  # a consumer without a reachable registry still gets predictions
        return None
    return str(max(int(v.version) for v in found)) if found else None
