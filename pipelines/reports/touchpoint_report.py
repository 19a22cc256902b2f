"""The marketer's report: figures of the touchpoint estimates, allocation and measured uplift, and
one self-contained HTML page (`build_report`) that a marketer reads from the top.

The page opens with the headline numbers in words, each an element carrying the summary's key and
raw value (`data-key`, `data-value`), so a test can hold what the page says to `summary.json`.
Names are shown as a marketer says them ("I want to go", "Local listing"), counts with thousands
separators, shares as percentages, money with two decimals, and a missing number as a dash.

Figures are `matplotlib.figure.Figure` objects built without pyplot, so drawing them neither needs
a display nor changes the backend of a notebook that imports this module.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from pipelines.core.touchpoints import INSUFFICIENT, intent_label, words

DASH = "\u2014"  # what a number that does not exist is shown as
TOO_LITTLE = "too little data"

# how each headline number is written (see `format_value`); keys of the feed's summary.json and of
# the measured results' headline
HEADLINE_KINDS = {
    "journeys": "count",
    "journeys_contacted": "count",
    "journeys_holdout": "count",
    "journeys_suppressed": "count",
    "expected_conversions_allocated": "count",
    "expected_conversions_unconstrained": "count",
    "allocation_share_of_unconstrained": "share",
    "allocated_cost": "money",
    "expected_cost_per_conversion": "money",
    "date_from": "date",
    "date_to": "date",
    "model_name": "name",
    "model_version": "text",
    "model_alias": "text",
    "window_days": "count",
    "journeys_measured": "count",
    "journeys_treated": "count",
    "journeys_control": "count",
    "conversions": "count",
    "conversion_rate_treated": "share",
    "conversion_rate_control": "share",
    "uplift": "points",
    "uplift_ci_low": "points",
    "uplift_ci_high": "points",
    "incremental_conversions": "count",
    "incremental_conversions_low": "count",
    "incremental_conversions_high": "count",
    "cost": "money",
    "cost_per_conversion": "money",
    "cost_per_incremental_conversion": "money",
}


def _missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def format_value(value, kind: str) -> str:
    """A number or name as the report writes it: `count` 12,345 (infinite: no limit); `share`
    16.1%; `points` +1.2 pts (a difference of rates, in percentage points); `money` 1,234.50;
    `number` 3.5 (no decimals from 10 up); `seconds` 42 s; `date` 3 Mar 2026; `name` in words;
    `text` as is. Missing or NaN: an em dash."""
    if _missing(value):
        return DASH
    if kind == "date":
        day = pd.Timestamp(value)
        return f"{day.day} {day.strftime('%b %Y')}"
    if kind in ("text", "name"):
        return words(value) if kind == "name" else str(value)
    v = float(value)
    if kind == "count":
        return "no limit" if math.isinf(v) else f"{round(v):,}"
    if not math.isfinite(v):
        return DASH
    formats = {
        "share": lambda: f"{100 * v:.1f}%",
        "points": lambda: f"{round(100 * v, 1) + 0.0:+.1f} pts",  # never "-0.0"
        "money": lambda: f"{v:,.2f}",
        "seconds": lambda: f"{v:,.0f} s",
        "number": lambda: f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}",
    }
    if kind not in formats:
        raise ValueError(f"unknown number format {kind!r}")
    return formats[kind]()


def headline_text(key: str, value) -> str:
    """The text of one headline number of the page."""
    return format_value(value, HEADLINE_KINDS.get(key, "text"))


def data_value(value) -> str:
    """A headline number's `data-value`: its value as summary.json holds it (a JSON string
    without its quotes, anything else as JSON)."""
    parsed = json.loads(json.dumps(value, default=str))
    return parsed if isinstance(parsed, str) else json.dumps(parsed)


# ---------------------------------------------------------------------------------------------
# figures


def _label(labels: Mapping[str, str] | None, name) -> str:
    return (labels or {}).get(name) or words(name)


def conversion_heatmap(
    estimates: pd.DataFrame,
    classes: Sequence[str],
    touchpoints: Sequence[str],
    labels: Mapping[str, str] | None = None,
):
    """Estimated conversion rate per intent x touchpoint; cells without enough data say so."""
    table = estimates.pivot(index="intent", columns="touchpoint", values="rate").reindex(
        index=list(classes), columns=list(touchpoints)
    )
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(1.05 * len(touchpoints) + 2.8, 0.7 * len(classes) + 2))
    ax = fig.add_subplot()
    vmax = np.nanmax(values) if np.isfinite(values).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(values), cmap="YlGn", vmin=0, vmax=vmax, aspect="auto")
    ax.set_facecolor("#eeeeee")
    ax.set_xticks(
        range(len(touchpoints)), [_label(labels, t) for t in touchpoints], rotation=30, ha="right"
    )
    ax.set_yticks(range(len(classes)), [intent_label(c) for c in classes])
    for i in range(len(classes)):
        for j in range(len(touchpoints)):
            v = values[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "too little\ndata", ha="center", va="center", fontsize=7, color="0.4")
                continue
            dark = v > 0.6 * vmax
            ax.text(
                j,
                i,
                f"{100 * v:.1f}%",
                ha="center",
                va="center",
                color="white" if dark else "black",
            )
    bar = fig.colorbar(im, ax=ax, fraction=0.04, label="conversion rate")
    bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title("Which touchpoint converts which moment")
    fig.tight_layout()
    return fig


def conversion_intervals(
    estimates: pd.DataFrame,
    classes: Sequence[str],
    labels: Mapping[str, str] | None = None,
    level: float = 0.95,
):
    """Conversion per touchpoint with its interval, one panel per intent, all on one x scale."""
    k = len(classes)
    fig = Figure(figsize=(2.7 * k + 1.6, 3.6))
    axes = fig.subplots(1, k, sharex=True, sharey=True, squeeze=False)[0]
    high = pd.to_numeric(estimates["ci_high"], errors="coerce").to_numpy(dtype=float)
    xmax = 100 * float(np.nanmax(high)) * 1.08 if np.isfinite(high).any() else 1.0
    for ax, c in zip(axes, classes, strict=True):
        part = estimates[estimates["intent"] == c].reset_index(drop=True)
        y = np.arange(len(part))
        ok = part["status"].eq("ok").to_numpy()
        rate = part["rate"].to_numpy(dtype=float)
        # a cell that never converted, of a touchpoint that never did, has a Beta posterior piled
        # at 0 whose (tiny) mean lies above its central interval: its bar is drawn from 0
        err = np.clip(np.vstack([rate - part["ci_low"], part["ci_high"] - rate]), 0, None)
        ax.errorbar(100 * rate[ok], y[ok], xerr=100 * err[:, ok], fmt="o", capsize=3)
        for yi in y[~ok]:
            ax.text(0, yi, " too little data", va="center", fontsize=8, color="grey")
        ax.set_yticks(y, [_label(labels, t) for t in part["touchpoint"]])
        ax.set_title(intent_label(c))
        ax.set_xlabel("conversion rate")
        ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, xmax)  # shared: one scale for every panel
    axes[0].invert_yaxis()
    fig.suptitle(f"Estimated conversion rate with {100 * level:.0f}% intervals")
    fig.tight_layout()
    return fig


def allocation_chart(table: pd.DataFrame, labels: Mapping[str, str] | None = None):
    """Contacts per touchpoint: the budgeted allocation against capacity and the unconstrained
    best choice per journey."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(table) + 2), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["unconstrained"], width=0.4, label="best per journey (no limits)")
    ax.bar(x + 0.2, table["allocated"], width=0.4, label="allocated")
    cap = table["capacity"].to_numpy(dtype=float)
    for xi, c in zip(x, cap, strict=True):
        if np.isfinite(c):
            ax.hlines(c, xi - 0.45, xi + 0.45, colors="black", linestyles="dashed")
    ax.plot([], [], "k--", label="capacity")
    ax.set_xticks(x, [_label(labels, t) for t in table.index], rotation=30, ha="right")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:,.0f}")
    ax.set_ylabel("journeys contacted")
    ax.set_title("Allocation against capacity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def intent_mix_chart(mix: pd.DataFrame, classes: Sequence[str], by: str):
    """Stacked shares of predicted intent for each entry channel (or touchpoint)."""
    shares = mix[list(classes)].fillna(0)
    fig = Figure(figsize=(max(6.0, 0.8 * len(shares) + 3), 3.8))
    ax = fig.add_subplot()
    bottom = np.zeros(len(shares))
    names = [words(i) if i != "(none)" else "none" for i in shares.index.astype(str)]
    for c in classes:
        ax.bar(names, shares[c], bottom=bottom, label=intent_label(c))
        bottom += shares[c].to_numpy()
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("share of sessions")
    ax.set_title(f"Intent mix by {by}")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="moment", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


MIN_ARM_JOURNEYS = 30  # fewer in either arm: the uplift figure says too little data
UPLIFT_PANELS = {"overall": "All journeys", "intent": "By moment", "touchpoint": "By touchpoint"}


def uplift_chart(
    uplift: pd.DataFrame,
    classes: Sequence[str],
    labels: Mapping[str, str] | None = None,
    level: float = 0.95,
    min_journeys: int = MIN_ARM_JOURNEYS,
):
    """Measured uplift (contacted minus held-out conversion rate, in percentage points) with its
    interval: overall, per intent and per touchpoint, stacked on one common x scale. A group with
    fewer than `min_journeys` journeys in either arm says so rather than stretch the scale for
    everyone with an interval tens of points wide."""
    uplift = in_catalogue_order(uplift, classes, labels or {})
    enough = np.ones(len(uplift), dtype=bool)
    for arm in ("treated_journeys", "control_journeys"):
        if arm in uplift:
            enough &= uplift[arm].to_numpy(dtype=float) >= min_journeys
    uplift = uplift.assign(**{c: uplift[c].where(enough) for c in ("uplift", "ci_low", "ci_high")})
    levels = list(UPLIFT_PANELS) + [
        lv for lv in uplift["level"].unique() if lv not in UPLIFT_PANELS
    ]
    parts = [(lv, uplift[uplift["level"] == lv].reset_index(drop=True)) for lv in levels]
    parts = [(lv, p) for lv, p in parts if len(p)]
    sizes = [len(p) for _, p in parts]
    fig = Figure(figsize=(8.5, 1.0 + 0.38 * sum(sizes) + 0.5 * len(parts)))
    axes = fig.subplots(len(parts), 1, sharex=True, squeeze=False, height_ratios=sizes)[:, 0]
    bounds = 100 * pd.concat([uplift["ci_low"], uplift["ci_high"], pd.Series([0.0])]).astype(float)
    lo, hi = np.nanmin(bounds), np.nanmax(bounds)
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    for ax, (lv, part) in zip(axes, parts, strict=True):
        y = np.arange(len(part))
        u = 100 * part["uplift"].to_numpy(dtype=float)
        err = np.abs(np.vstack([u - 100 * part["ci_low"], 100 * part["ci_high"] - u]))
        ok = np.isfinite(u) & np.isfinite(err).all(axis=0)
        ax.errorbar(u[ok], y[ok], xerr=err[:, ok], fmt="o", capsize=3, color="#1f6feb")
        for yi in y[~ok]:
            ax.text(lo - pad, yi, " too little data", va="center", fontsize=8, color="grey")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [_group_name(lv, g, labels) for g in part["group"]])
        ax.set_ylim(len(part) - 0.5, -0.5)
        ax.set_title(UPLIFT_PANELS.get(lv) or words(lv), loc="left", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(lo - pad, hi + pad)  # shared: one scale for every panel
    axes[-1].set_xlabel("uplift in conversion rate (percentage points)")
    fig.suptitle(f"Measured uplift with {100 * level:.0f}% intervals")
    fig.tight_layout()
    return fig


def _group_name(level: str, group, labels: Mapping[str, str] | None) -> str:
    if level == "intent":
        return intent_label(group)
    if level == "touchpoint":
        return _label(labels, group)
    return "All journeys"


def time_to_conversion_chart(times: pd.DataFrame, labels: Mapping[str, str] | None = None):
    """Hours from contact to conversion, one box per touchpoint."""
    order = list(labels or {}) + sorted(set(times["touchpoint"].dropna()) - set(labels or {}))
    hours = {t: g["hours"].dropna().to_numpy(dtype=float) for t, g in times.groupby("touchpoint")}
    groups = [(t, hours[t]) for t in order if t in hours and len(hours[t])]
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2), 3.6))
    ax = fig.add_subplot()
    if groups:
        ax.boxplot([h for _, h in groups], showfliers=False)
        ax.set_xticks(
            range(1, len(groups) + 1),
            [_label(labels, t) for t, _ in groups],
            rotation=30,
            ha="right",
        )
    ax.set_ylabel("hours from contact to conversion")
    ax.set_title("How soon conversions come")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# tables


