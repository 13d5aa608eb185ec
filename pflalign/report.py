"""``pflalign report DIR...``: finished runs compared in markdown, CSV and PNG plots.

It reads only run directories (``results.json``, ``metrics.jsonl``, ``partition.json``), so a
run, a ``compare`` directory, a sweep directory (its ``trials/``) or any mix of them work the
same. Rows are mean ± std (sample std, ddof=1) over seeds per label (the algorithm, or
``label=``) within a *setting*: the data/federation keys that differ between the runs (dataset,
partition, alpha, clients, model, rounds). Runs that differ only in seed are pooled; runs on different data never.
The table itself is :func:`pflalign.compare.summary_table`, the same as ``pflalign compare``'s.
Every file is read and checked before the output directory is touched, so a garbage or
incomplete run directory is one error line naming the file, and nothing is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import STD_NOTE, load_results, markdown, metric_names, read_json, read_results, summary_table
from .config import check_dir
from .checkpoint import write_text
from .errors import InputError

SETTING_PREFIXES = ("data.", "model.", "rounds", "client_fraction", "train.local_epochs")
NOT_SETTING = ("data.seed", "data.cache_dir", "data.root", "data.download")
COMMON = ("data.dataset", "data.partition", "data.alpha", "data.num_clients", "model.name", "rounds")
NOTE = (f"{STD_NOTE} *acc (mean, last 10)*: unweighted mean over clients of the personalized test accuracy, "
        "averaged over the last 10 evaluations; *worst client* and *bottom 10%*: final round; *stability std*: "
        "std of the mean accuracy over the last `stability_window` rounds.")


def find_runs(dirs: list[Path]) -> tuple[list[Path], int]:
    """Run directories under ``dirs`` (those with results.json) and how many were unfinished."""
    runs, skipped = [], 0
    for d in dirs:
        if not Path(d).is_dir():
            raise InputError(f"report: {d} is a file, not a directory of runs" if Path(d).exists()
                             else f"report: no such directory: {d}")
        found = [d] if (d / "results.json").is_file() else sorted(p.parent for p in d.rglob("results.json"))
        runs += found
        skipped += sum(1 for p in d.rglob("metrics.jsonl") if p.parent not in found)
    if not runs:
        raise InputError(f"report: no finished runs (results.json) under {', '.join(map(str, dirs))}")
    return list(dict.fromkeys(runs)), skipped


def read_config(run_dir: Path, results: dict) -> dict:
    """The run's resolved config from results.json (settings and captions read it)."""
    cfg = results.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict):
        raise InputError(f"{run_dir / 'results.json'} is incomplete: its 'config' must be the run's config "
                         f"(a mapping with a 'data' section)")
    return cfg


def _numbers(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def read_history(run_dir: Path) -> list[dict]:
    """metrics.jsonl, checked for what the plots read: round, acc_mean and client_acc."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} (per-round metrics of a finished run): {type(e).__name__}: {e}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path} line {i} is not JSON: {e}") from None
        ok = isinstance(row, dict) and isinstance(row.get("round"), int) and not isinstance(row["round"], bool) \
            and _numbers([row["acc_mean"]] if "acc_mean" in row else []) \
            and ("client_acc" not in row or _numbers(row["client_acc"]) and row["client_acc"])
        if not ok:
            raise InputError(f"{path} line {i} is not a pflalign metrics row (round, acc_mean, client_acc)")
        rows.append(row)
    if not any("acc_mean" in r for r in rows) or not any("client_acc" in r for r in rows):
        raise InputError(f"{path} has no evaluated round (rows with acc_mean and client_acc)")
    return rows


def read_partition(run_dir: Path) -> list | None:
    """partition.json's train histogram (clients x classes), or None when the run has none."""
    path = Path(run_dir) / "partition.json"
    if not path.is_file():
        return None
    part = read_json(path, "partition of a run")
    hist = part.get("histograms", {}).get("train") if isinstance(part, dict) and \
        isinstance(part.get("histograms"), dict) else None
    if not isinstance(hist, list) or not hist or not all(_numbers(row) and len(row) == len(hist[0]) for row in hist):
        raise InputError(f"{path} has no histograms.train (a clients x classes table of counts)")
    return hist


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "algo" else {prefix + k: v})
    return out


