"""Post-hoc calibration of predicted intent probabilities, fitted on validation rows.

A calibrator maps an (n, K) matrix of class probabilities to calibrated probabilities (rows summing
to 1). Three kinds:

- `temperature`: one scalar T > 0, calibrated = softmax(log(p) / T).
- `vector`: a scale a_k > 0 and a bias b_k per class (b_0 = 0):
  calibrated = softmax(a * log(p) + b).
- `isotonic`: one isotonic regression per class on that class's probability (one-vs-rest), then
  rows renormalised to sum to 1.

Probabilities are clipped at `EPS` before the log, so exact zeros and ones give finite output.
A calibrator's state (`to_state`) is plain JSON values, and `calibrator_from_state` rebuilds a
calibrator whose `apply` gives the same bits: applying one needs only NumPy.

`choose_calibration` decides whether calibration helps at all: each kind is cross-fitted on the
validation rows (fitted on all folds but one, applied to the held-out one), and a kind is chosen
only if its out-of-fold log-loss is lower than the uncalibrated one. Scoring a calibrator on the
rows it was fitted on would favour the most flexible kind (isotonic) every time.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold

# probabilities are clipped at EPS before a log, as `modelling.classification_metrics` does
EPS = 1e-15
# bounds of T (temperature) and of each a_k (vector) while fitting: far beyond any useful value,
# they only keep the optimiser away from overflow
SCALE_BOUNDS = (1e-2, 1e2)
# L2 penalty on (a - 1) and b added to the mean NLL of a vector fit: it keeps the fit finite when
# a class is rare or absent in the fitted rows (its bias would otherwise run to -inf) and moves a
# well-determined fit by about 1e-4
VECTOR_L2 = 1e-4
# fewer validation rows than this and `choose_calibration` does not calibrate
MIN_ROWS = 100


def _check_proba(proba, n_classes: int | None = None, name: str = "proba") -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be an (n, K) array with K >= 2 classes, got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(
            f"{name} has {p.shape[1]} columns, the calibrator was fitted on {n_classes} classes"
        )
    if not np.isfinite(p).all():
        raise ValueError(f"{name} has non-finite values")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(f"{name} must be probabilities in [0, 1], got [{p.min()}, {p.max()}]")
    return p


def _check_labels(y, n_rows: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise ValueError(
            f"y must be 1-D with one label per row ({n_rows}), got shape {labels.shape}"
        )
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels))
    )
    if labels.size and not integral:
        raise ValueError(f"y must hold integer class codes, got {labels.dtype} values")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"y must hold class codes 0..{n_classes - 1}, got [{labels.min()}, {labels.max()}]"
        )
    return labels


def _log_proba(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, EPS, 1.0))


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll_and_grad(scores: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of softmax(scores) and its gradient in the scores."""
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    nll = float(np.mean(np.log(total[:, 0]) - (z * onehot).sum(axis=1)))
    return nll, (e / total - onehot) / len(scores)


