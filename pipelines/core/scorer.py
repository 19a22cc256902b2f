"""The intent scorer: raw sessions in, per-intent probabilities out.

`IntentModel` bundles everything scoring needs: the dataset's column mapping, the fitted
`SessionFeaturizer` and the LightGBM booster. It is what the registered MLflow model wraps, so
consumers pass raw sessions and never rebuild features themselves.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.core import compiled as compiled_trees
from pipelines.core import explain as reasons_of
from pipelines.core.calibration import Calibrator, calibrator_from_state
from pipelines.core.contract import REJECT_REASON, DatasetSpec, row_ids, to_contract
from pipelines.core.features import SessionFeaturizer
from pipelines.core.modelling import SINGLE_THREAD_MAX_ROWS, booster_proba, feature_matrix

log = logging.getLogger(__name__)


class IntentModel:
    """A fitted featurizer and booster behind the session contract.

    It predicts with LightGBM unless `use_compiled_trees` compiled the booster (`core.compiled`);
    `predictor` says which, and `predictor_note` why LightGBM when compiling was asked for.
    """

    # class defaults: models unpickled from before compiled trees existed have neither
    compiled: compiled_trees.CompiledTrees | None = None
    # post-hoc calibration of the booster's probabilities (`core.calibration`); None: none
    calibrator: Calibrator | None = None
    predictor_note: str | None = None
    _checked = False

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
        """The columns `predict` returns without reasons (before any `extra` ones)."""
        return self.columns_with(explain=0)

    def columns_with(self, explain: int) -> list[str]:
        """The columns `predict(..., explain=explain)` returns (before any `extra` ones)."""
        reasons = [reasons_of.reason_column(i + 1) for i in range(explain)]
        return [
            "session_id",
            *[f"p_{c}" for c in self.classes],
            "intent",
            "confidence",
            "margin",
            *(reasons + [reasons_of.REASONS] if explain else []),
            REJECT_REASON,
        ]

    def explain_features(self, X: np.ndarray, proba: np.ndarray, k: int) -> list[list[dict]]:
        """The top-`k` reasons toward each row's predicted intent (`core.explain`), from the
        feature matrix `X` and the probabilities predicted from it."""
        contrib = reasons_of.contributions(self.booster, X, len(self.classes), self.threads)
        return reasons_of.explain_rows(
            contrib,
            proba.argmax(axis=1),
            X,
            self.featurizer.feature_names_,
            self.featurizer.categories_,
            k,
        )

    @property
    def predictor(self) -> str:
        """What predicts: `lleaves` (compiled trees) or `lightgbm`."""
        return compiled_trees.LLEAVES if self.compiled is not None else compiled_trees.LIGHTGBM

    def use_compiled_trees(self, cache_dir=None) -> str:
        """Predict with the booster compiled from now on (cached per model and platform); when it
        cannot be compiled, keep LightGBM and say why in `predictor_note`. Returns `predictor`."""
        try:
            self.compiled = compiled_trees.compile_trees(
                self.booster.model_to_string(), len(self.classes), cache_dir
            )
            self._checked, self.predictor_note = False, None
        except Exception as err:  # no lleaves, a model it cannot compile, an unwritable cache
            self._fall_back(f"compiling failed ({type(err).__name__}: {err})")
        return self.predictor

    def compile_if_worth_it(self, rows: int, min_rows: int, cache_dir=None) -> str:
        """Compiled trees for an input of `rows` rows when it has at least `min_rows` (compiling
        takes about a minute for a large model, and pays off over about a million rows) or when
        this model is compiled on this machine already; else LightGBM, saying why. Returns
        `predictor`."""
        if self.worth_compiling(rows, min_rows, cache_dir):
            return self.use_compiled_trees(cache_dir)
        self.use_lightgbm()
        self.predictor_note = (
            f"{rows} rows, fewer than runtime.compile_min_rows={min_rows} and the model is not "
            "compiled on this machine yet: LightGBM predicts"
        )
        log.info("%s", self.predictor_note)
        return self.predictor

    def worth_compiling(self, rows: int, min_rows: int, cache_dir=None) -> bool:
        """Whether `compile_if_worth_it` would compile (it checks the cache, compiles nothing)."""
        if rows >= min_rows:
            return True
        return compiled_trees.is_cached(self.booster.model_to_string(), cache_dir)

    def use_lightgbm(self) -> None:
        self.compiled, self.predictor_note = None, None

    def _fall_back(self, why: str) -> None:
        self.compiled = None
        self.predictor_note = f"{why}; LightGBM predicts"
        log.warning("%s", self.predictor_note)

    def predict_features(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities from a feature frame or from `featurizer.transform_matrix`,
        calibrated when the model carries a calibrator."""
        proba = self.uncalibrated_proba(features)
        return proba if self.calibrator is None else self.calibrator.apply(proba)

    def uncalibrated_proba(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The booster's own probabilities (before any calibration), from the compiled trees
        when they are in use."""
        trees = self.compiled
        if trees is None:
            return booster_proba(self.booster, features, len(self.classes), threads=self.threads)
        X = feature_matrix(features) if isinstance(features, pd.DataFrame) else features
        threads = 1 if len(X) <= SINGLE_THREAD_MAX_ROWS else self.threads
        proba = trees.predict(X, threads)
        if not self._checked and len(X):
            # the first rows predicted both ways: a compiled model that disagrees is set aside
            head = X[: compiled_trees.CHECK_ROWS]
            exact = booster_proba(self.booster, head, len(self.classes), threads=1)
            diff = compiled_trees.largest_difference(proba[: len(head)], exact)
            self._checked = True
            if diff > compiled_trees.TOLERANCE:
                self._fall_back(f"compiled trees differ from LightGBM by {diff:.3g}")
                return self.uncalibrated_proba(X)
        return proba

    def __getstate__(self) -> dict:
        # a compiled binary is machine code bound to this process: it never travels
        state = dict(self.__dict__)
        state.pop("compiled", None)
        state.pop("_checked", None)
        return state

    def predict(
        self,
        raw: pd.DataFrame,
        source: str = "<input>",
        extra: dict | None = None,
        row_numbers: np.ndarray | None = None,
        nullable: bool = False,
        explain: int = 0,
    ) -> pd.DataFrame:
        """One output row per input row, in the input order.

        Rows that break the contract get no probabilities and say why in `reject_reason`.
        Extra columns are ignored; optional roles may be absent. `extra` adds constant columns
        (the model's name and version) after the predictions. `row_numbers` are the rows'
        numbers in the whole input when `raw` is a piece of it: a table without a session id
        column gets `row-<n>` ids from them. With `nullable`, missing values are `pd.NA` in
        `Float64` and `string` columns (what a JSON answer turns into null) instead of NaN/None.
        With `explain` = k > 0, each scored row also gets its top-k reasons (`core.explain`):
        `reason_1`..`reason_k` in words with their contribution, and `reasons` as JSON.
        """
        columns = self.predict_columns(raw, source, extra, row_numbers, explain)
        as_float, as_text = (_nullable_float, _nullable_text) if nullable else (_same, _plain_text)
        # one frame built at once: adding columns one by one costs more than scoring a session
        return pd.DataFrame(
            {n: as_float(v) if v.dtype.kind == "f" else as_text(v) for n, v in columns.items()}
        )

    def predict_columns(
        self,
        raw: pd.DataFrame,
        source: str = "<input>",
        extra: dict | None = None,
        row_numbers: np.ndarray | None = None,
        explain: int = 0,
    ) -> dict[str, np.ndarray]:
        """`predict`'s columns before a frame is made of them: the probabilities, confidence and
        margin as float arrays (NaN for a rejected row), every other column as an object array
        (None when missing). For a caller that needs no frame (`column_records`)."""
        explain = check_explain(explain)
        result = to_contract(
            raw,
            self.spec,
            source=source,
            with_label=False,
            all_columns=False,
            row_numbers=row_numbers,
        )
        kept = result.columns
        n = len(raw)
        id_col = self.spec.columns.get("session_id")
        ids = raw[id_col].to_numpy(dtype=object) if id_col else row_ids(n, row_numbers)
        k = len(self.classes)
        proba = np.full((n, k), np.nan)
        explained: list = [None] * n
        if len(kept):
            X = self.featurizer.transform_matrix(kept)
            proba[result.kept_rows] = self.predict_features(X)
            if explain:
                rows = self.explain_features(X, proba[result.kept_rows], explain)
                for row, reasons in zip(result.kept_rows, rows, strict=True):
                    explained[row] = reasons
        reasons = np.full(n, None, dtype=object)
        for row, reason in result.reasons.items():
            reasons[row] = reason
        per_row = reasons_of.reason_columns(explained, explain) if explain else {}
        return self._columns(ids, proba, reasons, per_row, extra or {})

    def _columns(
        self,
        ids: np.ndarray,
        proba: np.ndarray,
        rejected: np.ndarray,
        per_row: dict[str, list],
        extra: dict,
    ) -> dict[str, np.ndarray]:
        """The output columns: ids, probabilities, intent, confidence and margin, the `per_row`
        columns (reason codes), `reject_reason`, then the constant `extra` columns (the model's
        name and version)."""
        n = len(ids)
        top = np.argsort(-np.nan_to_num(proba, nan=-1.0), axis=1)
        best = np.take_along_axis(proba, top[:, :1], axis=1)[:, 0]
        second = np.take_along_axis(proba, top[:, 1:2], axis=1)[:, 0]
        intent = np.asarray(self.classes, dtype=object)[top[:, 0]]
        intent[np.isnan(best)] = None
        columns = {"session_id": _id_text(ids)}
        columns.update({f"p_{c}": proba[:, j] for j, c in enumerate(self.classes)})
        columns.update({"intent": intent, "confidence": best, "margin": best - second})
        for name, values in per_row.items():
            columns[name] = np.asarray(values, dtype=object)
        columns[REJECT_REASON] = rejected
        for name, value in extra.items():
            columns[name] = np.full(n, value, dtype=object)
        return columns

    def describe(self) -> dict:
        """What the model expects and returns, for logging and the model README."""
        return {
            "classes": list(self.classes),
            "columns": dict(self.spec.columns),
            "page_counts": dict(self.spec.page_counts),
            "extra_numeric": list(self.spec.extra_numeric),
            "extra_categorical": list(self.spec.extra_categorical),
            "features": list(self.featurizer.feature_names_),
            "calibration": None if self.calibrator is None else self.calibrator.kind,
            "spec": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.spec).items()
            },
        }


_TEXT = pd.StringDtype("python", na_value=pd.NA)
_PLAIN_TEXT = pd.StringDtype(na_value=np.nan)  # pandas 3's `str`
MAX_EXPLAIN = 20  # reasons per row a caller may ask for


def check_explain(explain) -> int:
    """The number of reasons asked for, as an int in [0, MAX_EXPLAIN]; anything else raises
    ValueError naming the value."""
    if explain is None or explain is False:
        return 0
    if explain is True:
        raise ValueError(f"explain must be a whole number of reasons, got {explain!r}")
    try:
        k = int(explain)
    except (TypeError, ValueError):
        raise ValueError(f"explain must be a whole number of reasons, got {explain!r}") from None
    if k != explain or not 0 <= k <= MAX_EXPLAIN:
        raise ValueError(f"explain must be a whole number from 0 to {MAX_EXPLAIN}, got {explain!r}")
    return k


def column_records(columns: dict[str, np.ndarray]) -> list[dict]:
    """One dict per row of `predict_columns`, missing values None and text as `str`: the records
    of the frame `predict(nullable=True)` gives, without building the frame."""
    names = list(columns)
    values = [_json_values(v) for v in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _json_values(values: np.ndarray) -> list:
    if values.dtype.kind == "f":
        return [None if v != v else v for v in values.tolist()]  # NaN is not equal to itself
    missing = pd.isna(values).tolist()
    return [
        None if m else v if isinstance(v, str) else str(v)
        for v, m in zip(values.tolist(), missing, strict=True)
    ]


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _plain_text(values: np.ndarray) -> pd.arrays.ArrowStringArray:
    # pandas' `str` (NaN when missing) even when every value is missing, which would otherwise
    # make an object column: one session's answer has the types of a batch's
    return pd.array(values, dtype=_PLAIN_TEXT)


def _id_text(ids: np.ndarray) -> np.ndarray:
    """Session ids as text, None when missing: what `Series.astype(str)` gives, without building a
    Series (text ids, the usual case, pass through: faster than `astype` at any size)."""
    return np.array(
        [v if isinstance(v, str) else None if pd.isna(v) else str(v) for v in ids], dtype=object
    )


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
        "calibration": None if model.calibrator is None else model.calibrator.to_state(),
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
    model = IntentModel(
        DatasetSpec.from_dict(state["spec"]),
        SessionFeaturizer.from_state(state["featurizer"]),
        booster,
        threads=threads,
    )
    if state.get("calibration"):  # models saved before calibration existed have none
        model.calibrator = calibrator_from_state(state["calibration"])
    return model
