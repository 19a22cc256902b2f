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
    """Raw sessions -> session_id, p_<intent>..., intent, confidence, margin, reject_reason."""

    def __init__(self, model: IntentModel):
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict(frame, source="model input")