def _normalised_rows(p: np.ndarray) -> np.ndarray:
    """Rows divided by their sum; a row summing to 0 becomes uniform."""
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.divide(p, total, out=uniform, where=total > 0)


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes, computed as `val/logloss` is: probabilities
    clipped at `EPS` and rows renormalised."""
    q = _normalised_rows(np.clip(proba, EPS, 1.0))
    return float(-np.mean(np.log(q[np.arange(len(y)), y])))


class Calibrator(ABC):
    """Maps (n, K) class probabilities to calibrated ones; `to_state` gives its JSON state.

    Each kind has a `kind` name and an `n_classes` (K), and refuses a matrix of another width.
    """

    kind: ClassVar[str]
    n_classes: int

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of `proba` (n, K): finite, in [0, 1], rows summing to 1."""
        return self._apply(_check_proba(proba, self.n_classes))

    @abstractmethod
    def _apply(self, p: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def to_state(self) -> dict:
        """The calibrator as plain JSON values (see `calibrator_from_state`)."""


def _finite_floats(values, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite numbers, got {list(out)}")
    return out


@dataclass(frozen=True)
class TemperatureCalibrator(Calibrator):
    """softmax(log(p) / temperature): a temperature above 1 softens over-confident probabilities."""

    temperature: float
    n_classes: int

    kind: ClassVar[str] = "temperature"

    def __post_init__(self) -> None:
        t = float(self.temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if int(self.n_classes) != self.n_classes or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes}")
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "n_classes", int(self.n_classes))

    def _apply(self, p: np.ndarray) -> np.ndarray:
        return _softmax(_log_proba(p) / self.temperature)

    def to_state(self) -> dict:
        return {"kind": self.kind, "n_classes": self.n_classes, "temperature": self.temperature}


@dataclass(frozen=True)
class VectorCalibrator(Calibrator):
    """softmax(scale * log(p) + bias), one scale (> 0) and one bias per class."""

    scale: tuple[float, ...]
    bias: tuple[float, ...]
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _bias: np.ndarray = field(init=False, repr=False, compare=False)

    kind: ClassVar[str] = "vector"

    def __post_init__(self) -> None:
        scale = _finite_floats(self.scale, "scale")
        bias = _finite_floats(self.bias, "bias")
        if len(scale) < 2 or len(bias) != len(scale):
            raise ValueError(
                "scale and bias need one value per class (K >= 2), "
                f"got {len(scale)} and {len(bias)}"
            )
        if min(scale) <= 0:
            raise ValueError(f"scale must be positive, got {list(scale)}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "_scale", np.array(scale))
        object.__setattr__(self, "_bias", np.array(bias))

    @property
    def n_classes(self) -> int:
        return len(self.scale)

    def _apply(self, p: np.ndarray) -> np.ndarray:
        return _softmax(_log_proba(p) * self._scale + self._bias)

    def to_state(self) -> dict:
        return {"kind": self.kind, "scale": list(self.scale), "bias": list(self.bias)}


@dataclass(frozen=True)
class IsotonicCalibrator(Calibrator):
    """One increasing piecewise-linear map per class (the knots of a fitted `IsotonicRegression`,
    constant beyond the end knots), then rows renormalised to sum to 1.

    A row whose mapped values are all 0 keeps its input probabilities (renormalised).
    """

    x_thresholds: tuple[tuple[float, ...], ...]
    y_thresholds: tuple[tuple[float, ...], ...]
    _knots: tuple[tuple[np.ndarray, np.ndarray], ...] = field(init=False, repr=False, compare=False)

    kind: ClassVar[str] = "isotonic"

    def __post_init__(self) -> None:
        xs = tuple(_finite_floats(x, "x_thresholds") for x in self.x_thresholds)
        ys = tuple(_finite_floats(y, "y_thresholds") for y in self.y_thresholds)
        if len(xs) < 2 or len(ys) != len(xs):
            raise ValueError(
                "x_thresholds and y_thresholds need one list per class (K >= 2), "
                f"got {len(xs)} and {len(ys)}"
            )
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if not x or len(x) != len(y):
                raise ValueError(
                    f"class {k}: thresholds must be non-empty and of equal length, "
                    f"got {len(x)} x and {len(y)} y"
                )
            if any(b <= a for a, b in zip(x, x[1:], strict=False)):
                raise ValueError(f"class {k}: x_thresholds must be strictly increasing")
            if any(b < a for a, b in zip(y, y[1:], strict=False)) or min(y) < 0 or max(y) > 1:
                raise ValueError(f"class {k}: y_thresholds must be non-decreasing within [0, 1]")
        object.__setattr__(self, "x_thresholds", xs)
        object.__setattr__(self, "y_thresholds", ys)
        knots = tuple((np.array(x), np.array(y)) for x, y in zip(xs, ys, strict=True))
        object.__setattr__(self, "_knots", knots)

    @property
    def n_classes(self) -> int:
        return len(self.x_thresholds)

    def one_vs_rest(self, proba: np.ndarray) -> np.ndarray:
        """Each class's mapped probability (n, K), before the rows are renormalised: the values
        the fitted `IsotonicRegression(out_of_bounds="clip").predict` gives."""
        return self._one_vs_rest(_check_proba(proba, self.n_classes))

    def _one_vs_rest(self, p: np.ndarray) -> np.ndarray:
        # np.interp is constant beyond the end knots, as out_of_bounds="clip" is
        return np.column_stack([np.interp(p[:, k], x, y) for k, (x, y) in enumerate(self._knots)])

    def _apply(self, p: np.ndarray) -> np.ndarray:
        mapped = self._one_vs_rest(p)
        empty = mapped.sum(axis=1) == 0
        mapped[empty] = p[empty]
        return _normalised_rows(mapped)

    def to_state(self) -> dict:
        return {
            "kind": self.kind,
            "x_thresholds": [list(x) for x in self.x_thresholds],
            "y_thresholds": [list(y) for y in self.y_thresholds],
        }


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.kind: c for c in (TemperatureCalibrator, VectorCalibrator, IsotonicCalibrator)
}
KINDS = tuple(CALIBRATORS)


def _check_kind(kind: str) -> None:
    if kind not in CALIBRATORS:
        raise ValueError(f"unknown calibration kind {kind!r}; known kinds: {', '.join(KINDS)}")


def calibrator_from_state(state: dict) -> Calibrator:
    """The calibrator `to_state()` described: its `apply` gives the same bits."""
    kind = state.get("kind")
    _check_kind(kind)
    try:
        if kind == "temperature":
            return TemperatureCalibrator(state["temperature"], state["n_classes"])
        if kind == "vector":
            return VectorCalibrator(state["scale"], state["bias"])
        return IsotonicCalibrator(state["x_thresholds"], state["y_thresholds"])
    except KeyError as err:
        raise ValueError(f"{kind} calibrator state has no {err.args[0]!r}") from None


def _fit_temperature(z: np.ndarray, onehot: np.ndarray) -> TemperatureCalibrator:
    # optimised in log T: T > 0 without a constraint, and the NLL is better scaled in it
    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = z / math.exp(params[0])
        nll, grad = _nll_and_grad(s, onehot)
        # d s / d log T = -s
        return nll, np.array([-float((grad * s).sum())])

    bounds = [(math.log(SCALE_BOUNDS[0]), math.log(SCALE_BOUNDS[1]))]
    res = minimize(objective, np.zeros(1), jac=True, method="L-BFGS-B", bounds=bounds)
    return TemperatureCalibrator(math.exp(float(res.x[0])), z.shape[1])


def _fit_vector(z: np.ndarray, onehot: np.ndarray, l2: float = VECTOR_L2) -> VectorCalibrator:
    # parameters: log a (K values), then b_1..b_{K-1}; b_0 stays 0 (adding one constant to every
    # bias changes no probability)
    k = z.shape[1]

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        a = np.exp(params[:k])
        b = np.concatenate([[0.0], params[k:]])
        nll, grad = _nll_and_grad(z * a + b, onehot)
        nll += l2 * float(((a - 1) ** 2).sum() + (b**2).sum())
        grad_log_a = (grad * z).sum(axis=0) * a + 2 * l2 * (a - 1) * a
        grad_b = grad.sum(axis=0)[1:] + 2 * l2 * b[1:]
        return nll, np.concatenate([grad_log_a, grad_b])

    log_bounds = (math.log(SCALE_BOUNDS[0]), math.log(SCALE_BOUNDS[1]))
    bounds = [log_bounds] * k + [(None, None)] * (k - 1)
    res = minimize(objective, np.zeros(2 * k - 1), jac=True, method="L-BFGS-B", bounds=bounds)
    scale = np.exp(res.x[:k])
    bias = np.concatenate([[0.0], res.x[k:]])
    return VectorCalibrator(tuple(scale.tolist()), tuple(bias.tolist()))


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
    xs, ys = [], []
    for k in range(p.shape[1]):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        iso.fit(p[:, k], (y == k).astype(float))
        xs.append(tuple(iso.X_thresholds_.tolist()))
        ys.append(tuple(iso.y_thresholds_.tolist()))
    return IsotonicCalibrator(tuple(xs), tuple(ys))


def fit_calibrator(kind: str, proba_val: np.ndarray, y_val: np.ndarray, seed: int) -> Calibrator:
    """A calibrator of `kind` fitted on validation probabilities (n, K) and their labels.

    Temperature and vector calibrators minimise the validation NLL with L-BFGS-B (analytic
    gradients); the vector fit adds `VECTOR_L2` * (sum (a - 1)^2 + sum b^2). `seed` fixes any
    randomness of a fit (the current kinds fit deterministically).
    """
    _check_kind(kind)
    p = _check_proba(proba_val, name="proba_val")
    y = _check_labels(y_val, len(p), p.shape[1])
    if len(p) == 0:
        raise ValueError("cannot fit a calibrator on 0 rows")
    if kind == "isotonic":
        return _fit_isotonic(p, y)
    z = _log_proba(p)
    onehot = np.eye(p.shape[1])[y]
    if kind == "temperature":
        return _fit_temperature(z, onehot)
    return _fit_vector(z, onehot)


@dataclass(frozen=True)
class CalibrationChoice:
    """Whether calibration helps, and the calibrator (fitted on all validation rows) when it does.

    kind : the chosen kind, or "none".
    calibrator : the chosen calibrator, or None.
    logloss : validation log-loss per kind: "none" (uncalibrated) and each kind's out-of-fold value.
    reason : one line saying what was chosen and why.
    folds : the number of cross-fitting folds (0 when no kind was cross-fitted).
    """

    kind: str
    calibrator: Calibrator | None
    logloss: dict[str, float]
    reason: str
    folds: int


def _out_of_fold(
    kind: str, p: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], seed: int
) -> np.ndarray:
    oof = np.empty_like(p)
    for fit_rows, held_out in splits:
        calibrator = fit_calibrator(kind, p[fit_rows], y[fit_rows], seed)
        oof[held_out] = calibrator.apply(p[held_out])
    return oof


