"""What a touchpoint feed earned: micro- and macro-moment metrics and the measured uplift.

Pure functions from a feed (`feed.parquet`: one row per journey with its predicted intent, its
recommended and allocated touchpoint, the holdout flag) and its checked outcome events
(`core/outcomes.py`):
- `journey_outcomes`: one row per journey of the feed: its arm, the touchpoint shown, whether it
  clicked, converted and returned within the window, how long that took, its value;
- `moment_metrics`: per intent x touchpoint and per intent (micro-moments): impressions,
  click-through, conversion with its interval, time to conversion, bounce, session duration;
- `cohort_metrics`: per cohort of journeys (macro-moments): conversion, days to first purchase,
  return within N days, value per journey over the window;
- `uplift_table`: contacted against held-out journeys, overall, per intent and per touchpoint,
  with Newcombe's interval for a difference of proportions.

The experiment is the feed's own: among journeys the feed recommended a touchpoint for and did
not suppress, the holdout flag (a salted hash of the journey id) decides the arm. The treated arm
counts every journey the feed meant to contact, whether or not the allocation reached it, so the
comparison stays randomised (intention to treat).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

TREATED, CONTROL, OUTSIDE = "contacted", "held out", "not in the test"
MOMENT_COLUMNS = [
    "intent",
    "touchpoint",
    "clicked",
    "converted",
    "hours_to_conversion",
    "bounced",
    "session_s",
]
UPLIFT_LEVELS = {"intent": "intent", "recommended_touchpoint": "touchpoint"}  # column -> level


def feed_time(feed: pd.DataFrame) -> pd.Timestamp:
    """When the feed was built: the start of every journey's outcome window."""
    return pd.Timestamp(pd.to_datetime(feed["scored_at"], utc=True).max())


def journey_outcomes(
    feed: pd.DataFrame, events: pd.DataFrame, window_days: float, return_days: float
) -> pd.DataFrame:
    """One row per journey of the feed, joined with its outcome events within the window."""
    start = feed_time(feed)
    end = start + pd.Timedelta(days=window_days)
    eligible = feed["recommended_touchpoint"].notna() & ~feed["suppressed"].astype(bool)
    holdout = feed["holdout"].astype(bool)
    arm = np.where(eligible & ~holdout, TREATED, np.where(eligible & holdout, CONTROL, OUTSIDE))
    out = pd.DataFrame(
        {
            "journey_id": feed["journey_id"].astype(str).to_numpy(),
            "intent": feed["intent"].to_numpy(),
            "recommended_touchpoint": feed["recommended_touchpoint"].to_numpy(),
            "allocated_touchpoint": feed["allocated_touchpoint"].to_numpy()
            if "allocated_touchpoint" in feed
            else feed["recommended_touchpoint"].where(~holdout).to_numpy(),
            "arm": arm,
        }
    ).set_index("journey_id")
    ev = events.copy()
    ev["converted_at"] = ev["converted_at"].where(ev["converted_at"] <= end)
    ev["value"] = ev["value"].where(ev["converted_at"].notna())
    # each journey's events in the order they were shown, so its first contact gives both the
    # touchpoint and the time it was shown, whatever the order of the rows
    ev = ev.sort_values("shown_at", kind="stable", na_position="last")
    g = ev.groupby("journey_id")
    contacts = ev[ev["touchpoint"].notna()].groupby("journey_id")
    out["touchpoint"] = contacts["touchpoint"].first()
    out["shown_at"] = contacts["shown_at"].min()
    out["clicked"] = contacts["clicked"].max().astype("boolean")
    out["converted_at"] = g["converted_at"].min()
    out["value"] = g["value"].sum(min_count=1)
    out["session_s"] = g["session_s"].first()
    out["bounced"] = g["bounced"].max().astype("boolean")
    out["returned_at"] = g["returned_at"].min()
    out["converted"] = out["converted_at"].notna()
    out["returned"] = out["returned_at"] <= start + pd.Timedelta(days=return_days)
    hours = (out["converted_at"] - out["shown_at"]) / pd.Timedelta(hours=1)
    out["hours_to_conversion"] = hours.where(hours >= 0)  # a purchase before the contact: none
    out["days_to_first_purchase"] = (out["converted_at"] - start) / pd.Timedelta(days=1)
    out["value"] = out["value"].fillna(0.0)
    out["clicked"] = out["clicked"].fillna(False) & out["touchpoint"].notna()
    return out.reset_index()