# column -> (header, format); a column not here is named in words and formatted by its type
COLUMNS = {
    "sessions": ("Sessions", "count"),
    "journeys": ("Journeys", "count"),
    "capacity": ("Capacity", "count"),
    "cost": ("Cost per contact", "money"),
    "unconstrained": ("Best per journey (no limits)", "count"),
    "allocated": ("Allocated", "count"),
    "allocated_cost": ("Allocated cost", "money"),
    "shown": ("Sessions shown", "count"),
    "conversions": ("Conversions", "count"),
    "effective_sessions": ("Effective sessions", "count"),
    "rate": ("Conversion rate", "share"),
    "status": ("Estimate", "text"),
    "conversion_rate": ("Conversion rate", "share"),
    "expected_conversions": ("Expected conversions", "count"),
    "median_session_s": ("Median session", "seconds"),
    "median_converting_session_s": ("Median converting session", "seconds"),
    "journey_conversion_rate": ("Journey conversion rate", "share"),
    "sessions_per_journey": ("Sessions per journey", "number"),
    "median_days_to_convert": ("Median days to convert", "number"),
    "treated_journeys": ("Contacted journeys", "count"),
    "control_journeys": ("Held-out journeys", "count"),
    "treated_rate": ("Conversion rate, contacted", "share"),
    "control_rate": ("Conversion rate, held out", "share"),
    "uplift": ("Uplift", "points"),
    "impressions": ("Impressions", "count"),
    "ctr": ("Click-through rate", "share"),
    "median_hours_to_conversion": ("Median hours to conversion", "number"),
    "p90_hours_to_conversion": ("Hours for 9 in 10 conversions", "number"),
    "bounce_rate": ("Bounce rate", "share"),
    "journey_conversion": ("Journey conversion", "share"),
    "median_days_to_first_purchase": ("Median days to first purchase", "number"),
    "returned_within_days": ("Returned within the window", "share"),
    "value_per_journey": ("Value per journey", "money"),
}
# (low, high) column pairs shown with the column just before them: "4.1% (3.2% to 5.1%)"
INTERVALS = {
    "ci_low": "ci_high",
    "conversion_ci_low": "conversion_ci_high",
    "expected_conversions_low": "expected_conversions_high",
}
NAME_COLUMNS = {"touchpoint", "recommended_touchpoint", "allocated_touchpoint"}
HIDDEN = {"se_ipw", "rate_ipw", "prior_rate"}  # the estimator's inner workings
AS_IS = {"policy", "estimator", "group"}  # already in words
SPECIAL = {"(all)": "All journeys", "(none)": "None", "all": "All journeys"}


