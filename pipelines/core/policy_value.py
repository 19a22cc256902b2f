"""Policy value before launch: what a touchpoint policy would convert, from logged decisions.

Off-policy evaluation of a target policy from decisions a logging policy made. Each of the `n`
logged decisions (one per journey, at its latest session) has the touchpoint shown
(`logged_action`, an index in 0..T-1), the logging policy's probability of showing it
(`propensity`, in (0, 1]) and the reward observed (`reward`, in [0, 1]: converted or not).

A target policy is an (n, T) matrix of probabilities pi_e(a | x_i). A row sums to 1 where the
policy acts on that journey and to 0 where it does not (a holdout, a suppressed or ineligible
journey): **a policy's value is its expected reward per journey it acts on**, estimated on
those rows only, and every result reports how many rows that is (`rows`). Multiply by `rows`
for the expected conversions.

- `snips`: self-normalised inverse-propensity scoring, with a delta-method (sandwich) standard
  error;
- `doubly_robust`: a reward model `q_hat` (n, T) corrected by the weighted residual of the
  logged action; unbiased if either the propensities or the model are right;
- `observed`: the logging policy's own value, the mean reward (a Wilson interval when rewards
  are 0/1);
- `compare_policies`: all of them as one table.

Only the propensity of the logged action is known, so support cannot be checked: a target
policy may put mass on touchpoints the logging policy never shows. `matched` (how many logged
actions the target would also take) and the effective sample size of the weights say how much
data stands behind each value; with no match at all the value is NaN and `reason` says why.
Intervals are normal at `level`, intersected with [0, 1], where every policy's value lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

SNIPS = "SNIPS"
DOUBLY_ROBUST = "Doubly robust"
OBSERVED = "Observed"
LOGGING_POLICY = "Logging policy (what was shown)"
COLUMNS = [
    "policy",
    "estimator",
    "conversion_rate",
    "se",
    "ci_low",
    "ci_high",
    "rows",
    "effective_sample_size",
    "matched",
    "reason",
]
# a row of a policy must sum to 0 or 1; this much rounding is forgiven
ROW_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PolicyValue:
    """One estimate of a policy's value (its expected reward per journey it acts on)."""

    estimator: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int  # logged decisions
    rows: int  # of which the policy acts on
    effective_sample_size: float  # (sum w)^2 / sum w^2 over the rows acted on
    matched: int  # rows acted on where the policy may take the logged action (pi_e > 0)
    reason: str = ""  # why value or se is NaN; empty when both are numbers


@dataclass(frozen=True)
class _Logged:
    """Validated logged decisions."""

    action: np.ndarray  # int, (n,)
    propensity: np.ndarray  # float, (n,)
    reward: np.ndarray  # float, (n,)
    n_actions: int


def one_hot(choice: np.ndarray | pd.Series | list[int], n_actions: int) -> np.ndarray:
    """The (n, n_actions) matrix of a deterministic policy choosing `choice[i]` for row i;
    `-1` means the policy does not act on that row (a row of zeros)."""
    if not isinstance(n_actions, int | np.integer) or n_actions < 1:
        raise ValueError(f"n_actions must be a positive integer, got {n_actions!r}")
    chosen = _integers(choice, "choice", low=-1, high=int(n_actions) - 1)
    out = np.zeros((len(chosen), int(n_actions)))
    acts = chosen >= 0
    out[np.flatnonzero(acts), chosen[acts]] = 1.0
    return out


def snips(
    policy: np.ndarray,
    logged_action: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    *,
    level: float = 0.95,
) -> PolicyValue:
    """Self-normalised IPS: V = sum w_i r_i / sum w_i with w_i = pi_e(a_i|x_i) / p_i over the
    rows the policy acts on; se^2 = sum w_i^2 (r_i - V)^2 / (sum w_i)^2 (delta method)."""
    z = _z(level)
    pol, logged = _inputs(policy, logged_action, propensity, reward)
    acts, w, matched, ess, reason = _weights(pol, logged)
    base = {"n": len(logged.reward), "rows": int(acts.sum()), "matched": matched}
    if reason:
        return _without_value(SNIPS, reason, effective_sample_size=ess, **base)
    w, r = w[acts], logged.reward[acts]
    value = float(w @ r / w.sum())
    if matched < 2:
        return _with_se(SNIPS, value, np.nan, z, ess, base, "one matched row: no standard error")
    se = float(np.sqrt(np.sum(w**2 * (r - value) ** 2)) / w.sum())
    return _with_se(SNIPS, value, se, z, ess, base)