def _rate_interval(hits: int, n: int, level: float) -> tuple[float, float]:
    if n == 0:
        return np.nan, np.nan
    low, high = proportion_confint(hits, n, alpha=1 - level, method="wilson")
    return float(low), float(high)


def _moments(group: pd.DataFrame, level: float) -> dict:
    """Micro-moment metrics of the contacted journeys in `group`."""
    n = len(group)
    conversions = int(group["converted"].sum())
    low, high = _rate_interval(conversions, n, level)
    clicks = group[group["clicked"]]
    hours = group["hours_to_conversion"].dropna()
    return {
        "impressions": n,
        "clicks": len(clicks),
        "ctr": len(clicks) / n if n else np.nan,
        "conversions": conversions,
        "conversion_rate": conversions / n if n else np.nan,
        "conversion_ci_low": low,
        "conversion_ci_high": high,
        "median_hours_to_conversion": hours.median() if len(hours) else np.nan,
        "p90_hours_to_conversion": hours.quantile(0.9) if len(hours) else np.nan,
        "bounce_rate": clicks["bounced"].astype(float).mean() if len(clicks) else np.nan,
        "median_session_s": clicks["session_s"].median() if len(clicks) else np.nan,
    }


def moment_metrics(
    journeys: pd.DataFrame, classes: Sequence[str], level: float = 0.95
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per intent x touchpoint shown, and per intent: the contacted journeys' metrics."""
    # only the columns the metrics read: every group below is a copy of its rows
    shown = journeys.loc[journeys["touchpoint"].notna(), MOMENT_COLUMNS]
    cells = [
        {"intent": intent, "touchpoint": tp, **_moments(group, level)}
        for (intent, tp), group in shown.groupby(["intent", "touchpoint"], sort=True)
    ]
    per_intent = [{"intent": c, **_moments(shown[shown["intent"] == c], level)} for c in classes]
    by_cell = pd.DataFrame(cells, columns=["intent", "touchpoint", *_moments(shown[:0], level)])
    order = {c: i for i, c in enumerate(classes)}
    by_cell = by_cell.sort_values(
        ["intent", "touchpoint"], key=lambda s: s.map(order) if s.name == "intent" else s
    ).reset_index(drop=True)
    return by_cell, pd.DataFrame(per_intent)


def cohort_metrics(journeys: pd.DataFrame, return_days: float) -> pd.DataFrame:
    """Macro-moments: whole journeys by cohort (contacted, held out, the rest, all);
    `returned_within_days` is the share that came back within `return_days` of the feed."""
    shown = journeys["touchpoint"].notna()
    cohort = np.where(
        shown, "contacted", np.where(journeys["arm"] == CONTROL, "held out", "not contacted")
    )
    rows = []
    for name in ("contacted", "held out", "not contacted", "all"):
        part = journeys if name == "all" else journeys[cohort == name]
        rows.append(
            {
                "cohort": name,
                "journeys": len(part),
                "journey_conversion": part["converted"].mean() if len(part) else np.nan,
                "median_days_to_first_purchase": part["days_to_first_purchase"].median(),
                "returned_within_days": part["returned"].mean() if len(part) else np.nan,
                "value_per_journey": part["value"].mean() if len(part) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _uplift_row(level: str, group: str, part: pd.DataFrame, alpha: float) -> dict:
    treated = part[part["arm"] == TREATED]["converted"]
    control = part[part["arm"] == CONTROL]["converted"]
    n1, n0 = len(treated), len(control)
    x1, x0 = int(treated.sum()), int(control.sum())
    row = {
        "level": level,
        "group": group,
        "treated_journeys": n1,
        "control_journeys": n0,
        "treated_rate": x1 / n1 if n1 else np.nan,
        "control_rate": x0 / n0 if n0 else np.nan,
        "uplift": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
    }
    if n1 and n0:
        low, high = confint_proportions_2indep(
            x1, n1, x0, n0, method="newcomb", compare="diff", alpha=alpha
        )
        row.update(uplift=x1 / n1 - x0 / n0, ci_low=float(low), ci_high=float(high))
    return row


def uplift_table(journeys: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Conversion of contacted minus held-out journeys within the window, with Newcombe's
    interval (hybrid Wilson score): overall, per predicted intent, per recommended touchpoint."""
    alpha = 1 - level
    test = journeys.loc[journeys["arm"] != OUTSIDE, ["arm", "converted", *UPLIFT_LEVELS]]
    rows = [_uplift_row("overall", "all", test, alpha)]
    for col, level_name in UPLIFT_LEVELS.items():
        for value, part in test.groupby(col, sort=True):
            rows.append(_uplift_row(level_name, str(value), part, alpha))
    return pd.DataFrame(rows)


def headline(
    journeys: pd.DataFrame,
    uplift: pd.DataFrame,
    costs: Mapping[str, float],
    start: pd.Timestamp,
    window_days: float,
) -> dict:
    """The numbers a marketer reads first."""
    overall = uplift.iloc[0]
    treated = journeys[journeys["arm"] == TREATED]
    control = journeys[journeys["arm"] == CONTROL]
    shown = journeys[journeys["touchpoint"].notna()]
    cost = float(shown["touchpoint"].map(costs).fillna(0.0).sum())
    conversions = int(treated["converted"].sum())
    n1 = len(treated)
    incremental = overall["uplift"] * n1
    return {
        "date_from": start,
        "date_to": start + pd.Timedelta(days=window_days),
        "window_days": window_days,
        "journeys_measured": len(journeys),
        "journeys_treated": n1,
        "journeys_control": len(control),
        "journeys_contacted": len(shown),
        "conversions": conversions,
        "conversion_rate_treated": overall["treated_rate"],
        "conversion_rate_control": overall["control_rate"],
        "uplift": overall["uplift"],
        "uplift_ci_low": overall["ci_low"],
        "uplift_ci_high": overall["ci_high"],
        "incremental_conversions": incremental,
        "incremental_conversions_low": overall["ci_low"] * n1,
        "incremental_conversions_high": overall["ci_high"] * n1,
        "cost": cost,
        "cost_per_conversion": cost / conversions if conversions else None,
        "cost_per_incremental_conversion": cost / incremental if incremental > 0 else None,
        "value_per_journey_treated": treated["value"].mean() if n1 else None,
        "value_per_journey_control": control["value"].mean() if len(control) else None,
        # the experiment as it ran: contacts the feed did not ask for break the comparison
        "control_journeys_contacted": int(control["touchpoint"].notna().sum()),
        "contacts_not_as_allocated": int(
            (shown["touchpoint"] != shown["allocated_touchpoint"].astype(object)).sum()
        ),
    }


def measure(
    feed: pd.DataFrame,
    events: pd.DataFrame,
    classes: Sequence[str],
    costs: Mapping[str, float],
    window_days: float = 28.0,
    return_days: float = 14.0,
    level: float = 0.95,
) -> dict:
    """Every table `micromoment measure` writes, and its headline numbers."""
    if return_days > window_days:
        raise ValueError(
            f"measure.return_days ({return_days:g}) must not exceed measure.window_days "
            f"({window_days:g}): returns after the window are not in the outcomes"
        )
    journeys = journey_outcomes(feed, events, window_days, return_days)
    by_cell, by_intent = moment_metrics(journeys, classes, level)
    uplift = uplift_table(journeys, level)
    shown = journeys[journeys["touchpoint"].notna()]
    return {
        "journeys": journeys,
        "by_intent_touchpoint": by_cell,
        "by_intent": by_intent,
        "cohorts": cohort_metrics(journeys, return_days),
        "uplift": uplift,
        "time_to_conversion": shown.loc[
            shown["hours_to_conversion"].notna(), ["touchpoint", "hours_to_conversion"]
        ].rename(columns={"hours_to_conversion": "hours"}),
        "headline": headline(journeys, uplift, costs, feed_time(feed), window_days),
    }