def _kind_of(col: str, series: pd.Series) -> str:
    if col in COLUMNS:
        return COLUMNS[col][1]
    if pd.api.types.is_bool_dtype(series):
        return "text"
    if pd.api.types.is_integer_dtype(series):
        return "count"
    return "number" if pd.api.types.is_float_dtype(series) else "text"


def _name_cell(col: str, value, classes: Sequence[str], labels: Mapping[str, str]) -> str:
    """A name in a table as a marketer reads it."""
    if _missing(value):
        return DASH
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    value = str(value)
    if col == "intent" and value in classes:
        return intent_label(value)
    if col in NAME_COLUMNS or value in labels:
        return _label(labels, value)
    if col == "status":
        return {"ok": "estimated", INSUFFICIENT: TOO_LITTLE}.get(value, value)
    if value in SPECIAL:
        return SPECIAL[value]
    return value if col in AS_IS else words(value)


def _header(col, classes: Sequence[str], labels: Mapping[str, str]) -> str:
    if col in classes:
        return intent_label(col)
    if col in labels:
        return labels[col]
    if col in COLUMNS:
        return COLUMNS[col][0]
    named = {"intent": "Moment", "touchpoint": "Touchpoint", "entry_channel": "Entry channel"}
    return named.get(col, words(col))


