"""The marketer's touchpoint report: figures that say what each cell holds, and one HTML page that
opens with the headline numbers in words, formatted as a marketer reads them."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.reports.touchpoint_report import (
    DASH,
    allocation_chart,
    build_report,
    conversion_heatmap,
    conversion_intervals,
    data_value,
    display_table,
    format_value,
    headline_text,
    in_catalogue_order,
    intent_mix_chart,
    journey_sample,
    png_bytes,
    uplift_chart,
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
            "status": ["ok", "ok", "ok", "insufficient data"],
        }
    )


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ---------------------------------------------------------------------------------------------
# a whole report's inputs, by hand: 4 moments, 3 touchpoints, 14 journeys, measured outcomes

INTENTS = ["know", "go", "do", "buy"]
LABELS = {"search_ad": "Search ad", "local_listing": "Local listing", "cart_email": "Cart e-mail"}


def report_estimates() -> pd.DataFrame:
    """12 cells; local listing for `do` has too little data."""
    rows = []
    for i, c in enumerate(INTENTS):
        for j, t in enumerate(LABELS):
            rate = 0.02 + 0.03 * i + 0.01 * j
            thin = (c, t) == ("do", "local_listing")
            rows.append(
                {
                    "intent": c,
                    "touchpoint": t,
                    "shown": 400.0 + 10 * i,
                    "conversions": 400 * rate,
                    "effective_sessions": 12.0 if thin else 350.0,
                    "rate_ipw": np.nan if thin else rate,
                    "se_ipw": np.nan if thin else 0.01,
                    "rate": np.nan if thin else rate,
                    "ci_low": np.nan if thin else rate - 0.015,
                    "ci_high": np.nan if thin else rate + 0.02,
                    "prior_rate": 0.05,
                    "status": "insufficient data" if thin else "ok",
                }
            )
    return pd.DataFrame(rows)


def report_feed() -> pd.DataFrame:
    """14 journeys: 10 allocated a touchpoint, 2 held out, 1 suppressed, 1 left out by capacity;
    the first five carry reason codes."""
    n = 14
    intents = [INTENTS[k % 4] for k in range(n)]
    proba = np.full((n, 4), 0.1)
    for k, c in enumerate(intents):
        proba[k, INTENTS.index(c)] = 0.7
    rec = [list(LABELS)[k % 3] for k in range(n)]
    expected = np.round(0.05 + 0.01 * np.arange(n), 3)
    holdout = np.isin(np.arange(n), [3, 9])
    suppressed = np.arange(n) == 12
    allocated = ~holdout & ~suppressed & (np.arange(n) != 13)
    feed = pd.DataFrame(
        {
            "journey_id": [f"j{k:02d}" for k in range(n)],
            "intent": intents,
            **{f"p_{c}": proba[:, i] for i, c in enumerate(INTENTS)},
            "recommended_touchpoint": rec,
            "expected_conversion": expected,
            "holdout": holdout,
            "suppressed": suppressed,
            "contact": ~holdout & ~suppressed,
            "allocated_touchpoint": np.where(allocated, rec, None),
            "allocated_expected_conversion": np.where(allocated, expected, np.nan),
        }
    )
    feed["reason_1"] = [f"near a store ({k + 1} km) (+1.20)" if k < 5 else None for k in range(n)]
    feed["reason_2"] = ["on a phone (+0.40)" if k < 5 else None for k in range(n)]
    return feed


def report_tables() -> dict[str, pd.DataFrame]:
    tps = pd.Index(list(LABELS), name="touchpoint")
    mix = pd.DataFrame(
        {"sessions": [1200, 300], "know": [0.5, 0.2], "go": [0.1, 0.3], "do": [0.2, 0.2]},
        index=pd.Index(["organic_search", "app_push"], name="channel"),
    )
    mix["buy"] = 1 - mix[INTENTS[:3]].sum(axis=1)
    return {
        "allocation": pd.DataFrame(
            {
                "capacity": [np.inf, 400.0, np.inf],
                "cost": [0.6, 0.05, 0.01],
                "unconstrained": [5000, 900, 3000],
                "allocated": [5000, 400, 3500],
                "allocated_cost": [3000.0, 20.0, 35.0],
            },
            index=tps,
        ),
        "policy_value": pd.DataFrame(
            {
                "policy": ["The feed's choice", "Logging policy (what was shown)"],
                "estimator": ["Doubly robust", "Observed"],
                "conversion_rate": [0.081, 0.052],
                "ci_low": [0.074, 0.049],
                "ci_high": [0.089, 0.055],
                "expected_conversions": [1620.4, 1040.0],
                "expected_conversions_low": [1480.2, 980.0],
                "expected_conversions_high": [1780.9, 1100.0],
            }
        ),
        "intent_mix_by_channel": mix,
        "micro_moment_metrics": pd.DataFrame(
            {
                "sessions": [900, 300, 200, 100],
                "conversion_rate": [0.01, 0.05, 0.02, 0.3],
                "median_session_s": [240.0, 35.0, 400.0, np.nan],
                "median_converting_session_s": [200.0, 30.0, 380.0, 150.0],
            },
            index=pd.Index(INTENTS, name="intent"),
        ),
        # a crosstab: intents and touchpoints sorted alphabetically
        "recommendations_by_intent": pd.crosstab(
            pd.Series(["buy", "go", "know", "go"], name="intent"),
            pd.Series(
                ["search_ad", "local_listing", "cart_email", "local_listing"], name="touchpoint"
            ),
        ),
        "conversion_by_intent_and_touchpoint": report_estimates().set_index(
            ["intent", "touchpoint"]
        ),
    }


def report_measured() -> dict:
    uplift = pd.DataFrame(
        {
            "level": ["overall"] + ["intent"] * 4 + ["touchpoint"] * 3,
            "group": ["all", *INTENTS, *LABELS],
            "treated_journeys": [9000, 3000, 1500, 1500, 3000, 4000, 2000, 3000],
            "control_journeys": [1000, 330, 170, 170, 330, 440, 220, 340],
            "treated_rate": [0.082, 0.02, 0.06, 0.04, 0.2, 0.09, 0.07, 0.08],
            "control_rate": [0.07, 0.018, 0.05, 0.04, 0.17, 0.08, 0.06, 0.07],
            "uplift": [0.012, 0.002, 0.01, np.nan, 0.03, 0.01, 0.01, 0.01],
            "ci_low": [0.004, -0.008, -0.02, np.nan, 0.0, -0.01, -0.02, -0.01],
            "ci_high": [0.02, 0.012, 0.04, np.nan, 0.06, 0.03, 0.04, 0.03],
        }
    )
    by_intent = pd.DataFrame(
        {
            "intent": INTENTS,
            "impressions": [3000, 1500, 1500, 3000],
            "ctr": [0.03, 0.08, 0.05, 0.12],
            "conversion_rate": [0.02, 0.06, 0.04, 0.2],
            "conversion_ci_low": [0.015, 0.05, 0.03, 0.18],
            "conversion_ci_high": [0.025, 0.07, 0.05, 0.22],
            "median_hours_to_conversion": [30.0, 2.5, 12.0, 1.2],
            "bounce_rate": [0.4, 0.3, 0.35, 0.2],
            "median_session_s": [240.0, 35.0, 400.0, 180.0],
        }
    )
    return {
        "headline": {
            "date_from": "2026-04-01T00:00:00+00:00",
            "date_to": "2026-04-15T00:00:00+00:00",
            "window_days": 14,
            "journeys_measured": 10000,
            "journeys_treated": 9000,
            "journeys_control": 1000,
            "conversions": 738,
            "conversion_rate_treated": 0.082,
            "conversion_rate_control": 0.07,
            "uplift": 0.012,
            "uplift_ci_low": 0.004,
            "uplift_ci_high": 0.02,
            "incremental_conversions": 108.0,
            "incremental_conversions_low": 36.0,
            "incremental_conversions_high": 180.0,
            "cost": 3055.0,
            "cost_per_conversion": 4.1396,
            "cost_per_incremental_conversion": 28.287,
            "value_per_journey_treated": 3.69,
            "value_per_journey_control": 3.15,
            "outcome_rows_in": 20000,
            "outcome_rows_rejected": 3,
        },
        "uplift": uplift,
        "by_intent": by_intent,
        "by_intent_touchpoint": by_intent.assign(touchpoint="search_ad"),
        "cohorts": pd.DataFrame(
            {
                "cohort": ["contacted", "held out"],
                "journeys": [9000, 1000],
                "journey_conversion": [0.082, 0.07],
                "median_days_to_first_purchase": [3.5, 4.0],
                "returned_within_days": [0.41, 0.38],
                "value_per_journey": [3.69, 3.15],
            }
        ),
        "time_to_conversion": pd.DataFrame(
            {"touchpoint": ["search_ad"] * 5 + ["cart_email"] * 4, "hours": np.arange(9.0) * 3}
        ),
    }


def report_summary() -> dict:
    return {
        "rows_in": 40123,
        "journeys": 12345,
        "journeys_contacted": 9876,
        "journeys_holdout": 1234,
        "journeys_suppressed": 1235,
        "expected_conversions_allocated": 902.0,
        "expected_conversions_unconstrained": 1015.5,
        "allocation_share_of_unconstrained": 0.8882,
        "allocated_cost": 3055.0,
        "expected_cost_per_conversion": 3.3869,
        "allocation_status": "optimal",
        "objective": "conversions",
        "intent_source_for_estimates": "predicted",
        "cells_estimated": 11,
        "cells_insufficient": 1,
        "touchpoints_without_estimates": ["local_listing"],
        "date_from": "2026-03-02T08:15:00+00:00",
        "date_to": "2026-03-31T23:59:00+00:00",
        "model_name": "micro_moment_intent",
        "model_version": "7",
        "model_alias": "champion",
    }


def report_inputs() -> dict:
    """Everything `build_report` takes, by hand."""
    return {
        "summary": report_summary(),
        "feed": report_feed(),
        "estimates": report_estimates(),
        "tables": report_tables(),
        "classes": INTENTS,
        "labels": LABELS,
        "measured": report_measured(),
        "level": 0.95,
    }


# what the page says for these inputs, worked out by hand: (source, summary key) -> text
EXPECTED_HEADLINE = {
    ("feed", "journeys_contacted"): "9,876",
    ("feed", "journeys"): "12,345",
    ("feed", "expected_conversions_allocated"): "902",
    ("feed", "allocation_share_of_unconstrained"): "88.8%",
    ("feed", "expected_cost_per_conversion"): "3.39",
    ("feed", "allocated_cost"): "3,055.00",
    ("feed", "date_from"): "2 Mar 2026",
    ("feed", "date_to"): "31 Mar 2026",
    ("feed", "model_name"): "Micro moment intent",
    ("feed", "model_version"): "7",
    ("feed", "model_alias"): "champion",
    ("measured", "conversions"): "738",
    ("measured", "uplift"): "+1.2 pts",
    ("measured", "uplift_ci_low"): "+0.4 pts",
    ("measured", "uplift_ci_high"): "+2.0 pts",
    ("measured", "incremental_conversions"): "108",
    ("measured", "cost_per_conversion"): "4.14",
    ("measured", "date_from"): "1 Apr 2026",
    ("measured", "window_days"): "14",
}


class Page(HTMLParser):
    """What a reader sees on a page (text outside <style>), its headline numbers in order and
    where its first figure is."""

    def __init__(self, page: str):
        super().__init__()
        self.text, self.numbers, self.tags, self._skip, self._open = [], [], [], False, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._skip = tag == "style"
        if "data-key" in a:
            self.numbers.append({**a, "text": ""})
            self._open = self.numbers[-1]

    def handle_endtag(self, tag):
        self._skip, self._open = False, None if tag == "span" else self._open

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)
            if self._open is not None:
                self._open["text"] += data


# ---------------------------------------------------------------------------------------------
# figures


def test_the_heatmap_prints_every_rate_and_says_where_data_is_too_thin():
    fig = conversion_heatmap(estimates(), CLASSES, TOUCHPOINTS, {"email": "E-mail"})
    assert texts(fig) == ["5.0%", "10.0%", "40.0%", "too little\ndata"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["I want to know", "I want to buy"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["E-mail", "Ad"]


def test_interval_panels_share_one_scale_that_holds_every_interval():
    fig = conversion_intervals(estimates(), CLASSES, {"ad": "Search ad"})
    assert [ax.get_title() for ax in fig.axes] == ["I want to know", "I want to buy"]
    assert texts(fig) == [" too little data"]
    limits = {ax.get_xlim() for ax in fig.axes}
    assert len(limits) == 1
    low, high = limits.pop()
    assert low == 0 and 50 < high < 60  # the widest interval ends at 50%
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Email", "Search ad"]


def test_a_cell_that_never_converted_is_drawn_although_its_mean_is_above_its_interval():
    from pipelines.core.touchpoints import estimate_conversion

    # 120 sessions shown e-mail, none converted: its posterior is piled at 0
    logs = pd.DataFrame(
        {"touchpoint": "email", "touchpoint_propensity": 0.5, "converted": [False] * 120}
    )
    weights = np.repeat([[1.0, 0.0]], 120, axis=0)
    table = estimate_conversion(logs, weights, CLASSES, ["email"], min_effective_sessions=10)
    know = table.iloc[0]
    assert know["status"] == "ok" and know["ci_high"] < know["rate"] < 1e-9
    fig = conversion_intervals(table, CLASSES)
    bars = fig.axes[0].collections[0].get_segments()  # the error bars of the first panel
    assert min(x for segment in bars for x, _ in segment) >= 0


def test_uplift_panels_share_one_scale_around_zero_and_name_groups_in_words():
    shuffled = report_measured()["uplift"].sample(frac=1, random_state=5)
    fig = uplift_chart(shuffled, INTENTS, LABELS)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["All journeys", "By moment", "By touchpoint"]
    assert len({ax.get_xlim() for ax in fig.axes}) == 1
    low, high = fig.axes[0].get_xlim()
    assert low < -2 and high > 6  # every interval, in percentage points
    moments = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert moments == ["I want to know", "I want to go", "I want to do", "I want to buy"]
    touchpoints = [t.get_text() for t in fig.axes[2].get_yticklabels()]
    assert touchpoints == ["Search ad", "Local listing", "Cart e-mail"]
    assert texts(fig) == [" too little data"]  # `do` has no uplift


def test_a_group_with_few_journeys_on_either_side_does_not_stretch_the_uplift_scale():
    uplift = report_measured()["uplift"]
    uplift.loc[7, ["control_journeys", "ci_low", "ci_high"]] = [1, -0.75, 0.25]  # cart e-mail
    fig = uplift_chart(uplift, INTENTS, LABELS)
    low, high = fig.axes[0].get_xlim()
    assert -3 < low < -2 and 6 < high < 7  # as without it
    assert [t.get_text() for t in fig.axes[2].texts] == [" too little data"]


def test_the_allocation_chart_has_a_bar_pair_per_touchpoint_and_a_capacity_line():
    table = pd.DataFrame(
        {"capacity": [10.0, np.inf], "unconstrained": [12, 3], "allocated": [10, 3]},
        index=pd.Index(TOUCHPOINTS, name="touchpoint"),
    )
    ax = allocation_chart(table, {"email": "Cart e-mail"}).axes[0]
    assert [p.get_height() for p in ax.patches] == [12, 3, 10, 3]
    assert len(ax.collections) == 1  # one capacity line: the infinite one is not drawn
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Cart e-mail", "Ad"]


def test_the_intent_mix_stacks_to_one_per_channel():
    mix = pd.DataFrame(
        {"know": [0.25, 1.0], "buy": [0.75, None]}, index=["organic_search", "direct"]
    )
    ax = intent_mix_chart(mix, CLASSES, "channel").axes[0]
    heights = np.array([p.get_height() for p in ax.patches]).reshape(2, 2)
    np.testing.assert_allclose(heights.sum(axis=0), [1.0, 1.0])
    assert ax.get_title() == "Intent mix by channel"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "I want to know",
        "I want to buy",
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Organic search", "Direct"]


# ---------------------------------------------------------------------------------------------
# numbers and tables


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (12345, "count", "12,345"),
        (902.0, "count", "902"),
        (np.inf, "count", "no limit"),
        (0.1611, "share", "16.1%"),
        (0.012, "points", "+1.2 pts"),
        (-0.004, "points", "-0.4 pts"),
        (-0.0001, "points", "+0.0 pts"),
        (1234.5, "money", "1,234.50"),
        (3.25, "number", "3.2"),
        (42.4, "seconds", "42 s"),
        ("2026-03-02T08:15:00+00:00", "date", "2 Mar 2026"),
        ("micro_moment_intent", "name", "Micro moment intent"),
        (np.nan, "share", DASH),
        (None, "money", DASH),
    ],
)
def test_numbers_are_written_as_a_marketer_reads_them(value, kind, text):
    assert format_value(value, kind) == text


def test_a_headline_number_keeps_its_raw_value_as_the_json_holds_it():
    assert data_value(902.0) == "902.0"
    assert data_value("7") == "7"
    assert data_value(np.int64(3)) == "3"  # numpy numbers are written as json.dumps(default=str)
    assert data_value(None) == "null"
    assert headline_text("allocation_share_of_unconstrained", 0.8882) == "88.8%"


def test_tables_have_headers_in_words_and_intervals_beside_their_value():
    tables = report_tables()
    policy = display_table(tables["policy_value"], INTENTS, LABELS)
    assert list(policy.columns) == [
        "Policy",
        "Estimator",
        "Conversion rate (95% interval)",
        "Expected conversions (95% interval)",
    ]
    nb = "\u00a0"  # a cell wraps before its interval, nowhere else
    assert policy.iloc[0].tolist() == [
        "The feed's choice",
        "Doubly robust",
        f"8.1% (7.4%{nb}to{nb}8.9%)",
        f"1,620 (1,480{nb}to{nb}1,781)",
    ]
    alloc = display_table(tables["allocation"], INTENTS, LABELS)
    assert alloc["Touchpoint"].tolist() == ["Search ad", "Local listing", "Cart e-mail"]
    assert alloc["Capacity"].tolist() == [f"no{nb}limit", "400", f"no{nb}limit"]
    assert alloc["Cost per contact"].tolist() == ["0.60", "0.05", "0.01"]
    mix = display_table(tables["intent_mix_by_channel"], INTENTS, LABELS, shares=True)
    assert list(mix.columns)[:3] == ["Channel", "Sessions", "I want to know"]
    assert mix.iloc[0, :3].tolist() == ["Organic search", "1,200", "50.0%"]
    est = display_table(tables["conversion_by_intent_and_touchpoint"], INTENTS, LABELS)
    thin = est[(est["Moment"] == "I want to do") & (est["Touchpoint"] == "Local listing")]
    assert thin[["Conversion rate (95% interval)", "Estimate"]].values.tolist() == [
        [DASH, "too little data"]
    ]
    assert "Se ipw" not in est.columns and "Prior rate" not in est.columns


def test_the_journey_sample_takes_each_moment_in_turn_and_says_why():
    feed = report_feed()
    sample = journey_sample(feed, INTENTS, LABELS)
    reached = sample.iloc[:8]
    # best of each moment first, by expected conversion: j11 (buy), j10 (do), j08 (know), j05 (go)
    assert reached["Journey"].tolist()[:4] == ["j11", "j10", "j08", "j05"]
    assert set(reached["Journey"]).isdisjoint({"j03", "j09", "j12", "j13"})
    assert sample["Journey"].tolist()[8:] == ["j09", "j03"]
    assert sample.iloc[8]["Touchpoint"] == "held out (would get Search ad)"
    first = sample.set_index("Journey").loc["j01"]
    assert first["Moment now"] == "I want to go" and first["Touchpoint"] == "Local listing"
    assert first["Expected conversion"] == "6.0%"
    assert first["Why"] == "near a store (2 km); on a phone"  # contributions dropped
    # without reason codes: the intent probabilities
    assert (
        sample.set_index("Journey").loc["j11", "Why"] == "I want to buy 70.0%, I want to know 10.0%"
    )
    assert journey_sample(feed.sample(frac=1, random_state=3), INTENTS, LABELS).equals(sample)


# ---------------------------------------------------------------------------------------------
# the page


def test_the_page_opens_with_the_headline_numbers_as_the_summary_has_them():
    inputs = report_inputs()
    page, pngs = build_report(**inputs)
    parsed = Page(page)
    tags = [t for t, _ in parsed.tags]
    first_key = next(i for i, (_, a) in enumerate(parsed.tags) if "data-key" in a)
    assert first_key < tags.index("figure") and first_key < tags.index("table")
    sources = {"feed": inputs["summary"], "measured": inputs["measured"]["headline"]}
    shown = {(n["data-source"], n["data-key"]): n for n in parsed.numbers}
    assert set(EXPECTED_HEADLINE) <= set(shown)
    for (source, key), n in shown.items():
        value = json.loads(json.dumps(sources[source][key], default=str))
        assert n["data-value"] == data_value(value)
        assert n["text"] == headline_text(key, value)
    for where, text in EXPECTED_HEADLINE.items():
        assert shown[where]["text"] == text, where
    assert list(pngs) == [
        "uplift",
        "time_to_conversion",
        "conversion_heatmap",
        "conversion_intervals",
        "allocation",
        "intent_mix_by_channel",
    ]


def test_without_outcomes_the_page_shows_expected_numbers_only():
    inputs = {**report_inputs(), "measured": None}
    del inputs["summary"]["expected_cost_per_conversion"]
    inputs["summary"].update(date_from=None, date_to=None)  # sessions without times
    page, pngs = build_report(**inputs)
    parsed = Page(page)
    assert {n["data-source"] for n in parsed.numbers} == {"feed"}
    assert "Sessions from" not in page
    assert "uplift" not in pngs and "Measured" not in page
    assert {n["data-key"] for n in parsed.numbers} >= {"allocated_cost", "journeys_contacted"}


def test_every_figure_has_a_caption_and_the_page_needs_nothing_from_outside():
    page, pngs = build_report(**report_inputs())
    parsed = Page(page)
    tags = [t for t, _ in parsed.tags]
    assert tags.count("figure") == tags.count("figcaption") == tags.count("img") == len(pngs)
    sources = [a["src"] for t, a in parsed.tags if t == "img"]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert embedded == list(pngs.values())  # whole, in the order of the figures
    for png in embedded:
        Image.open(io.BytesIO(png)).load()  # decodes to the last row
    assert "script" not in tags and "link" not in tags
    assert not re.search(r"(src|href)=\"(?!data:)", page)


def test_what_a_marketer_reads_has_no_snake_case_and_no_raw_floats():
    page, _ = build_report(**report_inputs())
    text = " ".join(Page(page).text)
    assert not re.findall(r"\b[a-z]+_[a-z_]+\b", text)
    assert not re.findall(r"\b\d{2,}\.0\b(?!%| pts)|\b0\.\d{3,}\b", text)  # 902.0, 0.1611
    for words in (
        "I want to go",
        "Local listing",
        "Cart e-mail",
        "Conversion rate",
        "too little data",
    ):
        assert words in text
    assert "near a store (2 km); on a phone" in text


def test_figures_are_png():
    png = png_bytes(conversion_heatmap(estimates(), CLASSES, TOUCHPOINTS))
    assert png.startswith(b"\x89PNG")


def test_intents_and_touchpoints_keep_their_order_in_tables():
    page, _ = build_report(**report_inputs())
    table = re.search(r"Recommended touchpoint by moment</h3>.*?</table>", page, re.S).group(0)
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert headers == ["Moment", "Search ad", "Local listing", "Cart e-mail"]
    moments = re.findall(r"<tr><td class=\"t\">([^<]*)</td>", table)
    assert moments == ["I want to know", "I want to go", "I want to buy"]


def test_rows_follow_the_classes_and_the_catalogue_whatever_their_order():
    cells = pd.DataFrame(
        {
            "intent": ["buy", "buy", "go", "know", "know"],
            "touchpoint": ["cart_email", "search_ad", "local_listing", "zz_new", "cart_email"],
            "impressions": [1, 2, 3, 4, 5],
        }
    )
    ordered = in_catalogue_order(cells, INTENTS, LABELS)
    assert ordered["impressions"].tolist() == [5, 4, 3, 2, 1]  # unknown touchpoints last