def doubly_robust(
    policy: np.ndarray,
    logged_action: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q_hat: np.ndarray,
    *,
    level: float = 0.95,
) -> PolicyValue:
    """Doubly robust: V = mean_i [sum_a pi_e(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i))] over the
    rows the policy acts on; se = their sample standard deviation / sqrt(rows)."""
    z = _z(level)
    pol, logged = _inputs(policy, logged_action, propensity, reward)
    q = _q_hat(q_hat, pol.shape)
    acts, w, matched, ess, reason = _weights(pol, logged)
    base = {"n": len(logged.reward), "rows": int(acts.sum()), "matched": matched}
    if reason:
        # the model alone would give a number, but nothing logged would check it
        return _without_value(DOUBLY_ROBUST, reason, effective_sample_size=ess, **base)
    q_logged = q[np.arange(len(q)), logged.action]
    terms = np.sum(pol * q, axis=1) + w * (logged.reward - q_logged)
    terms = terms[acts]
    value = float(terms.mean())
    if len(terms) < 2:
        return _with_se(DOUBLY_ROBUST, value, np.nan, z, ess, base, "one row: no standard error")
    se = float(terms.std(ddof=1) / np.sqrt(len(terms)))
    return _with_se(DOUBLY_ROBUST, value, se, z, ess, base)


