"""``pflalign report DIR...``: finished runs compared in markdown, CSV and plots (PNG and PDF).

It reads only run directories (``results.json``, ``metrics.jsonl``, ``partition.json``), so a
run, a ``compare`` directory, a sweep directory (its ``trials/``) or any mix of them work the
same. Rows are mean ± std (sample std, ddof=1) over seeds per label (the algorithm, or
``label=``) within a *setting*: the data/federation keys that differ between the runs (dataset,
partition, alpha, clients, model, rounds). Runs that differ only in seed are pooled; runs on different data never.
The table itself is :func:`pflalign.compare.summary_table`, the same as ``pflalign compare``'s;
every figure lists labels in its order. A sweep directory also gets its own section
(:mod:`pflalign.sweep_report`): the validation metric it selected on and every hyperparameter.
Every file is read and checked before the output directory is touched, so a garbage or
incomplete run directory is one error line naming the file, and nothing is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .checkpoint import write_text
from .compare import COLUMNS, STD_NOTE, load_results, markdown, metric_names, read_json, read_results, summary_table
from .config import check_dir
from .errors import InputError
from .sweep_report import find_sweeps, read_sweep, sensitivity_figure, sweep_markdown, sweep_table

SETTING_PREFIXES = ("data.", "model.", "rounds", "client_fraction", "train.local_epochs")
NOT_SETTING = ("data.seed", "data.cache_dir", "data.root", "data.download")
COMMON = ("data.dataset", "data.partition", "data.alpha", "data.num_clients", "model.name", "rounds")
PARTITION_ARG = {"dirichlet": ("data.alpha", "alpha={}"), "pathological": ("data.classes_per_client", "{} classes/client"),
                 "quantity_skew": ("data.quantity_sigma", "sigma={}")}
LAST = 10  # per-client accuracy: mean of each client's last 10 evaluations, like the table's "last 10"
NOTE = (f"{STD_NOTE} *acc (mean, last 10)*: unweighted mean over clients of the personalized test accuracy, "
        "averaged over the last 10 evaluations; *worst client* and *bottom 10%*: final round; *stability std*: "
        "std of the mean accuracy over the last `stability_window` rounds.")


def _copy(path: Path, root: Path) -> bool:
    """A run's file copied by W&B (``wandb/*/files/``) or into a Tune checkpoint: not a run."""
    return any(part == "wandb" or part.startswith("checkpoint_") for part in path.relative_to(root).parts[:-1])


def find_runs(dirs: list[Path]) -> tuple[list[Path], int]:
    """Run directories under ``dirs`` (those with results.json) and how many were unfinished."""
    runs, skipped = [], 0
    for d in dirs:
        if not Path(d).is_dir():
            raise InputError(f"report: {d} is a file, not a directory of runs" if Path(d).exists()
                             else f"report: no such directory: {d}")
        found = [d] if (d / "results.json").is_file() else \
            sorted(p.parent for p in d.rglob("results.json") if not _copy(p, d))
        runs += found
        skipped += sum(1 for p in d.rglob("metrics.jsonl") if p.parent not in found and not _copy(p, d))
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


def read_partition(run_dir: Path) -> dict | None:
    """partition.json's train histogram (clients x classes), per-split client sizes (None in a
    file without them) and feature shift; None when the run has no partition.json."""
    path = Path(run_dir) / "partition.json"
    if not path.is_file():
        return None
    part = read_json(path, "partition of a run")
    hist = part.get("histograms", {}).get("train") if isinstance(part, dict) and \
        isinstance(part.get("histograms"), dict) else None
    if not isinstance(hist, list) or not hist or not all(_numbers(row) and len(row) == len(hist[0]) for row in hist):
        raise InputError(f"{path} has no histograms.train (a clients x classes table of counts)")
    sizes = part.get("sizes")
    ok = isinstance(sizes, dict) and all(_numbers(v) and len(v) == len(hist) for v in sizes.values()) \
        and _numbers(sizes.get("test"))
    return {"hist": hist, "sizes": sizes if ok else None, "shift": part.get("feature_shift")}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "algo" else {prefix + k: v})
    return out


