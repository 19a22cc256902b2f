"""The marketer's report: figures of the touchpoint estimates and allocation, and one HTML page.

Figures are `matplotlib.figure.Figure` objects built without pyplot, so drawing them neither needs
a display nor changes the backend of a notebook that imports this module.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def conversion_heatmap(estimates: pd.DataFrame, classes: Sequence[str], touchpoints: Sequence[str]):
    """Estimated conversion rate per intent x touchpoint; cells without enough data say so."""
    table = estimates.pivot(index="intent", columns="touchpoint", values="rate").reindex(
        index=list(classes), columns=list(touchpoints)
    )
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(1.0 * len(touchpoints) + 2.5, 0.7 * len(classes) + 2))
    ax = fig.add_subplot()
    vmax = np.nanmax(values) if np.isfinite(values).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(values), cmap="YlGn", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(touchpoints)), list(touchpoints), rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), [f"I want to {c}" for c in classes])
    for i in range(len(classes)):
        for j in range(len(touchpoints)):
            v = values[i, j]
            text = "n/a" if not np.isfinite(v) else f"{100 * v:.1f}%"
            dark = np.isfinite(v) and v > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="conversion rate")
    ax.set_title("Which touchpoint converts which micro-moment (n/a: too little data)")
    fig.tight_layout()
    return fig


def conversion_intervals(estimates: pd.DataFrame, classes: Sequence[str]):
    """Conversion per touchpoint with its interval, one panel per intent."""
    k = len(classes)
    fig = Figure(figsize=(3.2 * k, 3.6))
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    for ax, c in zip(axes, classes, strict=True):
        part = estimates[estimates["intent"] == c].reset_index(drop=True)
        y = np.arange(len(part))
        ok = part["status"].eq("ok").to_numpy()
        rate = part["rate"].to_numpy(dtype=float)
        err = np.vstack([rate - part["ci_low"], part["ci_high"] - rate])
        ax.errorbar(100 * rate[ok], y[ok], xerr=100 * err[:, ok], fmt="o", capsize=3)
        for yi in y[~ok]:
            ax.text(0, yi, " too little data", va="center", fontsize=8, color="grey")
        ax.set_yticks(y, part["touchpoint"].tolist())
        ax.set_title(f"I want to {c}")
        ax.set_xlabel("conversion rate (%)")
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Estimated conversion with intervals")
    fig.tight_layout()
    return fig


def allocation_chart(table: pd.DataFrame):
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
    ax.set_xticks(x, table.index.tolist(), rotation=35, ha="right")
    ax.set_ylabel("journeys contacted")
    ax.set_title("Allocation against capacity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def intent_mix_chart(mix: pd.DataFrame, classes: Sequence[str], by: str):
    """Stacked shares of predicted intent for each entry channel (or touchpoint)."""
    shares = mix[list(classes)].fillna(0)
    fig = Figure(figsize=(max(6.0, 0.8 * len(shares) + 2), 3.8))
    ax = fig.add_subplot()
    bottom = np.zeros(len(shares))
    for c in classes:
        ax.bar(shares.index.astype(str), shares[c], bottom=bottom, label=c)
        bottom += shares[c].to_numpy()
    ax.set_ylabel("share of sessions")
    ax.set_title(f"Intent mix by {by}")
    ax.tick_params(axis="x", rotation=35)
    ax.legend(title="intent", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _fmt_table(frame: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float | np.floating):
            if not np.isfinite(v):
                return ""
            return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
        return v

    return frame.map(fmt).to_html(classes="table", border=0, escape=True)


def render_html(
    title: str,
    headline: Mapping[str, object],
    figures: Mapping[str, bytes],
    tables: Mapping[str, pd.DataFrame],
    notes: Sequence[str] = (),
) -> str:
    """A self-contained HTML page: headline numbers, figures (embedded PNG) and tables."""
    items = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in headline.items()
    )
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"/></figure>'
        for name, png in figures.items()
    )
    tabs = "".join(
        f"<h3>{html.escape(name.replace('_', ' '))}</h3>{_fmt_table(t)}"
        for name, t in tables.items()
    )
    note = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{items}</table>
<ul>{note}</ul>
<h2>Figures</h2>{figs}
<h2>Tables</h2>{tabs}
</body></html>
"""
