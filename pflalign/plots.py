"""Figures shared by reports and loggers (matplotlib, headless).

Every function returns its Figure: callers save it (reports: PNG and PDF) and tests read the
plotted values back from its artists. Figures that compare methods have one subfigure per
*setting* (titled with it), labels in the table's order and one colour per label everywhere.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

UNITS = {"angle": "angle (deg)", "std": "noise std", "norm": "|A-I|"}
SMALL_TEST = 20  # fewer test samples: a client's accuracy moves in steps of 5 pp or more, so it is flagged
BAND_NOTE = "line: mean over seeds; band: ± 1 sample std over seeds (ddof=1), none for a single seed"
CLIENT_X = "client accuracy (%), mean of its last 10 evaluations"
# metrics.jsonl key, axis label, scale (accuracies are fractions there, % here)
CURVES = (("acc_mean", "mean personalized acc (%)", 100), ("acc", "weighted personalized acc (%)", 100),
          ("acc_worst", "worst client acc (%)", 100), ("acc_bottom10", "bottom 10% clients acc (%)", 100),
          ("global_acc", "global model acc (%)", 100), ("loss", "test loss (personalized)", 1),
          ("new_acc_mean", "new clients acc, mean (%)", 100))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_colors(labels: list[str]) -> dict[str, tuple]:
    """One colour per label (tab10, tab20 beyond 10 labels), the same in every figure."""
    cmap = pyplot().get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def marker_sizes(n: np.ndarray, n_max: float) -> np.ndarray:
    """Marker area grows with a client's test samples."""
    return 10 + 70 * np.asarray(n, dtype=float) / max(float(n_max), 1.0)


