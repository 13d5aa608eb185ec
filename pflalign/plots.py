"""Figures shared by reports and loggers (matplotlib, headless)."""
from __future__ import annotations

import numpy as np

UNITS = {"angle": "angle (deg)", "std": "noise std", "norm": "|A-I|"}


def shift_row(shift, num_clients: int) -> tuple[str, np.ndarray] | None:
    """(label, per-client values) of partition.json's ``feature_shift`` record, or None when
    there is none or it does not describe these clients (a foreign or older file)."""
    if not isinstance(shift, dict) or not isinstance(shift.get("clients"), list):
        return None
    param, rows = shift.get("param"), shift["clients"]
    values = [r.get(param) if isinstance(r, dict) else None for r in rows]
    if len(values) != num_clients or not all(isinstance(v, (int, float)) for v in values):
        return None
    return f"{shift.get('kind', 'shift')}:\n{UNITS.get(param, param)}", np.asarray(values, dtype=float)


def partition_heatmap(hist: np.ndarray, title: str = "train samples per client and class", shift=None):
    """Clients x classes counts; with partition.json's ``feature_shift`` record, a bar row above
    gives each client's shift parameter (rotation angle, noise std or affine norm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    row = shift_row(shift, hist.shape[0])
    size = (min(12, 2 + 0.3 * hist.shape[0]), 3 + 0.15 * hist.shape[1] + (1.2 if row else 0))
    if row is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        axes = [ax]
    else:
        fig, (top, ax) = plt.subplots(2, 1, sharex=True, figsize=size, layout="constrained",
                                      gridspec_kw={"height_ratios": [1, 3.5]})
        top.bar(np.arange(len(row[1])), row[1], width=0.8, color="tab:orange")
        top.axhline(0, color="black", lw=0.5)
        top.set_ylabel(row[0])
        axes = [top, ax]
    im = ax.imshow(hist.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    axes[0].set_title(title)
    fig.colorbar(im, ax=axes)
    return fig
