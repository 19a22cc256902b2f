"""The ROC, precision-recall, cumulative gain and lift figures of a training run."""

from __future__ import annotations

import warnings

import pytest
from matplotlib.figure import Figure

from pipelines.reports.ranking_plots import gain_figure, lift_figure, pr_figure, roc_figure
from tests.core.test_metrics import (
    BINARY,
    CLASSES,
    SIX_LABELS,
    perfect,
    twenty_sessions,
)


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


CASES = {
    "three classes": (twenty_sessions(), CLASSES, 3),
    "two classes": (SIX_LABELS, BINARY, 2),
    "an absent class": (SIX_LABELS, CLASSES, 2),  # buy never occurs
}


@pytest.mark.parametrize("case", CASES)
def test_each_figure_draws_one_curve_per_class_present(case):
    y, classes, present = CASES[case]
    proba = perfect(y, len(classes))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = {
            "roc": roc_figure(y, proba, classes),
            "pr": pr_figure(y, proba, classes),
            "gain": gain_figure(y, proba, classes),
            "lift": lift_figure(y, proba, classes),
        }
    for fig in figs.values():
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title()
    # roc: curves + diagonal; pr: curves + a base-rate line each; gain: curves + diagonal +
    # 3 guides; lift: curves + the line at 1
    lines = {"roc": present + 1, "pr": 2 * present, "gain": present + 4, "lift": present + 1}
    entries = {"roc": present + 1, "pr": present, "gain": present + 1, "lift": present + 1}
    for name, fig in figs.items():
        assert len(fig.axes[0].lines) == lines[name], name
        assert len(legend_texts(fig)) == entries[name], name
    assert all("AUC 1.000" in t for t in legend_texts(figs["roc"])[:-1])
    assert all("AP 1.000" in t for t in legend_texts(figs["pr"]))


def test_figures_label_their_axes_in_plain_words():
    y = twenty_sessions()
    proba = perfect(y, 3)
    for figure in (gain_figure, lift_figure):
        assert figure(y, proba, CLASSES).axes[0].get_xlabel() == "Share of sessions targeted"
    assert gain_figure(y, proba, CLASSES).axes[0].get_ylabel() == (
        "Share of the intent's sessions found"
    )
    for figure in (roc_figure, pr_figure):
        ax = figure(y, proba, CLASSES).axes[0]
        assert ax.get_xlabel().startswith("Share of") and ax.get_ylabel().startswith("Share of")


def test_the_pr_figure_draws_each_base_rate_as_a_dotted_line():
    y = twenty_sessions()
    ax = pr_figure(y, perfect(y, 3), CLASSES).axes[0]
    dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert sorted(line.get_ydata()[0] for line in dotted) == pytest.approx([0.1, 0.4, 0.5])


def test_the_gain_figure_marks_5_10_and_20_percent():
    y = twenty_sessions()
    ax = gain_figure(y, perfect(y, 3), CLASSES).axes[0]
    guides = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert guides == pytest.approx([0.05, 0.10, 0.20])


def test_the_lift_figure_starts_at_one_percent_targeted():
    y = twenty_sessions()
    ax = lift_figure(y, perfect(y, 3), CLASSES).axes[0]
    buy = next(line for line in ax.lines if line.get_label() == "buy")
    assert buy.get_xdata()[0] == pytest.approx(0.01)
    assert buy.get_ydata()[0] == pytest.approx(10.0)  # 1 row of 20, a buy: 1 / 0.10
    assert buy.get_ydata()[-1] == pytest.approx(1.0)
