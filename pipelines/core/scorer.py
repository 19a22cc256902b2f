"""The intent scorer: raw sessions in, per-intent probabilities out.

`IntentModel` bundles everything scoring needs: the dataset's column mapping, the fitted
`SessionFeaturizer` and the LightGBM booster. It is what the registered MLflow model wraps, so
consumers pass raw sessions and never rebuild features themselves.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.core.contract import REJECT_REASON, DatasetSpec, row_ids, to_contract
from pipelines.core.features import SessionFeaturizer
from pipelines.core.modelling import booster_proba


class IntentModel:
    """A fitted featurizer and booster behind the session contract."""

    def __init__(
        self,
        spec: DatasetSpec,
        featurizer: SessionFeaturizer,
        booster: lgb.Booster,
        threads: int = 1,
    ):
        self.spec = spec
        self.featurizer = featurizer
        self.booster = booster
        self.threads = threads

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def output_columns(self) -> list[str]:
        return [
            "session_id",
            *[f"p_{c}" for c in self.classes],
            "intent",
            "confidence",
            "margin",
            REJECT_REASON,
        ]

    def predict_features(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities from a feature frame or from `featurizer.transform_matrix`."""
        return booster_proba(self.booster, features, len(self.classes), threads=self.threads)

    def predict(
        self,
        raw: pd.DataFrame,
        source: str = "<input>",
        extra: dict | None = None,
        row_numbers: np.ndarray | None = None,
        nullable: bool = False,
    ) -> pd.DataFrame:
        """One output row per input row, in the input order.

        Rows that break the contract get no probabilities and say why in `reject_reason`.
        Extra columns are ignored; optional roles may be absent. `extra` adds constant columns
        (the model's name and version) after the predictions. `row_numbers` are the rows'
        numbers in the whole input when `raw` is a piece of it: a table without a session id
        column gets `row-<n>` ids from them. With `nullable`, missing values are `pd.NA` in
        `Float64` and `string` columns (what a JSON answer turns into null) instead of NaN/None.
        """
        result = to_contract(
            raw,
            self.spec,
            source=source,
            with_label=False,
            all_columns=False,
            row_numbers=row_numbers,
        )
        kept = result.sessions
        n = len(raw)
        id_col = self.spec.columns.get("session_id")
        ids = raw[id_col].to_numpy(dtype=object) if id_col else row_ids(n, row_numbers)
        k = len(self.classes)
        proba = np.full((n, k), np.nan)
        if len(kept):
            proba[result.kept_rows] = self.predict_features(self.featurizer.transform_matrix(kept))
        top = np.argsort(-np.nan_to_num(proba, nan=-1.0), axis=1)
        best = np.take_along_axis(proba, top[:, :1], axis=1)[:, 0]
        second = np.take_along_axis(proba, top[:, 1:2], axis=1)[:, 0]
        intent = np.asarray(self.classes, dtype=object)[top[:, 0]]
        intent[np.isnan(best)] = None
        reasons = np.full(n, None, dtype=object)
        for row, reason in result.reasons.items():
            reasons[row] = reason
        # one frame built at once: adding columns one by one costs more than scoring a session
        as_float, as_text = (_nullable_float, _nullable_text) if nullable else (_same, _same)
        columns = {
            "session_id": as_text(pd.Series(ids, dtype=object).astype(str).to_numpy(dtype=object))
            if nullable
            else pd.Series(ids, dtype=object).astype(str)
        }
        columns.update({f"p_{c}": as_float(proba[:, j]) for j, c in enumerate(self.classes)})
        columns.update(
            {
                "intent": as_text(intent),
                "confidence": as_float(best),
                "margin": as_float(best - second),
                REJECT_REASON: as_text(reasons),
            }
        )
        for name, value in (extra or {}).items():
            columns[name] = as_text(np.full(n, value, dtype=object))
        return pd.DataFrame(columns)

    def describe(self) -> dict:
        """What the model expects and returns, for logging and the model README."""
        return {
            "classes": list(self.classes),
            "columns": dict(self.spec.columns),
            "page_counts": dict(self.spec.page_counts),
            "extra_numeric": list(self.spec.extra_numeric),
            "extra_categorical": list(self.spec.extra_categorical),
            "features": list(self.featurizer.feature_names_),
            "spec": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.spec).items()
            },
        }


_TEXT = pd.StringDtype("python", na_value=pd.NA)


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _nullable_float(values: np.ndarray) -> pd.arrays.FloatingArray:
    return pd.arrays.FloatingArray(values, np.isnan(values))


def _nullable_text(values: np.ndarray):
    values = np.asarray(values, dtype=object)
    missing = pd.isna(values)
    if missing.any():
        values = values.copy()
        values[missing] = pd.NA
    return pd.array(values, dtype=_TEXT)


# the files of a saved `IntentModel`: LightGBM's own text format, and JSON for the rest
BOOSTER_FILE = "booster.txt"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def save_model(model: IntentModel, folder: str | Path) -> Path:
    """Write `model` as data: the booster as LightGBM text, the dataset spec and the featurizer's
    fitted state as JSON. Loading it (`load_model`) runs no pickle."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BOOSTER_FILE).write_text(model.booster.model_to_string())
    state = {
        "format_version": FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "featurizer": model.featurizer.to_state(),
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    return folder


def load_model(folder: str | Path, threads: int = 1) -> IntentModel:
    """The `IntentModel` that `save_model` wrote to `folder`."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: model format {state.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    booster = lgb.Booster(model_str=(folder / BOOSTER_FILE).read_text())
    return IntentModel(
        DatasetSpec.from_dict(state["spec"]),
        SessionFeaturizer.from_state(state["featurizer"]),
        booster,
        threads=threads,
    )