def _integer_rounds(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def settings_figure(titles: dict[str, str], counts: dict[str, int], w: float = 3.8, h: float = 3.0, ncols: int = 4):
    """A figure with one subfigure per setting (``titles``: setting -> its title), each holding a
    grid of ``counts[setting]`` axes; returns (figure, [(setting, subfigure, axes), ...])."""
    cols = min(max(counts.values()), ncols)
    rows = -(-max(counts.values()) // cols)
    fig = pyplot().figure(figsize=(w * cols + 2.8, (h * rows + 0.9) * len(titles)), layout="constrained")
    out = []
    for sub, (setting, title) in zip(fig.subfigures(len(titles), 1, squeeze=False)[:, 0], titles.items()):
        axes = list(sub.subplots(rows, cols, squeeze=False).flat)
        for ax in axes[counts[setting]:]:
            ax.set_visible(False)
        sub.suptitle(title, fontsize=11)
        out.append((setting, sub, axes[:counts[setting]]))
    return fig, out


def curves_figure(rows: pd.DataFrame, order: dict[str, list[str]], titles: dict[str, str], colors: dict,
                  panels=CURVES):
    """Per-round metrics vs round, per label: mean over its runs (seeds) with a ±1 std band.

    ``rows``: one row per (run, evaluated round) with columns setting, label, run, round and the
    metrics; ``panels``: (key, axis label, scale) drawn where any run of the setting has the key.
    """
    present = {s: [p for p in panels if p[0] in rows and rows.loc[rows["setting"] == s, p[0]].notna().any()]
               for s in titles}
    present = {s: p for s, p in present.items() if p}
    if not present:
        return None
    fig, grid = settings_figure({s: f"{titles[s]}\n{BAND_NOTE}" for s in present}, {s: len(p) for s, p in present.items()})
    for setting, sub, axes in grid:
        mine = rows[rows["setting"] == setting]
        for ax, (key, ylabel, scale) in zip(axes, present[setting]):
            for i, label in enumerate(order[setting]):
                runs = mine[mine["label"] == label]
                table = runs.pivot_table(index="round", columns="run", values=key).dropna() * scale
                if table.empty:
                    continue
                mean = table.mean(axis=1)
                ax.plot(mean.index, mean, ("-", "--", ":")[i // 10 % 3], color=colors[label], gid=label,
                        label=f"{label} (n={runs['run'].nunique()})")
                if table.shape[1] > 1:
                    std = table.std(axis=1, ddof=1)
                    ax.fill_between(mean.index, mean - std, mean + std, color=colors[label], alpha=0.2, lw=0)
            ax.set(xlabel="round", ylabel=ylabel)
            _integer_rounds(ax)
        handles = {h.get_gid(): h for ax in axes for h in ax.get_lines()}  # a label absent from a panel
        sub.legend([handles[x] for x in order[setting] if x in handles],
                   [handles[x].get_label() for x in order[setting] if x in handles],
                   loc="outside right upper", fontsize=9, title="label (runs)", title_fontsize=9)
    return fig


def _client_points(ax, x, y, n, n_max, color, label: str) -> None:
    """Clients as points (area: test samples); those with fewer than SMALL_TEST test samples as x."""
    small = np.asarray(n) < SMALL_TEST
    for mask, marker, gid in ((~small, "o", label), (small, "x", f"{label} (small)")):
        if mask.any():
            ax.scatter(np.asarray(x)[mask], np.asarray(y)[mask], s=marker_sizes(np.asarray(n)[mask], n_max),
                       marker=marker, color=color, alpha=0.6, gid=gid, linewidths=1.2 if marker == "x" else 0.3,
                       edgecolors=None if marker == "x" else "black")


def _size_legend(sub, n: np.ndarray) -> None:
    """Legend of marker areas (min, median, max test samples) and the small-client flag."""
    from matplotlib.lines import Line2D

    refs = sorted({int(np.min(n)), int(np.median(n)), int(np.max(n))})
    handles = [Line2D([], [], ls="", marker="o", color="grey", markersize=np.sqrt(marker_sizes(r, np.max(n))))
               for r in refs]
    labels = [f"{r} test samples" for r in refs]
    handles.append(Line2D([], [], ls="", marker="x", color="grey"))
    labels.append(f"x: < {SMALL_TEST} test samples\n(steps of ≥ {100 / SMALL_TEST:.0f} pp)")
    sub.legend(handles, labels, loc="outside right upper", fontsize=9)


def clients_figure(clients: pd.DataFrame, order: dict[str, list[str]], titles: dict[str, str], colors: dict):
    """Per-client accuracy per label (box over clients and seeds, one point per client and seed).

    ``clients``: one row per (run, client) with setting, label, seed, client, acc (fraction, mean of
    the client's last 10 evaluations) and n_test.
    """
    titles = {s: t for s, t in titles.items() if (clients["setting"] == s).any()}
    if not titles:
        return None
    fig, grid = settings_figure(titles, dict.fromkeys(titles, 1), w=7, h=1.2 + 0.45 * max(map(len, order.values())),
                                ncols=1)
    for setting, sub, (ax,) in grid:
        mine = clients[clients["setting"] == setting]
        labels = [x for x in order[setting] if (mine["label"] == x).any()]
        ys = np.arange(len(labels), 0, -1)  # the table's first row on top
        data = [mine.loc[mine["label"] == x, "acc"].to_numpy() * 100 for x in labels]
        ax.boxplot(data, positions=ys, orientation="horizontal", widths=0.6, showfliers=False,
                   medianprops={"color": "black"})
        for y, label in zip(ys, labels):
            g = mine[mine["label"] == label]
            _client_points(ax, g["acc"] * 100, y + np.linspace(-0.22, 0.22, len(g)), g["n_test"], mine["n_test"].max(),
                           colors[label], label)
        ax.set_yticks(ys, labels)
        ax.set_xlabel(CLIENT_X)
        _size_legend(sub, mine["n_test"].to_numpy())
    return fig


def cdf_figure(clients: pd.DataFrame, order: dict[str, list[str]], titles: dict[str, str], colors: dict):
    """Empirical CDF of per-client accuracy per label (clients of every seed pooled)."""
    titles = {s: t for s, t in titles.items() if (clients["setting"] == s).any()}
    if not titles:
        return None
    fig, grid = settings_figure(titles, dict.fromkeys(titles, 1), w=6, h=4, ncols=1)
    for setting, sub, (ax,) in grid:
        mine = clients[clients["setting"] == setting]
        for label in order[setting]:
            acc = mine.loc[mine["label"] == label, "acc"].to_numpy() * 100
            if len(acc):
                ax.ecdf(acc, color=colors[label], gid=label, label=f"{label} ({len(acc)} client-runs)")
        ax.set(xlabel=CLIENT_X, ylabel="fraction of clients at or below")
        sub.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


def paired_figure(pairs: pd.DataFrame, baseline: str, order: dict[str, list[str]], titles: dict[str, str],
                  colors: dict):
    """Each client's accuracy under a label minus under ``baseline`` (same seed, so same partition
    and client), against its baseline accuracy: who gains from personalization, who loses.

    ``pairs``: setting, label, seed, client, base_acc, diff (fractions) and n_test.
    """
    panels = {s: [x for x in order[s] if ((pairs["setting"] == s) & (pairs["label"] == x)).any()] for s in titles}
    panels = {s: p for s, p in panels.items() if p}
    if not panels:
        return None
    fig, grid = settings_figure({s: f"{titles[s]}\nper client: label − {baseline}, same seed (same partition)"
                                 for s in panels}, {s: len(p) for s, p in panels.items()}, ncols=3)
    for setting, sub, axes in grid:
        mine = pairs[pairs["setting"] == setting]
        for ax, label in zip(axes, panels[setting]):
            g = mine[mine["label"] == label]
            diff = g["diff"].to_numpy() * 100
            _client_points(ax, g["base_acc"] * 100, diff, g["n_test"], mine["n_test"].max(), colors[label], label)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(f"{label} − {baseline}: median {np.median(diff):+.1f} pp,\nbetter on "
                         f"{int((diff > 0).sum())}/{len(diff)}, worse on {int((diff < 0).sum())}", fontsize=9)
            ax.set(xlabel=f"{baseline}: client accuracy (%)", ylabel="difference (pp)")
        _size_legend(sub, mine["n_test"].to_numpy())
    return fig


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


def partition_heatmap(hist: np.ndarray, title: str = "train samples per client and class", shift=None,
                      sizes: dict | None = None):
    """Clients x classes counts on a log colour scale (a few samples of a class stay visible next
    to hundreds; counts written in the cells when they fit). Above it, optional rows sharing the
    client axis: partition.json's ``feature_shift`` (each client's rotation angle, noise std or
    affine norm) and ``sizes`` (split -> per-client sample counts, stacked)."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    row = shift_row(shift, hist.shape[0])
    splits = {k: np.asarray(v) for k, v in (sizes or {}).items() if len(v) == hist.shape[0] and np.any(v)}
    tops = int(row is not None) + int(bool(splits))
    size = (min(14, max(6.5, 2.5 + 0.3 * hist.shape[0])), 3 + 0.15 * hist.shape[1] + 1.2 * tops)
    fig, axes = plt.subplots(tops + 1, 1, sharex=True, figsize=size, layout="constrained", squeeze=False,
                             gridspec_kw={"height_ratios": [1] * tops + [3.5]})
    axes = list(axes[:, 0])
    x = np.arange(hist.shape[0])
    if row is not None:
        axes[0].bar(x, row[1], width=0.8, color="tab:orange")
        axes[0].axhline(0, color="black", lw=0.5)
        axes[0].set_ylabel(row[0])
    if splits:
        ax, bottom = axes[tops - 1], np.zeros(hist.shape[0])
        for split, counts in splits.items():
            ax.bar(x, counts, width=0.8, bottom=bottom, label=split, gid=split)
            bottom = bottom + counts
        ax.set_ylabel("samples")
        ax.set_ylim(0, 1.4 * bottom.max())  # room for the legend above the bars
        ax.legend(fontsize=8, ncols=len(splits), loc="upper right")
    ax = axes[-1]
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_equal(hist.T, 0), aspect="auto", cmap=cmap, interpolation="nearest",
                   norm=LogNorm(vmin=1, vmax=max(2, int(hist.max()))))
    if hist.size <= 300:
        for (c, k), v in np.ndenumerate(hist):
            ax.text(c, k, str(int(v)), ha="center", va="center", fontsize=7,
                    color="black" if v == 0 or v >= np.sqrt(hist.max()) else "white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="client", ylabel="class")
    axes[0].set_title(title)
    fig.colorbar(im, ax=axes, label="train samples (log scale; white: none)")
    return fig
