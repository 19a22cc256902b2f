"""The marketer's touchpoint report: figures that say what each cell holds, and one HTML page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.reports.touchpoint_report import (
    allocation_chart,
    conversion_heatmap,
    conversion_intervals,
    intent_mix_chart,
    png_bytes,
    render_html,
)

CLASSES = ["know", "buy"]
TOUCHPOINTS = ["email", "ad"]


def estimates() -> pd.DataFrame:
    """Four cells, one without enough data."""
    return pd.DataFrame(
        {
            "intent": ["know", "know", "buy", "buy"],
            "touchpoint": ["email", "ad", "email", "ad"],
            "rate": [0.05, 0.10, 0.40, np.nan],
            "ci_low": [0.03, 0.07, 0.30, np.nan],
            "ci_high": [0.08, 0.13, 0.50, np.nan],
            "status": ["ok", "ok", "ok", "insufficient"],
        }
    )


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_the_heatmap_prints_every_rate_and_n_a_where_data_is_too_thin():
    fig = conversion_heatmap(estimates(), CLASSES, TOUCHPOINTS)
    assert texts(fig) == ["5.0%", "10.0%", "40.0%", "n/a"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "I want to know",
        "I want to buy",
    ]


def test_intervals_have_a_panel_per_intent_and_mark_thin_cells():
    fig = conversion_intervals(estimates(), CLASSES)
    assert [ax.get_title() for ax in fig.axes] == ["I want to know", "I want to buy"]
    assert texts(fig) == [" too little data"]


def test_the_allocation_chart_has_a_bar_pair_per_touchpoint_and_a_capacity_line():
    table = pd.DataFrame(
        {"capacity": [10.0, np.inf], "unconstrained": [12, 3], "allocated": [10, 3]},
        index=pd.Index(TOUCHPOINTS, name="touchpoint"),
    )
    ax = allocation_chart(table).axes[0]
    assert [p.get_height() for p in ax.patches] == [12, 3, 10, 3]
    assert len(ax.collections) == 1  # one capacity line: the infinite one is not drawn


def test_the_intent_mix_stacks_to_one_per_channel():
    mix = pd.DataFrame({"know": [0.25, 1.0], "buy": [0.75, None]}, index=["search", "direct"])
    ax = intent_mix_chart(mix, CLASSES, "channel").axes[0]
    heights = np.array([p.get_height() for p in ax.patches]).reshape(2, 2)
    np.testing.assert_allclose(heights.sum(axis=0), [1.0, 1.0])
    assert ax.get_title() == "Intent mix by channel"


def test_the_html_page_embeds_figures_and_escapes_headline_and_tables():
    png = png_bytes(conversion_heatmap(estimates(), CLASSES, TOUCHPOINTS))
    assert png.startswith(b"\x89PNG")
    page = render_html(
        "Feed <today>",
        {"journeys": 150, "model": "a&b"},
        {"heatmap": png},
        {"allocation_by_touchpoint": pd.DataFrame({"allocated": [3]}, index=["email"])},
        notes=["rates <5% are noisy"],
    )
    assert page.startswith("<!doctype html>")
    assert "<title>Feed &lt;today&gt;</title>" in page and "a&amp;b" in page
    assert page.count("data:image/png;base64,") == 1
    assert "<h3>allocation by touchpoint</h3>" in page and "rates &lt;5% are noisy" in page