def settings(configs: list[dict]) -> tuple[list[str], str]:
    """Each run's setting (the setting keys that vary, as ``k=v``) and the common part."""
    flat = [_flat(c) for c in configs]
    keys = [k for k in flat[0] if k.startswith(SETTING_PREFIXES) and k not in NOT_SETTING]
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    per_run = [", ".join(f"{k}={f.get(k)}" for k in varying) or "all runs" for f in flat]
    common = ", ".join(f"{k}={flat[0][k]}" for k in COMMON if k in keys and k not in varying)
    return per_run, common


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, w: float = 5.5, h: float = 3.8):
    plt = _pyplot()
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_curves(runs: pd.DataFrame, path: Path) -> None:
    """Mean personalized accuracy vs round per label, with a ±std band over seeds."""
    many = runs.groupby("setting")["label"].nunique().max() > 8  # then the legend goes beside the plot
    fig, axes = _grid(runs["setting"].nunique(), w=9 if many else 5.5, h=max(3.8, 0.2 * runs["label"].nunique()))
    for ax, (setting, group) in zip(axes, runs.groupby("setting", sort=False)):
        for i, (label, g) in enumerate(group.groupby("label", sort=False)):
            curves = [pd.Series({r["round"]: r["acc_mean"] * 100 for r in rows if "acc_mean" in r})
                      for rows in g["history"]]
            table = pd.concat(curves, axis=1).dropna()
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=0)
            ax.plot(mean.index, mean, ("-", "--", ":")[i // 10 % 3], label=f"{label} (n={len(curves)})")
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
        ax.set(title=setting, xlabel="round", ylabel="mean personalized acc (%)")
        ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if many else {"loc": "lower right"}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_clients(runs: pd.DataFrame, path: Path) -> None:
    """Distribution of per-client accuracy at the last evaluation, pooled over seeds."""
    most = runs.groupby("setting")["label"].nunique().max()
    fig, axes = _grid(runs["setting"].nunique(), w=7, h=1.5 + 0.4 * most)
    for ax, (setting, group) in zip(axes, runs.groupby("setting", sort=False)):
        labels, data = [], []
        for label, g in group.groupby("label", sort=False):
            last = [next(r for r in reversed(rows) if "client_acc" in r) for rows in g["history"]]
            labels.append(label)
            data.append(np.concatenate([np.asarray(r["client_acc"]) * 100 for r in last]))
        ax.boxplot(data, orientation="horizontal")  # long labels read best on the y axis
        for i, d in enumerate(data, 1):
            ax.plot(d, np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), ".", alpha=0.4, ms=3)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.set(title=setting, xlabel="client accuracy (%), last round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_partitions(runs: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """One heatmap per distinct partition; returns (file, caption) pairs."""
    from .plots import partition_heatmap

    seen, figs = set(), []
    for hist, setting, cfg, run_dir in zip(runs["partition"], runs["setting"], runs["config"], runs["run_dir"]):
        if hist is None:
            continue
        shift = read_json(Path(run_dir) / "partition.json", "partition of a run").get("feature_shift")
        if json.dumps([hist, shift]) in seen:  # same labels, other domains: another figure
            continue
        seen.add(json.dumps([hist, shift]))
        seed = cfg["data"].get("seed") if cfg["data"].get("seed") is not None else cfg.get("seed")
        caption = f"{setting}, data seed {seed}"
        name = f"partition_{len(figs)}.png"
        fig = partition_heatmap(np.asarray(hist), title=f"train samples per client and class\n{caption}", shift=shift)
        fig.savefig(out / name, dpi=110)
        figs.append((name, caption))
    return figs


def write_report(dirs: list[Path], out: Path | None = None) -> Path:
    """report.md, report.csv (the table's numbers per setting and label), runs.csv (one row per run) and
    PNGs into ``out``."""
    run_dirs, skipped = find_runs(dirs)
    out = out or (dirs[0] if len(dirs) == 1 else Path.cwd() / "report")
    check_dir("report --out", str(out))
    df = load_results(run_dirs)
    configs = [read_config(d, read_results(d)) for d in run_dirs]
    df["setting"], common = settings(configs)
    df["run_dir"], df["config"] = [str(d) for d in run_dirs], configs
    df["history"] = [read_history(d) for d in run_dirs]
    df["partition"] = [read_partition(d) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["config", "history", "partition"]).rename(columns=metric_names()).to_csv(out / "runs.csv",
                                                                                              index=False)
    tables = {s: summary_table(g) for s, g in df.groupby("setting", sort=False)}
    table = pd.concat(tables, names=["setting", "label"]).reset_index()
    table.to_csv(out / "report.csv", index=False)
    plt = _pyplot()
    plot_curves(df, out / "acc_vs_round.png")
    plot_clients(df, out / "client_acc.png")
    partitions = plot_partitions(df, out)
    plt.close("all")
    lines = ["# pflalign report", "",
             f"{len(run_dirs)} runs from {', '.join(f'`{d}`' for d in dirs)}"
             + (f" ({skipped} unfinished or stopped early, without results.json, left out)" if skipped else "")
             + ".", "", f"Common setting: {common or '-'}.", "", NOTE, ""]
    for setting, t in tables.items():
        lines += [f"## {setting}" if setting != "all runs" else "## Results", "", markdown(t), ""]
    lines += ["## Plots", "", "![accuracy vs round](acc_vs_round.png)", "",
              "![per-client accuracy](client_acc.png)", ""]
    lines += [f"![partition: {caption}]({name})\n" for name, caption in partitions]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out