def display_table(
    frame: pd.DataFrame,
    classes: Sequence[str],
    labels: Mapping[str, str],
    level: float = 0.95,
    shares: bool = False,
) -> pd.DataFrame:
    """A table as the report shows it: every cell text, headers in words, names as a marketer
    says them, and each (low, high) pair written beside the value before it, "4.1% (3.2% to
    5.1%)". `shares`: the intent columns hold shares (an intent mix), not counts. The headers of
    text columns are listed in `.attrs["text"]`."""
    flat = frame.reset_index() if any(n is not None for n in frame.index.names) else frame
    flat = flat.drop(columns=[c for c in flat.columns if c in HIDDEN])
    out: dict[str, list[str]] = {}
    text: list[str] = []
    previous, previous_kind, skip = None, "number", set()
    for col in flat.columns:
        if col in skip:
            continue  # written with its low end
        if col in INTERVALS and INTERVALS[col] in flat and previous is not None:
            skip.add(INTERVALS[col])
            pairs = zip(flat[col], flat[INTERVALS[col]], strict=True)
            out[previous] = [  # may wrap before the interval, nowhere else
                f"{cell} ({_unbroken(_interval(lo, hi, previous_kind))})" if cell != DASH else cell
                for cell, (lo, hi) in zip(out[previous], pairs, strict=True)
            ]
            out[f"{previous} ({100 * level:.0f}% interval)"] = out.pop(previous)
            previous = None
            continue
        kind = ("share" if shares else "count") if col in classes else _kind_of(str(col), flat[col])
        header = _header(col, classes, labels)
        if kind == "text":
            out[header] = [_name_cell(str(col), v, classes, labels) for v in flat[col]]
            text.append(header)
        else:
            out[header] = [_unbroken(format_value(v, kind)) for v in flat[col]]
        previous, previous_kind = header, kind
    shown = pd.DataFrame(out)
    shown.attrs["text"] = text
    return shown


def _unbroken(text: str) -> str:
    return text.replace(" ", "\u00a0")


def _interval(lo, hi, kind: str) -> str:
    """An interval's two ends, "3.2% to 5.1%"; for points "+0.4 to +2.0", the unit being
    written once, with the value."""
    if _missing(lo) or _missing(hi):
        return DASH
    lo, hi = (format_value(v, kind).removesuffix(" pts") for v in (lo, hi))
    return f"{lo} to {hi}"


