"""Evaluation plots as matplotlib figures (the caller saves, logs or displays them).

Figures are `matplotlib.figure.Figure` objects built without pyplot: drawing them needs no display
and leaves the backend of the caller (a notebook's inline backend, a headless job) alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def confusion_figure(cm: np.ndarray, classes: Sequence[str]):
    """Row-normalised confusion matrix: each row is a true intent, read as recall per cell."""
    fig = Figure(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if cm[i, j] > 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (normalised by true intent)")
    fig.tight_layout()
    return fig


def reliability_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], bins: int = 10):
    """One reliability diagram per class: predicted probability against observed frequency."""
    k = len(classes)
    cols = min(k, 4)
    rows = int(np.ceil(k / cols))
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for j, c in enumerate(classes):
        ax = axes[j // cols][j % cols]
        p = proba[:, j]
        hit = (y == j).astype(float)
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            m = which == b
            if m.any():
                xs.append(p[m].mean())
                ys.append(hit[m].mean())
                ns.append(m.sum())
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.scatter(xs, ys, s=10 + 60 * np.asarray(ns) / max(ns), zorder=3)
        ax.plot(xs, ys, lw=1)
        ax.set_title(f"p_{c}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("observed")
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Reliability per intent (dot size = sessions in bin)")
    fig.tight_layout()
    return fig


def importance_figure(names: Sequence[str], gain: np.ndarray, top: int = 25):
    """Feature importance by total gain, largest first."""
    order = np.argsort(gain)[::-1][:top]
    fig = Figure(figsize=(7, 0.3 * len(order) + 1.2))
    ax = fig.add_subplot()
    ax.barh([names[i] for i in order][::-1], gain[order][::-1] / max(gain.sum(), 1e-12))
    ax.set_xlabel("share of total gain")
    ax.set_title("Feature importance (gain)")
    fig.tight_layout()
    return fig
