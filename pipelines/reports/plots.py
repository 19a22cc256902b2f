"""Evaluation plots as matplotlib figures (the caller saves, logs or displays them).

Figures are `matplotlib.figure.Figure` objects built without pyplot: drawing them needs no display
and leaves the backend of the caller (a notebook's inline backend, a headless job) alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def drivers_figure(drivers: Mapping[str, Mapping[str, float]], top: int = 8):
    """What drives each intent: per predicted intent, the reasons pushing its sessions toward it
    hardest on average (mean contribution to the raw score, relative to the other intents)."""
    intents = list(drivers)
    fig = Figure(figsize=(4.2 * max(len(intents), 1), 0.32 * top + 1.6))
    axes = fig.subplots(1, max(len(intents), 1), squeeze=False)[0]
    for ax, intent in zip(axes, intents, strict=False):
        items = list(drivers[intent].items())[:top]
        ax.barh([name for name, _ in items][::-1], [value for _, value in items][::-1])
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(f"predicted {intent}")
        ax.set_xlabel("mean push toward it (log-odds)")
    fig.suptitle("What drives each intent (exact contributions, grouped by input)")
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