def table_html(shown: pd.DataFrame) -> str:
    """A display table (`display_table`) as HTML, inside a container that scrolls rather than
    letting a wide table widen the page."""
    text = set(shown.attrs.get("text", ()))
    cls = ["" if c not in text else ' class="t"' for c in shown.columns]
    head = "".join(
        f'<th scope="col"{k}>{html.escape(str(c))}</th>'
        for c, k in zip(shown.columns, cls, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{k}>{html.escape(str(v))}</td>" for v, k in zip(row, cls, strict=True))
        + "</tr>"
        for row in shown.itertuples(index=False)
    )
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


# ---------------------------------------------------------------------------------------------
# a sample of journeys


def journey_sample(
    feed: pd.DataFrame,
    classes: Sequence[str],
    labels: Mapping[str, str],
    reached: int = 8,
    held_out: int = 2,
) -> pd.DataFrame:
    """A few journeys as the feed treats them, chosen the same way every time: the reached
    journeys with the highest expected conversion, taking each moment in turn (the best of each
    moment first), then the held-out journeys with the highest expected conversion. Each with its
    moment now, its touchpoint, its expected conversion and why (its reason codes when it was
    scored with them, else its intent probabilities)."""
    frame = feed.reset_index(drop=True)
    if "allocated_touchpoint" in frame:
        frame = frame.assign(
            _tp=frame["allocated_touchpoint"], _exp=frame["allocated_expected_conversion"]
        )
    else:
        frame = frame.assign(
            _tp=frame["recommended_touchpoint"].where(frame["contact"]),
            _exp=frame["expected_conversion"],
        )
    frame["_exp"] = pd.to_numeric(frame["_exp"], errors="coerce").fillna(-1.0)
    frame = frame.sort_values(["_exp", "journey_id"], ascending=[False, True], kind="mergesort")
    picked = frame[frame["_tp"].notna()]
    turn = picked.groupby(picked["intent"].astype(object).fillna(""), sort=False).cumcount()
    picked = picked.assign(_turn=turn).sort_values("_turn", kind="mergesort").head(reached)
    holdout = frame["holdout"] if "holdout" in frame else pd.Series(False, index=frame.index)
    control = frame[holdout.astype(bool) & frame["recommended_touchpoint"].notna()]
    control = control.sort_values(
        ["expected_conversion", "journey_id"], ascending=[False, True], kind="mergesort"
    ).head(held_out)
    rows = [_sample_row(r, True, classes, labels) for _, r in picked.iterrows()]
    rows += [_sample_row(r, False, classes, labels) for _, r in control.iterrows()]
    shown = pd.DataFrame(
        rows, columns=["Journey", "Moment now", "Touchpoint", "Expected conversion", "Why"]
    )
    shown.attrs["text"] = ["Journey", "Moment now", "Touchpoint", "Why"]
    return shown


def _sample_row(row: pd.Series, reached: bool, classes, labels) -> list[str]:
    if reached:
        touchpoint, expected = _label(labels, row["_tp"]), row["_exp"]
    else:
        rec = _label(labels, row["recommended_touchpoint"])
        touchpoint = f"held out (would get {rec})"
        expected = row["expected_conversion"]
    intent = row.get("intent")
    moment = DASH if _missing(intent) else intent_label(intent)
    return [
        str(row["journey_id"]),
        moment,
        touchpoint,
        format_value(expected, "share"),
        _why(row, classes),
    ]


def _why(row: pd.Series, classes: Sequence[str]) -> str:
    """A journey's reasons for its moment in words, else its intent probabilities."""
    raw = row.get("reasons")
    if isinstance(raw, str) and raw:
        found = [r.get("value") or words(r.get("reason", "")) for r in json.loads(raw)]
        if found:
            return "; ".join(found[:3])
    codes = sorted((c for c in row.index if re.fullmatch(r"reason_\d+", str(c))), key=_reason_no)
    found = [re.sub(r"\s*\([+-][\d.]+\)$", "", str(row[c])) for c in codes if not _missing(row[c])]
    if found:
        return "; ".join(found[:3])
    probs = {
        c: float(row[f"p_{c}"]) for c in classes if f"p_{c}" in row and not _missing(row[f"p_{c}"])
    }
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:2]
    return ", ".join(f"{intent_label(c)} {format_value(p, 'share')}" for c, p in top) or DASH


def _reason_no(col: str) -> int:
    return int(col.split("_")[1])


# ---------------------------------------------------------------------------------------------
# the page


def _number(key: str, values: Mapping[str, object], source: str, cls: str = "") -> str:
    """One headline number: its text, and the key and raw value it comes from."""
    v = values.get(key)
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<span{klass} data-source="{source}" data-key="{html.escape(key)}" '
        f'data-value="{html.escape(data_value(v))}">{html.escape(headline_text(key, v))}</span>'
    )


def _kpi(number: str, what: str) -> str:
    return f'<div class="kpi">{number}<p class="what">{what}</p></div>'


def _meta(summary: Mapping[str, object], measured: Mapping[str, object] | None) -> str:
    """The line under the title: the sessions' dates, the model, the outcome window."""
    s = summary
    parts = []
    if not (_missing(s.get("date_from")) or _missing(s.get("date_to"))):
        dates = f"{_number('date_from', s, 'feed')} to {_number('date_to', s, 'feed')}"
        parts.append(f"Sessions from {dates}.")
    model = f"Scored by the {_number('model_name', s, 'feed')} model, version "
    model += _number("model_version", s, "feed")
    if not _missing(s.get("model_alias")):
        model += f" ({_number('model_alias', s, 'feed')})"
    parts.append(model + ".")
    if measured is not None:
        window = f"{_number('date_from', measured, 'measured')} to "
        window += f"{_number('date_to', measured, 'measured')}"
        days = _number("window_days", measured, "measured")
        parts.append(f"Outcomes measured from {window} ({days} days).")
    return f'<p class="meta">{" ".join(parts)}</p>'


def _feed_kpis(s: Mapping[str, object]) -> list[str]:
    f = "feed"
    cards = [
        _kpi(
            _number("journeys_contacted", s, f, "num"),
            f"journeys reached, of {_number('journeys', s, f)} journeys in the feed",
        ),
        _kpi(
            _number("expected_conversions_allocated", s, f, "num"),
            "expected conversions from the journeys reached "
            f"({_number('allocation_share_of_unconstrained', s, f)} of the "
            f"{_number('expected_conversions_unconstrained', s, f)} expected without capacity "
            "or budget limits)",
        ),
    ]
    if "expected_cost_per_conversion" in s:
        cards.append(
            _kpi(
                _number("expected_cost_per_conversion", s, f, "num"),
                "expected cost per conversion "
                f"({_number('allocated_cost', s, f)} spent on contacts)",
            )
        )
    else:
        cards.append(_kpi(_number("allocated_cost", s, f, "num"), "spent on contacts"))
    return cards


