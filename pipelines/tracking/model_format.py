"""The model format: the registered MLflow model is a pyfunc around `IntentModel` that takes raw
sessions, logged as data plus code (the booster as LightGBM text, the fitted state as JSON, read
by `model_code.py`: MLflow's models-from-code), so loading it runs no pickle."""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from pipelines.core.contract import ROLES, ContractError
from pipelines.core.scorer import IntentModel, check_explain, load_model, save_model
from pipelines.tracking.runs import PACKAGE_DIR

# outcomes are not read when scoring
_NOT_INPUTS = {"touchpoint", "touchpoint_propensity", "converted"}


def _col_type(kind: str):
    # Every column accepts any type: the session contract converts and checks types itself and
    # names the column when one is wrong. MLflow's own checks would refuse ordinary raw inputs
    # (a pandas tz-aware timestamp, int64 counts for a double, a browser code given as a number).
    return AnyType()


def input_schema(model: IntentModel) -> Schema:
    """Input columns by role, every one optional to MLflow.

    The session id is required, but by the session contract inside `predict`, not by the schema:
    MLflow's own refusal of a missing column quotes the whole request back to the caller.
    """
    spec = model.spec
    cols = []
    for role, col in spec.role_columns().items():
        if role in _NOT_INPUTS:
            continue
        cols.append(ColSpec(_col_type(ROLES[role]), col, required=False))
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


class InputRejected(MlflowException, ContractError):
    """A request the session contract cannot read at all (a missing session id, a column of the
    wrong type): HTTP 400 from `mlflow models serve`, a `ContractError` in process.

    MLflow's scoring server rewrites the message of any MlflowException from `predict` as
    "Failed to predict data '<the whole input frame>'. Error: <message>" (a newline before
    "Error"), which sends the request back to the caller. The message therefore keeps only what
    follows MLflow's last "Error: " marker: the contract's message, which names the column and
    shows at most three of its values. Any other exception would reach the caller as MLflow's
    "unexpected error" with a server traceback instead of the column.
    """

    _MLFLOW_PREFIX_END = "\nError: "

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = str(value).rpartition(self._MLFLOW_PREFIX_END)[2]


class IntentPyfunc(mlflow.pyfunc.PythonModel):
    """Raw sessions -> session_id, p_<intent>..., intent, confidence, margin, reject_reason,
    model_name, model_version.

    Missing values are `pd.NA`, never NaN: the probability, `confidence` and `margin` columns are
    pandas' nullable `Float64` (numbers for scored rows, `<NA>` for rejected ones) and the text
    columns (`session_id`, `intent`, `reject_reason`, `model_name`, `model_version`) are `string`
    (`<NA>` where there is nothing to say: the reason of a scored row, the intent of a rejected
    one). MLflow's scoring server answers `<NA>` with JSON `null`; a float64 or pandas-3 `str`
    column would answer NaN with a bare `NaN`, which most JSON parsers refuse. In process the
    columns stay numeric: `out["p_buy"] > 0.5`, sums and means work as on float64 (a comparison
    with `<NA>` is `<NA>`, which a filter treats as False); `.astype(float)` gives float64 with NaN.

    An input the contract cannot read at all raises `InputRejected` (a `ContractError`).

    `params={"explain": k}` adds each scored row's top-k reasons toward its predicted intent:
    `reason_1`..`reason_k` (the session's value in words, with its contribution to the raw
    score) and `reasons` (the same as JSON), from LightGBM's exact contributions. Explaining costs
    more than scoring, so it is off unless asked for.

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
        try:
            explain = check_explain((params or {}).get("explain"))
        except ValueError as err:
            raise InputRejected(f"params: {err}") from None
        try:
            return self.model.predict(
                frame,
                source="model input",
                extra={"model_name": self.model_name, "model_version": version},
                nullable=True,
                explain=explain,
            )
        except ContractError as err:
            raise InputRejected(str(err)) from err


def _registered_version(name: str, run_id: str) -> str | None:
    """The registry version of `name` logged by `run_id`, or None when it cannot be found."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception:  # a consumer without a reachable registry still gets predictions
        return None
    return str(max(int(v.version) for v in found)) if found else None


# "auto" (default): compiled trees when the model is compiled on this machine already;
# "1": compile on load (a large model takes minutes the first time); "0": LightGBM
COMPILED_TREES_ENV = "MICROMOMENT_COMPILED_TREES"


class IntentFromFiles(IntentPyfunc):
    """The registered model as data plus this code: `load_context` reads the booster (LightGBM
    text) and the featurizer's state (JSON) from the model's `model` artifact, so loading a
    version runs no pickle. `pipelines/tracking/model_code.py` is the file MLflow loads it from.

    Loading uses the booster compiled (`core.compiled`) when this model is compiled on this
    machine already (batch scoring of a large input compiles and caches it), and LightGBM
    otherwise: a load never waits minutes for a first compile, nor leaves a compiler running
    when the process exits. `MICROMOMENT_COMPILED_TREES=1` compiles on load (a server that
    will answer many calls), `0` keeps LightGBM."""

    def __init__(self) -> None:
        super().__init__(model=None)

    def load_context(self, context) -> None:

        self.model = load_model(context.artifacts["model"])
        mode = os.environ.get(COMPILED_TREES_ENV, "auto")
        # "1": compile now; "auto": only a model compiled on this machine already
        if mode == "1" or (mode != "0" and self.model.worth_compiling(rows=0, min_rows=1)):
            self.model.use_compiled_trees()
        super().load_context(context)


def log_intent_model(
    model: IntentModel,
    input_example: pd.DataFrame,
    registered_name: str | None,
    model_name: str | None = None,
):
    """Log the scorer as a pyfunc model that takes raw sessions; register it when a name is given.

    `model_name` (default: `registered_name`) is the registered name the model reports once it
    is registered later (a sweep registers its best job when the sweep ends).
    """
    run = mlflow.active_run()
    model_name = model_name or registered_name
    wrapper = IntentPyfunc(model, model_name=model_name)
    example = signature_inputs(input_example.reset_index(drop=True), model)
    output = wrapper.predict(None, example)
    signature = ModelSignature(
        inputs=input_schema(model),
        outputs=infer_signature(output).inputs,
        params=ParamSchema([ParamSpec("explain", "long", 0)]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name="model",
            **model_files(model, tmp),
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=requirements(),
            model_config={"model_name": model_name, "run_id": run.info.run_id if run else None},
        )
    return info


def model_files(model: IntentModel, tmp: str | os.PathLike) -> dict:
    """The arguments that log or save `model` as data plus code: its files (`save_model`) as the
    `model` artifact, loaded by `pipelines/tracking/model_code.py` (MLflow's models-from-code), with the
    package beside it. Loading such a model runs no pickle."""
    return {
        "python_model": str(Path(__file__).with_name("model_code.py")),
        "artifacts": {"model": str(save_model(model, Path(tmp) / "model"))},
        "code_paths": [str(PACKAGE_DIR)],
    }


def requirements() -> list[str]:

    pkgs = ["mlflow", "lightgbm", "scikit-learn", "pandas", "pandera", "pyarrow", "numpy", "scipy"]
    pkgs += ["lleaves", "llvmlite"]  # compiled trees, when the consumer's machine can build them
    return [f"{p}=={version(p)}" for p in pkgs]