def describe(flat: dict, varying: list[str]) -> str:
    """A figure title for a setting: ``digits, dirichlet(alpha=0.5), 6 clients, model mlp, 3 rounds``
    and any other setting key that varies between the runs (``train.local_epochs=2``)."""
    part = flat.get("data.partition")
    arg_key, arg = PARTITION_ARG.get(part, (None, None))
    held = flat.get("data.holdout_clients") or 0
    bits = [str(flat.get("data.dataset")), f"{part}({arg.format(flat.get(arg_key))})" if arg else str(part),
            f"{flat.get('data.num_clients')} clients" + (f" ({held} held out)" if held else ""),
            f"model {flat.get('model.name')}", f"{flat.get('rounds')} rounds"]
    shown = {"data.dataset", "data.partition", "data.num_clients", "data.holdout_clients", "model.name", "rounds", arg_key}
    return ", ".join(bits + [f"{k}={flat.get(k)}" for k in varying if k not in shown])


def settings(configs: list[dict]) -> tuple[list[str], list[str], str]:
    """Each run's setting (the setting keys that vary, as ``k=v``), its title and the common part."""
    flat = [_flat(c) for c in configs]
    keys = [k for k in flat[0] if k.startswith(SETTING_PREFIXES) and k not in NOT_SETTING]
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    per_run = [", ".join(f"{k}={f.get(k)}" for k in varying) or "all runs" for f in flat]
    common = ", ".join(f"{k}={flat[0][k]}" for k in COMMON if k in keys and k not in varying)
    return per_run, [describe(f, varying) for f in flat], common


def load_runs(dirs: list[Path]) -> tuple[pd.DataFrame, int, str]:
    """One row per finished run (the table's fields, setting, title, config, history, partition),
    how many runs were unfinished, and the setting common to all."""
    run_dirs, skipped = find_runs(dirs)
    df = load_results(run_dirs)
    configs = [read_config(d, read_results(d)) for d in run_dirs]
    df["setting"], df["title"], common = settings(configs)
    df["run_dir"], df["config"] = [str(d) for d in run_dirs], configs
    df["history"] = [read_history(d) for d in run_dirs]
    df["partition"] = [read_partition(d) for d in run_dirs]
    return df, skipped, common


def history_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluated round): setting, label, run (its index) and every scalar metric."""
    rows = [{"setting": s, "label": label, "run": i, **{k: v for k, v in r.items() if isinstance(v, (int, float))}}
            for i, (s, label, hist) in enumerate(zip(runs["setting"], runs["label"], runs["history"]))
            for r in hist if "acc_mean" in r]
    return pd.DataFrame(rows)


def training_clients(cfg: dict, num_clients: int) -> list[int]:
    """Who metrics.jsonl's ``client_acc`` lists, in its order: every client but the held-out ones."""
    k = cfg["data"].get("holdout_clients") or 0
    if not k:
        return list(range(num_clients))
    from .federation import held_out  # the run's own seeded choice (imports torch: only when needed)

    return sorted(set(range(num_clients)) - set(held_out(cfg["seed"], num_clients, k)))