def _measured_kpis(m: Mapping[str, object], level: float) -> list[str]:
    f, pct = "measured", f"{100 * level:.0f}%"
    return [
        _kpi(
            _number("conversions", m, f, "num"),
            f"conversions measured in the contacted arm, the {_number('journeys_treated', m, f)} "
            "journeys the feed chose to contact "
            f"({_number('conversion_rate_treated', m, f)} converted, against "
            f"{_number('conversion_rate_control', m, f)} of the "
            f"{_number('journeys_control', m, f)} held out)",
        ),
        _kpi(
            _number("uplift", m, f, "num"),
            "uplift in conversion rate over the held-out journeys, in percentage points "
            f"({pct} interval "
            f"{_number('uplift_ci_low', m, f)} to {_number('uplift_ci_high', m, f)})",
        ),
        _kpi(
            _number("incremental_conversions", m, f, "num"),
            f"incremental conversions the feed caused ({pct} interval "
            f"{_number('incremental_conversions_low', m, f)} to "
            f"{_number('incremental_conversions_high', m, f)})",
        ),
        _kpi(
            _number("cost_per_conversion", m, f, "num"),
            f"cost per measured conversion ({_number('cost_per_incremental_conversion', m, f)} "
            f"per incremental conversion; {_number('cost', m, f)} spent)",
        ),
    ]


def _headline(summary: Mapping[str, object], measured: Mapping[str, object] | None, level) -> str:
    cards = _feed_kpis(summary)
    if measured is not None:
        cards += _measured_kpis(measured, level)
    s = summary
    context = (
        f"{_number('journeys_holdout', s, 'feed')} journeys are held out as a control group and "
        f"{_number('journeys_suppressed', s, 'feed')} are not contacted (a recent conversion, or "
        "no touchpoint they may get)."
    )
    return (
        f'<section class="kpis" aria-label="Headline numbers">{"".join(cards)}</section>'
        f'<p class="context">{context}</p>'
    )


# table -> (title, what to read in it); {pct} is the intervals' level
TABLES = {
    "uplift": (
        "Uplift: contacted against held out",
        "Conversion rates of contacted and held-out journeys and their difference in percentage "
        "points, with its {pct} interval: overall, by moment and by touchpoint.",
    ),
    "cohorts": (
        "Journeys over the outcome window",
        "How contacted and held-out journeys did over the whole window: journey conversion, days "
        "to the first purchase, the share that came back, and value per journey.",
    ),
    "by_intent": (
        "Measured by moment",
        "Impressions, click-through, conversion (with its {pct} interval), time to conversion, "
        "bounce and session length, by moment at the time of contact.",
    ),
    "by_intent_touchpoint": (
        "Measured by moment and touchpoint",
        "The same measures for every moment and touchpoint.",
    ),
    "policy_value": (
        "Expected conversions by policy",
        "What each way of choosing touchpoints is expected to earn on these journeys, estimated "
        "from the touchpoints shown before the feed, with {pct} intervals. Observed: what the "
        "logged choices earned.",
    ),
    "allocation": (
        "Contacts by touchpoint",
        "Journeys each touchpoint reaches under its capacity and the budget, against the best "
        "choice per journey without limits, and what it costs.",
    ),
    "recommendations_by_intent": (
        "Recommended touchpoint by moment",
        "Journeys by their moment now and the touchpoint the feed recommends, before capacity "
        "and budget limits.",
    ),
    "intent_mix_by_channel": (
        "Moments by entry channel",
        "Share of sessions in each moment, by the channel the session came from.",
    ),
    "intent_mix_by_touchpoint_shown": (
        "Moments by touchpoint shown",
        "Share of sessions in each moment, by the touchpoint they were shown before the feed.",
    ),
    "micro_moment_metrics": (
        "Micro-moments: sessions",
        "One session each, by predicted moment: how often it converts and how long it lasts.",
    ),
    "macro_moment_metrics": (
        "Macro-moments: journeys",
        "Whole journeys, by the channel they entered through: how often they convert, how many "
        "sessions they take and how many days to the conversion.",
    ),
    "conversion_by_intent_and_touchpoint": (
        "All conversion estimates",
        "Every moment and touchpoint: sessions shown, conversions, effective sessions (what the "
        "weighted sessions are worth as evidence) and the estimated rate with its {pct} interval.",
    ),
}
FOLDED = {"conversion_by_intent_and_touchpoint", "by_intent_touchpoint"}  # long: open on a click

CAPTIONS = {
    "uplift": "Each dot is how much higher the conversion rate of contacted journeys (every "
    "journey the feed chose to contact, reached or not) is than that of held-out journeys, in "
    "percentage points, with its {pct} interval; all panels share one "
    "scale. An interval that crosses the zero line cannot be told apart from no effect; a group "
    f"with fewer than {MIN_ARM_JOURNEYS} journeys on either side has too little data (its "
    "numbers are in the table below).",
    "time_to_conversion": "Hours from contact to conversion for each touchpoint: the box holds "
    "the middle half of the conversions, the line inside it is the median.",
    "conversion_heatmap": "Each cell is the estimated share of sessions in that moment that "
    "convert when shown that touchpoint. Read across a row for the touchpoint that converts that "
    "moment best; a touchpoint with too little data for a moment is not recommended until it "
    "has more.",
    "conversion_intervals": "The same estimates with their {pct} intervals, one panel per moment, "
    "all on one scale. Where two touchpoints' bars overlap, the data cannot yet tell which "
    "converts better.",
    "allocation": "Blue: journeys for which each touchpoint is the best choice with no limits; "
    "orange: journeys it reaches once capacity (dashed line) and budget apply. A touchpoint held "
    "at its dashed line well below its blue bar would earn more with more capacity.",
    "intent_mix_by_channel": "Share of sessions in each moment by the channel the session came "
    "from: where each moment begins.",
}