def observed(reward: np.ndarray, *, level: float = 0.95) -> PolicyValue:
    """The logging policy's own value: the mean reward over every logged decision, with a Wilson
    interval when rewards are 0/1 (right near 0 and 1, where conversion rates live) and a normal
    one otherwise."""
    z = _z(level)
    r = _floats(reward, "reward")
    if r.ndim != 1 or len(r) == 0:
        raise ValueError(f"reward must be a non-empty 1-D array, got shape {r.shape}")
    _unit_interval(r, "reward")
    n = len(r)
    value = float(r.mean())
    base = {"n": n, "rows": n, "matched": n}
    if np.all((r == 0) | (r == 1)):
        se = float(np.sqrt(value * (1 - value) / n))
        centre = (value + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * float(np.sqrt(value * (1 - value) / n + z**2 / (4 * n**2)))
        low, high = max(0.0, centre - half), min(1.0, centre + half)
        return PolicyValue(OBSERVED, value, se, low, high, effective_sample_size=float(n), **base)
    if n < 2:
        return _with_se(OBSERVED, value, np.nan, z, float(n), base, "one row: no standard error")
    return _with_se(OBSERVED, value, float(r.std(ddof=1) / np.sqrt(n)), z, float(n), base)


def compare_policies(
    policies: Mapping[str, np.ndarray],
    logged_action: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q_hat: np.ndarray,
    level: float = 0.95,
    *,
    logging_policy: str = LOGGING_POLICY,
) -> pd.DataFrame:
    """One row per (policy, estimator): the logging policy's observed value (named
    `logging_policy`) first, then SNIPS and doubly robust for each target policy in order.

    Columns: `COLUMNS`; `conversion_rate` is the value per journey the policy acts on (`rows`).
    """
    # every input checked before any work, each policy's errors naming it
    for name, matrix in policies.items():
        pol, _ = _inputs(matrix, logged_action, propensity, reward, f"policies[{name!r}]")
        _q_hat(q_hat, pol.shape)
    results = [(logging_policy, observed(reward, level=level))]
    for name, matrix in policies.items():
        results.append((name, snips(matrix, logged_action, propensity, reward, level=level)))
        dr = doubly_robust(matrix, logged_action, propensity, reward, q_hat, level=level)
        results.append((name, dr))
    rows = [
        {
            "policy": name,
            "estimator": res.estimator,
            "conversion_rate": res.value,
            "se": res.se,
            "ci_low": res.ci_low,
            "ci_high": res.ci_high,
            "rows": res.rows,
            "effective_sample_size": res.effective_sample_size,
            "matched": res.matched,
            "reason": res.reason,
        }
        for name, res in results
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------------
# the estimators' shared parts


def _weights(pol: np.ndarray, logged: _Logged) -> tuple[np.ndarray, np.ndarray, int, float, str]:
    """Rows acted on, the importance weights pi_e(a_i|x_i) / p_i, matched rows, the weights'
    effective sample size over the rows acted on, and why no value can be given ('' if it can)."""
    acts = pol.sum(axis=1) > 0.5  # rows sum to 0 or 1 (checked)
    w = pol[np.arange(len(pol)), logged.action] / logged.propensity
    matched = int(np.sum(acts & (w > 0)))
    sw, sw2 = float(w[acts].sum()), float((w[acts] ** 2).sum())
    ess = sw**2 / sw2 if sw2 > 0 else 0.0
    if not acts.any():
        return acts, w, 0, 0.0, "the policy acts on no journey"
    if matched == 0:
        reason = (
            f"the policy takes none of the logged touchpoints on the {int(acts.sum())} journeys "
            "it acts on: no logged outcome to weigh"
        )
        return acts, w, 0, 0.0, reason
    return acts, w, matched, ess, ""


def _with_se(
    estimator: str, value: float, se: float, z: float, ess: float, base: dict, reason: str = ""
) -> PolicyValue:
    """A result with its normal interval, both intersected with [0, 1], where every policy's
    value lies: a doubly robust value below 0 (a poor reward model, few matches) is reported as
    0, and its interval as the part of [value -+ z se] inside [0, 1], which still holds it."""
    if np.isnan(se):
        low = high = np.nan
    else:
        low, high = float(np.clip(value - z * se, 0, 1)), float(np.clip(value + z * se, 0, 1))
    return PolicyValue(
        estimator,
        float(np.clip(value, 0, 1)),
        se,
        low,
        high,
        effective_sample_size=ess,
        reason=reason,
        **base,
    )


def _without_value(estimator: str, reason: str, **counts) -> PolicyValue:
    return PolicyValue(estimator, np.nan, np.nan, np.nan, np.nan, reason=reason, **counts)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(stats.norm.ppf(0.5 + level / 2))


# ---------------------------------------------------------------------------------------------
# validation: every message names the argument and the first bad value


def _inputs(
    policy, logged_action, propensity, reward, name: str = "policy"
) -> tuple[np.ndarray, _Logged]:
    """A target policy and the logged decisions, checked against each other."""
    pol = _policy(policy, name)
    logged = _logged(logged_action, propensity, reward, pol.shape[1])
    if pol.shape[0] != len(logged.action):
        raise ValueError(
            f"{name} must have one row per logged_action ({len(logged.action)}), "
            f"got {pol.shape[0]} rows"
        )
    return pol, logged


def _logged(logged_action, propensity, reward, n_actions: int) -> _Logged:
    """The logged decisions, checked: matching lengths, actions in range, propensities in (0, 1],
    rewards in [0, 1]."""
    action = _integers(logged_action, "logged_action", low=0, high=n_actions - 1)
    n = len(action)
    if n == 0:
        raise ValueError("logged_action is empty: no logged decisions to evaluate on")
    p = _floats(propensity, "propensity")
    r = _floats(reward, "reward")
    for arg, arr in (("propensity", p), ("reward", r)):
        if arr.shape != (n,):
            raise ValueError(f"{arg} must have one value per logged_action ({n}), got {arr.shape}")
    bad = np.flatnonzero(~((p > 0) & (p <= 1)))  # NaN fails both
    if len(bad):
        raise ValueError(f"propensity must be in (0, 1], got {_show(p[bad[0]])} at row {bad[0]}")
    _unit_interval(r, "reward")
    return _Logged(action, p, r, n_actions)


def _policy(policy, name: str) -> np.ndarray:
    """A target policy checked: (n, T) probabilities, each row summing to 1 (acts) or 0 (not)."""
    pol = _floats(policy, name)
    if pol.ndim != 2 or pol.shape[1] < 1:
        raise ValueError(
            f"{name} must be a (logged decisions, touchpoints) matrix, got shape {pol.shape}"
        )
    bad = np.argwhere(~((pol >= 0) & (pol <= 1)))
    if len(bad):
        i, a = bad[0]
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got {_show(pol[i, a])} "
            f"at row {i}, touchpoint {a}"
        )
    sums = pol.sum(axis=1)
    off = (np.abs(sums - 1) > ROW_SUM_TOLERANCE) & (np.abs(sums) > ROW_SUM_TOLERANCE)
    bad = np.flatnonzero(off)
    if len(bad):
        raise ValueError(
            f"{name} rows must sum to 1 (acts) or 0 (does not act), "
            f"got {_show(sums[bad[0]])} at row {bad[0]}"
        )
    return pol


def _q_hat(q_hat, shape: tuple[int, int]) -> np.ndarray:
    q = _floats(q_hat, "q_hat")
    if q.shape != shape:
        raise ValueError(f"q_hat must have the policy's shape {shape}, got {q.shape}")
    bad = np.argwhere(~((q >= 0) & (q <= 1)))
    if len(bad):
        i, a = bad[0]
        raise ValueError(
            f"q_hat must be predicted rates in [0, 1], got {_show(q[i, a])} "
            f"at row {i}, touchpoint {a} (fill touchpoints without estimates first)"
        )
    return q


def _unit_interval(values, name: str) -> np.ndarray:
    arr = _floats(values, name)
    bad = np.flatnonzero(~((arr >= 0) & (arr <= 1)))  # NaN fails both
    if len(bad):
        raise ValueError(f"{name} must be in [0, 1], got {_show(arr.flat[bad[0]])} at row {bad[0]}")
    return arr


def _floats(values, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r:.60}") from None


def _integers(values, name: str, low: int, high: int) -> np.ndarray:
    arr = _floats(values, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~((arr >= low) & (arr <= high) & (arr == np.round(arr))))
    if len(bad):
        raise ValueError(
            f"{name} must be integers in [{low}, {high}], got {_show(arr[bad[0]])} at row {bad[0]}"
        )
    return arr.astype(int)


def _show(x) -> str:
    """A number as a reader writes it (5.0, nan), not numpy's repr (np.float64(5.0))."""
    return repr(float(x))
