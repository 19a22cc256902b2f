"""The intent scorer: raw sessions in, per-intent probabilities out.

`IntentModel` bundles everything scoring needs: the dataset's column mapping, the fitted
`SessionFeaturizer` and the LightGBM booster. It is what the registered MLflow model wraps, so
consumers pass raw sessions and never rebuild features themselves.
"""

from __future__ import annotations

from dataclasses import asdict

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.contract import REJECT_REASON, DatasetSpec, to_contract
from pipelines.features import SessionFeaturizer
from pipelines.modelling import booster_proba


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

    def predict_features(self, features: pd.DataFrame) -> np.ndarray:
        return booster_proba(self.booster, features, len(self.classes), threads=self.threads)

    def predict(self, raw: pd.DataFrame, source: str = "<input>") -> pd.DataFrame:
        """One output row per input row, in the input order.

        Rows that break the contract get no probabilities and say why in `reject_reason`.
        Extra columns are ignored; optional roles may be absent.
        """
        result = to_contract(raw, self.spec, source=source, with_label=False, all_columns=False)
        kept = result.sessions
        out = pd.DataFrame(index=np.arange(len(raw)))
        ids = pd.Series(
            raw[self.spec.columns["session_id"]]
            if self.spec.columns.get("session_id")
            else [f"row-{i}" for i in range(len(raw))]
        )
        out["session_id"] = ids.astype(str).to_numpy()
        k = len(self.classes)
        proba = np.full((len(raw), k), np.nan)
        kept_rows = result.kept_rows
        if len(kept):
            proba[kept_rows] = self.predict_features(self.featurizer.transform(kept))
        for j, c in enumerate(self.classes):
            out[f"p_{c}"] = proba[:, j]
        top = np.argsort(-np.nan_to_num(proba, nan=-1.0), axis=1)
        best = np.take_along_axis(proba, top[:, :1], axis=1)[:, 0]
        second = np.take_along_axis(proba, top[:, 1:2], axis=1)[:, 0]
        intent = np.asarray(self.classes, dtype=object)[top[:, 0]]
        intent[np.isnan(best)] = None
        out["intent"] = intent
        out["confidence"] = best
        out["margin"] = best - second
        reasons = np.full(len(raw), None, dtype=object)
        reasons[result.rejects["source_row"].to_numpy(dtype=np.int64)] = result.rejects[
            REJECT_REASON
        ].to_numpy()
        out[REJECT_REASON] = reasons
        return out

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