STYLE = """
body { font-family: system-ui, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
  padding: 1.2em 1.5em 3em; max-width: 1100px; color: #1f2328; line-height: 1.45; }
h1 { margin: 0 0 0.2em; font-size: 1.7em; }
h2 { margin: 1.6em 0 0.4em; font-size: 1.3em; border-bottom: 1px solid #d0d7de; }
h3 { margin: 1.2em 0 0.2em; font-size: 1.05em; }
.meta, .context, .intro { color: #424a53; margin: 0.2em 0 0.8em; }
.context { margin-top: 0.8em; }
.kpis { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 0.8em; }
.kpi { border: 1px solid #d0d7de; border-radius: 8px; padding: 0.7em 1em; background: #f6f8fa; }
.kpi .num { display: block; font-size: 1.9em; font-weight: 600; }
.kpi .what { margin: 0.2em 0 0; color: #424a53; font-size: 0.92em; }
figure { margin: 1.2em 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: #424a53; font-size: 0.92em; margin-top: 0.3em; max-width: 80ch; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.3em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.86em; }
th, td { padding: 0.25em 0.5em; border-bottom: 1px solid #d8dee4; text-align: right;
  vertical-align: top; overflow-wrap: break-word; }
th { background: #f6f8fa; }
th.t, td.t { text-align: left; }
td.t { min-width: 7.5em; }
details > summary { cursor: pointer; font-weight: 600; margin: 1em 0 0.3em; }
"""


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def figure_html(png: bytes, caption: str) -> str:
    """A figure embedded as a data: URI, with its caption under it."""
    w, h = _png_size(png)
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    return (
        f'<figure><img src="{src}" width="{w}" height="{h}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table_section(name: str, shown: pd.DataFrame, level: float) -> str:
    title, intro = TABLES.get(name, (words(name), ""))
    intro = intro.format(pct=f"{100 * level:.0f}%")
    body = f'<p class="intro">{html.escape(intro)}</p>' if intro else ""
    body += table_html(shown) if len(shown) else '<p class="intro">Nothing to show.</p>'
    if name in FOLDED:
        return f"<details><summary>{html.escape(title)}</summary>{body}</details>"
    return f"<h3>{html.escape(title)}</h3>{body}"


def report_figures(
    estimates: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    classes: Sequence[str],
    labels: Mapping[str, str],
    measured: Mapping[str, object] | None = None,
    level: float = 0.95,
) -> dict[str, Figure]:
    """The report's figures by name, in the order the page shows them."""
    figures: dict[str, Figure] = {}
    if measured is not None and len(measured.get("uplift", ())):
        figures["uplift"] = uplift_chart(measured["uplift"], classes, labels, level)
    if measured is not None and len(measured.get("time_to_conversion", ())):
        figures["time_to_conversion"] = time_to_conversion_chart(
            measured["time_to_conversion"], labels
        )
    figures["conversion_heatmap"] = conversion_heatmap(estimates, classes, list(labels), labels)
    figures["conversion_intervals"] = conversion_intervals(estimates, classes, labels, level)
    if "allocation" in tables:
        figures["allocation"] = allocation_chart(tables["allocation"], labels)
    if "intent_mix_by_channel" in tables:
        figures["intent_mix_by_channel"] = intent_mix_chart(
            tables["intent_mix_by_channel"], classes, "entry channel"
        )
    return figures


def _notes(summary: Mapping[str, object], labels: Mapping[str, str], level: float) -> list[str]:
    """How the numbers were made, in a few sentences."""
    s = summary
    source = {"label": "the sessions' intent labels", "predicted": "the model's predicted moments"}
    notes = [
        "Conversion rates are estimated from the touchpoints shown before the feed, each session "
        "weighted by how likely the old policy was to show it that touchpoint, and drawn towards "
        "the touchpoint's rate over all moments when the evidence is thin; the moments come from "
        f"{source.get(str(s.get('intent_source_for_estimates')), 'the model')}. Intervals are "
        f"central {100 * level:.0f}% intervals."
    ]
    if "cells_estimated" in s and "cells_insufficient" in s:
        total = int(s["cells_estimated"]) + int(s["cells_insufficient"])
        notes.append(
            f"{format_value(s['cells_estimated'], 'count')} of {format_value(total, 'count')} "
            "moment and touchpoint pairs have enough data for an estimate."
        )
    missing = [_label(labels, t) for t in s.get("touchpoints_without_estimates") or []]
    notes.append(
        "Touchpoints never recommended for lack of data: "
        + (", ".join(missing) if missing else "none this time")
        + "."
    )
    if s.get("allocation_status"):
        notes.append(f"The allocation under capacity and budget is {s['allocation_status']}.")
    return notes


AUDIENCE_TABLES = (
    "intent_mix_by_channel",
    "intent_mix_by_touchpoint_shown",
    "micro_moment_metrics",
    "macro_moment_metrics",
    "conversion_by_intent_and_touchpoint",
)
FEED_TABLES = ("allocation", "recommendations_by_intent", "policy_value", *AUDIENCE_TABLES)
MEASURED_TABLES = ("uplift", "cohorts", "by_intent", "by_intent_touchpoint")


def _shown_tables(tables, measured, classes, labels, level) -> dict[str, pd.DataFrame]:
    """Every table the page shows, as display tables by name."""
    shown = {}
    for name in MEASURED_TABLES if measured is not None else ():
        if measured.get(name) is None:
            continue
        frame = in_catalogue_order(measured[name], classes, labels)
        if name == "uplift":  # one column of names: "All journeys", "I want to go", "Search ad"
            names = [
                _group_name(lv, g, labels)
                for lv, g in zip(frame["level"], frame["group"], strict=True)
            ]
            frame = frame.assign(group=names).drop(columns="level")
        shown[name] = display_table(frame, classes, labels, level)
    for name in FEED_TABLES:
        if name in tables:
            mix = name.startswith("intent_mix")
            frame = in_catalogue_order(tables[name], classes, labels)
            shown[name] = display_table(frame, classes, labels, level, shares=mix)
    return shown


def _position(value, order: Sequence) -> int:
    return order.index(value) if value in order else len(order)


def in_catalogue_order(
    frame: pd.DataFrame, classes: Sequence[str], labels: Mapping[str, str]
) -> pd.DataFrame:
    """A table with intents in the classes' order and touchpoints in the catalogue's (others
    after them), wherever they index it, name its columns or fill its `intent`, `touchpoint`
    or uplift `group` column: a crosstab or a groupby sorts them alphabetically."""
    order = {"intent": list(classes), "touchpoint": list(labels)}
    if frame.index.name in order:
        first = [v for v in order[frame.index.name] if v in frame.index]
        frame = frame.reindex(first + [v for v in frame.index if v not in first])
    if frame.columns.name in order:
        first = [v for v in order[frame.columns.name] if v in frame.columns]
        frame = frame[first + [v for v in frame.columns if v not in first]]
    keys = []  # most significant first
    if "level" in frame and "group" in frame:  # the uplift table
        keys.append([_position(lv, list(UPLIFT_PANELS)) for lv in frame["level"]])
        pairs = zip(frame["level"], frame["group"], strict=True)
        keys.append([_position(g, order.get(lv, [])) for lv, g in pairs])
    for col in ("intent", "touchpoint"):
        if col in frame:
            keys.append([_position(v, order[col]) for v in frame[col]])
    if not keys:
        return frame
    return frame.iloc[np.lexsort(keys[::-1])]  # stable: ties keep their order


def build_report(
    summary: Mapping[str, object],
    feed: pd.DataFrame,
    estimates: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    classes: Sequence[str],
    labels: Mapping[str, str],
    measured: Mapping[str, object] | None = None,
    level: float = 0.95,
) -> tuple[str, dict[str, bytes]]:
    """The marketer's report: one self-contained HTML page and its figures as PNG by name.

    `summary` is the feed's headline (summary.json), `feed` its rows, `estimates` the conversion
    estimates, `tables` the marketer's tables (`policy_value` among them when computed),
    `labels` each touchpoint's name in words in catalogue order, and `measured` the results of
    `micromoment measure` (its `headline` and tables) when outcomes exist.
    """
    figures = report_figures(estimates, tables, classes, labels, measured, level)
    pngs = {name: png_bytes(fig) for name, fig in figures.items()}
    pct = f"{100 * level:.0f}%"
    fig = {name: figure_html(png, CAPTIONS[name].format(pct=pct)) for name, png in pngs.items()}
    shown = _shown_tables(tables, measured, classes, labels, level)
    tab = {name: _table_section(name, frame, level) for name, frame in shown.items()}
    m = None if measured is None else measured.get("headline", {})
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(summary, labels, level))
    sections = [
        f"<header><h1>Touchpoint report</h1>{_meta(summary, m)}</header>",
        _headline(summary, m, level),
        _section("What the feed earned", fig.get("uplift"), tab.get("uplift"), tab.get("cohorts"))
        + _section("", tab.get("by_intent"), tab.get("by_intent_touchpoint"))
        + _section("", fig.get("time_to_conversion")),
        _section(
            "Where conversions come from",
            fig.get("conversion_heatmap"),
            fig.get("conversion_intervals"),
        ),
        _section(
            "Who gets what",
            fig.get("allocation"),
            tab.get("allocation"),
            tab.get("recommendations_by_intent"),
            _sample_section(feed, classes, labels),
        ),
        _section("Before launch", tab.get("policy_value")),
        _section(
            "The audience",
            fig.get("intent_mix_by_channel"),
            *(tab.get(name) for name in AUDIENCE_TABLES),
        ),
        f"<h2>How these numbers were made</h2><ul>{notes}</ul>",
    ]
    return _page("Touchpoint report", sections), pngs


def _sample_section(feed: pd.DataFrame, classes: Sequence[str], labels: Mapping[str, str]) -> str:
    return (
        "<h3>A sample of journeys</h3>"
        '<p class="intro">Reached journeys with the highest expected conversion, the best of each '
        "moment first, and two held-out journeys. Why: what in the journey points to its moment "
        "when it was scored with reasons, else how sure the model is of its two likeliest "
        "moments.</p>" + table_html(journey_sample(feed, classes, labels))
    )


def _section(title: str, *parts: str | None) -> str:
    """A section of the parts (figures and tables as HTML) that exist under a title, or nothing
    when none does."""
    body = "".join(p for p in parts if p)
    if not body:
        return ""
    return f"<h2>{html.escape(title)}</h2>{body}" if title else body


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