def _losses_text(losses: dict[str, float]) -> str:
    return "; ".join(f"{k} {v:.4f}" for k, v in losses.items())


def _cross_fit_folds(y: np.ndarray, n_classes: int, folds: int, min_rows: int) -> tuple[int, str]:
    """(the number of folds to cross-fit with, a note naming them), or (0, why none can be)."""
    if len(y) < min_rows:
        return 0, f"{len(y)} validation rows, fewer than the {min_rows} needed"
    counts = np.bincount(y, minlength=n_classes)
    rarest = int(np.argmin(counts))
    if counts[rarest] < 2:
        return 0, (
            f"class {rarest} has {counts[rarest]} validation rows, "
            "too few to cross-fit (at least 2 per class)"
        )
    n_folds = min(folds, int(counts[rarest]))
    if n_folds < folds:
        return (
            n_folds,
            f"{n_folds} folds, not {folds}: class {rarest} has {counts[rarest]} validation rows",
        )
    return n_folds, f"{n_folds} folds"


def choose_calibration(
    kinds: Sequence[str],
    proba_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
    folds: int = 5,
    min_gain: float = 0.0,
    min_rows: int = MIN_ROWS,
) -> CalibrationChoice:
    """The calibration kind with the lowest out-of-fold validation log-loss, if it beats none.

    Each kind is cross-fitted on the validation rows (stratified `folds` folds shuffled with
    `seed`: fitted on the other folds, applied to the held-out one). A kind is chosen only when
    its out-of-fold log-loss is below (1 - `min_gain`) times the uncalibrated log-loss; it is then
    refitted on all validation rows.

    A class with fewer validation rows than `folds` lowers the number of folds to its count. The
    choice is "none", saying why, when there are fewer than `min_rows` rows or a class has fewer
    than 2 (a class with no validation rows included: its calibration could not be judged).
    """
    kinds = list(dict.fromkeys(kinds))
    for kind in kinds:
        _check_kind(kind)
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds}")
    if not (math.isfinite(min_gain) and 0 <= min_gain < 1):
        raise ValueError(f"min_gain must be a number in [0, 1), got {min_gain}")
    p = _check_proba(proba_val, name="proba_val")
    y = _check_labels(y_val, len(p), p.shape[1])
    losses = {"none": log_loss(y, p)} if len(p) else {}

    n_folds, fold_note = _cross_fit_folds(y, p.shape[1], int(folds), min_rows)
    if not kinds:
        n_folds, fold_note = 0, "no calibration kinds to try"
    if n_folds == 0:
        return CalibrationChoice("none", None, losses, f"no calibration: {fold_note}", 0)

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y))
    for kind in kinds:
        losses[kind] = log_loss(y, _out_of_fold(kind, p, y, splits, seed))

    best = min(kinds, key=lambda k: losses[k])
    if losses[best] < losses["none"] * (1 - min_gain):
        reason = (
            f"{best} lowers validation log-loss {losses['none']:.4f} -> {losses[best]:.4f} "
            f"(out-of-fold, {fold_note})"
        )
        return CalibrationChoice(best, fit_calibrator(best, p, y, seed), losses, reason, n_folds)
    margin = f" by more than {min_gain:.2%}" if min_gain > 0 else ""
    reason = (
        f"no calibration lowers validation log-loss{margin} "
        f"({_losses_text(losses)}; out-of-fold, {fold_note})"
    )
    return CalibrationChoice("none", None, losses, reason, n_folds)