def client_rows(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (run, client): its accuracy averaged over its last 10 evaluations and its test
    size; and a note per run left out (evaluations of a subset of clients, or no client sizes)."""
    rows, notes = [], []
    for run_dir, cfg, s, label, hist, part in zip(runs["run_dir"], runs["config"], runs["setting"], runs["label"],
                                                  runs["history"], runs["partition"]):
        full = [r["client_acc"] for r in hist if "client_acc" in r and "eval_clients" not in r][-LAST:]
        sizes = part and part["sizes"]
        ids = training_clients(cfg, len(sizes["test"])) if sizes else []
        if not full or not sizes or any(len(a) != len(ids) for a in full):
            notes.append(f"`{run_dir}`: left out of the per-client plots ("
                         + ("its partition.json has no client sizes" if not sizes else
                            "its evaluations cover a subset of the clients (eval_clients)") + ")")
            continue
        acc = np.mean(full, axis=0)
        data_seed = cfg["data"].get("seed") if cfg["data"].get("seed") is not None else cfg["seed"]
        rows += [{"setting": s, "label": label, "seed": cfg["seed"], "data_seed": data_seed, "client": c,
                  "acc": float(a), "n_test": int(sizes["test"][c])} for c, a in zip(ids, acc)]
    return pd.DataFrame(rows, columns=["setting", "label", "seed", "data_seed", "client", "acc", "n_test"]), notes


def paired_rows(clients: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each client's accuracy under every other label minus under ``baseline``, paired within the
    same setting and seeds (so the same partition and client)."""
    keys = ["setting", "seed", "data_seed", "client"]
    clients = clients.drop_duplicates(["label", *keys])
    base = clients[clients["label"] == baseline][[*keys, "acc"]].rename(columns={"acc": "base_acc"})
    pairs = clients[clients["label"] != baseline].merge(base, on=keys)
    return pairs.assign(diff=pairs["acc"] - pairs["base_acc"])


def default_baseline(tables: dict[str, pd.DataFrame]) -> str:
    """fedavg when it ran, else the lowest row of the first setting's table."""
    labels = [x for t in tables.values() for x in t.index]
    return "fedavg" if "fedavg" in labels else next(iter(tables.values())).index[-1]


def figures(runs: pd.DataFrame, tables: dict[str, pd.DataFrame], baseline: str) -> tuple[dict, list[str]]:
    """Every figure of the report by file stem (None: nothing to draw) and notes on what was left out."""
    order = {s: list(t.index) for s, t in tables.items()}
    titles = dict(zip(runs["setting"], runs["title"]))
    titles = {s: titles[s] for s in tables}
    colors = plots.label_colors(list(dict.fromkeys(x for labels in order.values() for x in labels)))
    rows = history_rows(runs)
    align = [(k, k, 1) for k in sorted(c for c in rows if c.startswith("align/"))]
    clients, notes = client_rows(runs)
    figs = {"acc_vs_round": plots.curves_figure(rows, order, titles, colors),
            "align_diagnostics": plots.curves_figure(rows, order, titles, colors, align) if align else None,
            "client_acc": plots.clients_figure(clients, order, titles, colors),
            "client_cdf": plots.cdf_figure(clients, order, titles, colors),
            "client_paired": plots.paired_figure(paired_rows(clients, baseline), baseline, order, titles, colors)}
    if figs["client_paired"] is None and len(colors) > 1:
        notes.append(f"no paired per-client plot: no other label shares a seed and setting with the baseline "
                     f"'{baseline}' (choose one with --baseline LABEL)")
    return figs, notes


def partition_figures(runs: pd.DataFrame) -> dict:
    """One heatmap per distinct partition: stem -> (figure, caption)."""
    seen, figs = set(), {}
    for part, title, cfg in zip(runs["partition"], runs["title"], runs["config"]):
        key = json.dumps([part, None]) if part is None else json.dumps([part["hist"], part["shift"]])
        if part is None or key in seen:  # same labels, other domains: another figure
            continue
        seen.add(key)
        seed = cfg["data"].get("seed") if cfg["data"].get("seed") is not None else cfg.get("seed")
        caption = f"{title}, data seed {seed}"
        fig = plots.partition_heatmap(np.asarray(part["hist"]), title=f"train samples per client and class\n{caption}",
                                      shift=part["shift"], sizes=part["sizes"])
        figs[f"partition_{len(figs)}"] = (fig, caption)
    return figs


def plot_history(rows: pd.DataFrame, path: Path) -> None:
    """Per-round curves from :func:`history_rows`' rows (a benchmark stores those, not whole runs) to
    ``path`` and a PDF beside it; labels by their mean accuracy over the last 10 evaluations."""
    order = {s: list(g.groupby("label")["acc_mean"].apply(lambda a: a.tail(LAST).mean()).sort_values(ascending=False)
                     .index) for s, g in rows.groupby("setting", sort=False)}
    fig = plots.curves_figure(rows, order, {s: s for s in order}, plots.label_colors(sorted(set(rows["label"]))))
    _save(fig, Path(path).parent, Path(path).stem)


def _save(fig, out: Path, stem: str) -> str:
    """``stem``.png and ``stem``.pdf; the layout computed for the PNG serves the PDF (same inches)."""
    fig.savefig(out / f"{stem}.png", dpi=120)
    fig.set_layout_engine("none")
    fig.savefig(out / f"{stem}.pdf")
    plots.pyplot().close(fig)
    return f"{stem}.png"


def write_report(dirs: list[Path], out: Path | None = None, baseline: str | None = None) -> Path:
    """report.md, report.csv (the table's numbers per setting and label), runs.csv (one row per run)
    and figures (PNG and PDF) into ``out``. ``baseline``: the label the paired per-client plot
    compares against (default: :func:`default_baseline`)."""
    df, skipped, common = load_runs(dirs)
    out = out or (dirs[0] if len(dirs) == 1 else Path.cwd() / "report")
    check_dir("report --out", str(out))
    tables = {s: summary_table(g) for s, g in df.groupby("setting", sort=False)}
    labels = list(dict.fromkeys(x for t in tables.values() for x in t.index))
    if baseline is not None and baseline not in labels:
        raise InputError(f"report --baseline {baseline}: no run is labelled {baseline} (labels: {', '.join(labels)})")
    baseline = baseline or default_baseline(tables)
    last10 = dict(zip(map(Path, df["run_dir"]), df[COLUMNS["acc_mean_last10"]]))
    sweeps = [(info, sweep_table(info, last10), sensitivity_figure(info)) for info in map(read_sweep, find_sweeps(dirs))]
    figs, notes = figures(df, tables, baseline)
    partitions = partition_figures(df)
    out.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["config", "history", "partition", "title"]).rename(columns=metric_names()).to_csv(
        out / "runs.csv", index=False)
    table = pd.concat(tables, names=["setting", "label"]).reset_index()
    table.to_csv(out / "report.csv", index=False)
    lines = ["# pflalign report", "",
             f"{len(df)} runs from {', '.join(f'`{d}`' for d in dirs)}"
             + (f" ({skipped} unfinished or stopped early, without results.json, left out)" if skipped else "")
             + ".", "", f"Common setting: {common or '-'}.", "", NOTE, ""]
    for i, (info, sweep, fig) in enumerate(sweeps):
        lines += sweep_markdown(info, sweep, _save(fig, out, f"sweep_{i}"))
    titles = dict(zip(df["setting"], df["title"]))
    for setting, t in tables.items():
        heading = f"## {setting}" if setting != "all runs" else "## Results"
        lines += [heading + (" (test split: not used for the sweep's selection)" if sweeps else ""), "",
                  f"Setting: {titles[setting]}.", "", markdown(t), ""]
    captions = {"acc_vs_round": "accuracy, loss and new-client accuracy vs round",
                "align_diagnostics": "pFLAlign's alignment diagnostics (align/*) vs round",
                "client_acc": f"per-client accuracy (mean of each client's last {LAST} evaluations; marker area: "
                              "its test samples)",
                "client_cdf": "CDF of per-client accuracy",
                "client_paired": f"per-client difference to the baseline '{baseline}' (same seed, same clients)"}
    lines += ["## Plots", "", "Each figure is also a PDF beside its PNG.", ""]
    lines += [f"![{captions[stem]}]({_save(fig, out, stem)})\n" for stem, fig in figs.items() if fig is not None]
    lines += [f"![partition: {caption}]({_save(fig, out, stem)})\n" for stem, (fig, caption) in partitions.items()]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out
