"""Evaluation plots: matplotlib Figures with the axes a reader expects, drawn without pyplot."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from pipelines.reports.plots import confusion_figure, importance_figure, reliability_figure

CLASSES = ["know", "go", "do", "buy"]


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_the_confusion_figure_labels_intents_and_prints_every_cell():
    cm = np.array(
        [
            [0.75, 0.25, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.1, 0.0, 0.9, 0.0],
            [0.0, 0.0, 0.5, 0.5],
        ]
    )
    fig = confusion_figure(cm, CLASSES)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the matrix and its colour bar
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted intent", "true intent")
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 16
    assert cells[:4] == ["0.75", "0.25", "0.00", "0.00"]
    assert ax.texts[5].get_color() == "white" and ax.texts[0].get_color() == "white"
    assert ax.texts[1].get_color() == "black"
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_reliability_has_one_panel_per_intent_and_blank_spare_panels():
    classes = ["a", "b", "c", "d", "e"]  # four a row: two rows, three spare panels
    y = np.array([0, 1, 2, 3, 4])
    fig = reliability_figure(y, np.eye(5)[y], classes)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 8
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in shown] == [f"p_{c}" for c in classes]
    assert all((ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "observed") for ax in shown)
    assert all(ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1) for ax in shown)


def test_a_perfectly_sure_and_right_model_lies_on_the_diagonal():
    y = np.array([0, 0, 1, 1, 1])
    fig = reliability_figure(y, np.eye(2)[y], ["no", "yes"])
    for ax in fig.axes:
        diagonal, curve = ax.lines
        assert list(diagonal.get_xdata()) == [0, 1] == list(diagonal.get_ydata())
        # rows it gives 0 are never the class, rows it gives 1 always are
        assert list(curve.get_xdata()) == [0.0, 1.0] == list(curve.get_ydata())


def test_importance_shows_the_top_features_as_shares_largest_on_top():
    names = ["dwell", "device", "hour", "pages"]
    gain = np.array([10.0, 60.0, 0.0, 30.0])
    fig = importance_figure(names, gain, top=3)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "share of total gain"
    widths = [bar.get_width() for bar in ax.patches]
    # barh draws bottom-up: the largest share is the last bar, at the top
    assert widths == pytest.approx([0.1, 0.3, 0.6])
    png_bytes(fig)  # categorical tick labels are set when drawn
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dwell", "pages", "device"]


def test_importance_of_a_model_without_gain_draws_zero_shares():
    fig = importance_figure(["a", "b"], np.zeros(2))
    assert [bar.get_width() for bar in fig.axes[0].patches] == [0.0, 0.0]


def test_importing_and_drawing_leave_the_pyplot_backend_alone():
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import numpy as np\n"
        "from pipelines.reports import plots\n"
        "plots.confusion_figure(np.eye(2), ['a', 'b'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "print(matplotlib.get_backend())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "svg"
