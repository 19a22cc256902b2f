"""How well the model ranks sessions by each intent: ROC, precision-recall, cumulative gain and
lift figures (see `core.metrics` for the definitions and tie-breaking).

Like `reports.plots`, figures are `matplotlib.figure.Figure` objects built without pyplot, so
drawing them needs no display and leaves the caller's backend alone. Each class keeps one colour
(`C0`, `C1`, ... by its position in `classes`) in every figure, also when another class is left
out for having no sessions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from pipelines.core import metrics

GUIDES = metrics.TOP_SHARES  # the vertical guides of the gain figure


def _axes(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=(6.4, 5))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def _finish(fig: Figure, ax) -> Figure:
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def roc_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per intent with its AUC in the legend, against the random diagonal;
    intents absent from `y` (or all of it) are left out."""
    scores = metrics.ranking_metrics(y, proba, classes)
    fig, ax = _axes(
        "ROC per intent (one vs rest)",
        "Share of other sessions flagged (false positive rate)",
        "Share of the intent's sessions flagged (true positive rate)",
    )
    for c, (fpr, tpr) in metrics.roc_curves(y, proba, classes).items():
        color = f"C{list(classes).index(c)}"
        ax.plot(fpr, tpr, color=color, label=f"{c} (AUC {scores[f'roc_auc_{c}']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax)


def pr_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Figure:
    """Precision-recall curve per intent with its average precision in the legend, and the intent's
    base rate (the precision of targeting at random) as a dotted line in its colour; intents absent
    from `y` are left out."""
    scores = metrics.ranking_metrics(y, proba, classes)
    y = np.asarray(y)
    fig, ax = _axes(
        "Precision-recall per intent (dotted: share of all sessions)",
        "Share of the intent's sessions found (recall)",
        "Share of flagged sessions with the intent (precision)",
    )
    for c, (recall, precision) in metrics.pr_curves(y, proba, classes).items():
        j = list(classes).index(c)
        base = float((y == j).mean())
        label = f"{c} (AP {scores[f'avg_precision_{c}']:.3f}, base {base:.2f})"
        ax.plot(recall, precision, color=f"C{j}", label=label)
        ax.axhline(base, ls=":", color=f"C{j}", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax)


def gain_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Figure:
    """Cumulative gain per intent (the share of its sessions found in the top-ranked sessions)
    against the random diagonal, with vertical guides at 5, 10 and 20% targeted; intents absent
    from `y` are left out."""
    fig, ax = _axes(
        "Cumulative gain per intent",
        "Share of sessions targeted",
        "Share of the intent's sessions found",
    )
    for c, (share, gain) in metrics.gain_curves(y, proba, classes).items():
        ax.plot(share, gain, color=f"C{list(classes).index(c)}", label=c)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random")
    for q in GUIDES:
        ax.axvline(q, ls=":", color="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax)


def lift_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Figure:
    """Lift per intent (how many times its base rate the top-ranked sessions hold) against the
    share of sessions targeted, from 1% (below it a handful of sessions make lift noisy), with a
    line at 1 for random targeting; intents absent from `y` are left out."""
    fig, ax = _axes(
        "Lift per intent",
        "Share of sessions targeted",
        "Lift (times the intent's share of all sessions)",
    )
    for c, (share, lift) in metrics.lift_curves(y, proba, classes).items():
        ax.plot(share, lift, color=f"C{list(classes).index(c)}", label=c)
    ax.axhline(1.0, ls="--", color="grey", lw=1, label="random")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax)
