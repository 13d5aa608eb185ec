"""Figures shared by reports and loggers (matplotlib, headless)."""
from __future__ import annotations

import numpy as np


def partition_heatmap(hist: np.ndarray, title: str = "train samples per client and class"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.3 * hist.shape[0]), 3 + 0.15 * hist.shape[1]))
    im = ax.imshow(hist.T, aspect="auto", cmap="viridis", interpolation="nearest")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
